"""The ssh-board test library (tests/sshboards.py) with real clients: asyncssh logs in to each
board's sshd with the session's client key and a known_hosts pinned to exactly that board's
host key, runs a command and puts a file by SFTP into the board's workdir; a reflashed board
breaks the old pin; a killed sshd drops its open sessions and refuses connects until started
again; the no-sudo user logs in and is refused by `sudo -n`; and nothing (namespace, veth,
process, key folder) is left once a bench is exited, also after a failure. The pure builders
are checked without root."""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import asyncssh
import pytest

import sshboards
from sshboards import (SshBench, SshBoard, SshBoardsError, fingerprint_of, keygen_argv, known_hosts_line,
                       sshd_argv, sshd_config_text)


def _connect(board: SshBoard, key: Path, known_hosts: str, *, user: str = "root") -> asyncssh.SSHClientConnection:
    return asyncssh.connect(board.host, port=board.port, username=user, client_keys=[str(key)],
                            known_hosts=asyncssh.import_known_hosts(known_hosts), connect_timeout=10)


# ---------------------------------------------------------------------------- pure, no root


def test_config_has_key_only_logins_sftp_and_its_own_paths(tmp_path: Path) -> None:
    text = sshd_config_text(listen="198.18.213.2", host_key=tmp_path / "hk", pid_file=tmp_path / "pid",
                            authorized_keys=tmp_path / "ak")
    lines = set(text.splitlines())
    assert {"ListenAddress 198.18.213.2", "Port 22", f"HostKey {tmp_path / 'hk'}", f"PidFile {tmp_path / 'pid'}",
            f"AuthorizedKeysFile {tmp_path / 'ak'}", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no", "AllowAgentForwarding no",
            "Subsystem sftp internal-sftp", "LogLevel VERBOSE"} <= lines
    assert "PerSourcePenalties no" not in lines
    assert "PerSourcePenalties no" in sshd_config_text(listen="x", host_key=tmp_path, pid_file=tmp_path,
                                                       authorized_keys=tmp_path, per_source_penalties=True)
    assert sshd_argv("tbs-ab12-0", config=tmp_path / "c", log=tmp_path / "l") == [
        "ip", "netns", "exec", "tbs-ab12-0", "/usr/sbin/sshd", "-D", "-f", str(tmp_path / "c"), "-E", str(tmp_path / "l")]


def test_known_hosts_line_and_fingerprint_match_openssh(tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("needs ssh-keygen")
    subprocess.run(keygen_argv(tmp_path / "k", comment="c"), check=True, capture_output=True)
    pub = (tmp_path / "k.pub").read_text()
    kind, blob = pub.split()[:2]
    assert known_hosts_line("10.0.0.2", 22, pub) == f"10.0.0.2 {kind} {blob}"
    assert known_hosts_line("10.0.0.2", 2222, pub) == f"[10.0.0.2]:2222 {kind} {blob}"
    listed = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True)
    assert listed.stdout.split()[1] == fingerprint_of(pub)


def test_bench_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count=3 but 2 names"):
        SshBench(root=tmp_path, count=3, names=["a", "b"])
    with pytest.raises(ValueError, match="distinct"):
        SshBench(root=tmp_path, names=["a", "a"])


# ---------------------------------------------------------------------------- real sshd boards


def test_every_board_runs_a_command_and_takes_an_sftp_put(ssh_bench) -> None:
    bench = ssh_bench(names=["wrist", "chest", "ankle", "edge"])
    assert [b.name for b in bench.boards] == ["wrist", "chest", "ankle", "edge"]
    assert len({b.ns for b in bench.boards}) == len({b.host for b in bench.boards}) == 4
    assert len({b.workdir for b in bench.boards}) == 4
    assert all(b.workdir.is_dir() and not any(b.workdir.iterdir()) for b in bench.boards)
    known = bench.known_hosts_text()
    assert len(known.splitlines()) == 4

    async def visit(board: SshBoard) -> str:
        src = board.workdir.parent / "payload.bin"
        src.write_bytes(board.name.encode() * 1000)
        async with _connect(board, bench.client_key, board.host_key_line()) as conn:
            said = await conn.run("echo ok; ip -4 -o addr show", check=True)
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(src), str(board.workdir / "payload.bin"))
        return said.stdout

    outs = asyncio.run(_gather(*(visit(b) for b in bench.boards)))
    for board, out in zip(bench.boards, outs):
        assert out.splitlines()[0] == "ok"
        assert f"inet {board.host}/30" in out                 # it ran inside that board's namespace
        assert (board.workdir / "payload.bin").read_bytes() == board.name.encode() * 1000
    inside = bench.boards[0].run(["ip", "-4", "-o", "addr", "show", "dev", sshboards.INNER_DEV])
    assert inside.returncode == 0 and f"inet {bench.boards[0].host}/30" in inside.stdout


async def _gather(*coros):
    return await asyncio.gather(*coros)


def test_a_reflashed_board_breaks_the_old_pin(ssh_bench) -> None:
    bench = ssh_bench(1)
    board = bench.boards[0]
    old_line, old_print = board.host_key_line(), board.fingerprint()
    board.new_host_key()
    assert board.fingerprint() != old_print and board.host_key_line() != old_line

    async def main() -> None:
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            async with _connect(board, bench.client_key, old_line):
                pass
        async with _connect(board, bench.client_key, board.host_key_line()) as conn:
            assert (await conn.run("echo ok", check=True)).stdout == "ok\n"
    asyncio.run(main())


def test_a_killed_sshd_drops_its_sessions_mid_transfer_and_comes_back(ssh_bench) -> None:
    bench = ssh_bench(2)
    board, other = bench.boards

    async def main() -> None:
        conn = await _connect(board, bench.client_key, bench.known_hosts_text())
        try:
            sftp = await conn.start_sftp_client()
            remote = await sftp.open(str(board.workdir / "partial.bin"), "wb")
            await remote.write(b"x" * 65536)
            session_pids = board.sshd_pids()
            assert len(session_pids) >= 2                   # the listener and the session's sshd
            board.kill_sshd()
            assert board.sshd_pids() == [] and not board.running
            assert not any(sshboards._alive(p) for p in session_pids)
            with pytest.raises((asyncssh.Error, OSError)):
                for _ in range(1000):                       # the transfer goes on until the loss shows
                    await remote.write(b"y" * 65536)
            await asyncio.wait_for(conn.wait_closed(), 10)
        finally:
            conn.close()
        with pytest.raises(OSError):
            async with _connect(board, bench.client_key, bench.known_hosts_text()):
                pass
        async with _connect(other, bench.client_key, bench.known_hosts_text()) as conn2:
            assert (await conn2.run("echo ok", check=True)).stdout == "ok\n"   # the other board is untouched
        board.start_sshd()
        async with _connect(board, bench.client_key, bench.known_hosts_text()) as conn3:
            assert (await conn3.run("echo ok", check=True)).stdout == "ok\n"
    asyncio.run(main())


def test_the_nosudo_user_logs_in_and_sudo_wants_a_password(ssh_bench_module) -> None:
    if shutil.which("sudo") is None:
        pytest.skip("needs sudo on the machine (apt-get install sudo)")
    bench = ssh_bench_module(1)       # the module-scoped factory: this test leaves the board as it was
    board = bench.boards[0]

    async def main() -> None:
        async with _connect(board, bench.client_key, bench.known_hosts_text(), user=bench.nosudo_user) as conn:
            assert (await conn.run("id -un", check=True)).stdout.strip() == bench.nosudo_user
            refused = await conn.run("sudo -n true", check=False)
            assert refused.exit_status != 0
            assert "password" in refused.stderr
    asyncio.run(main())


def test_nothing_is_left_after_exit_even_after_a_failure(tmp_path: Path, ssh_session_keys) -> None:
    seen: dict[str, object] = {}

    async def hold_a_session(board: SshBoard, bench: SshBench) -> asyncssh.SSHClientConnection:
        conn = await _connect(board, bench.client_key, bench.known_hosts_text())
        await conn.run("echo ok", check=True)
        return conn

    with pytest.raises(RuntimeError, match="the test failed"):
        with SshBench(root=tmp_path / "b", count=2, client_key=ssh_session_keys) as bench:
            seen["spaces"] = [b.ns for b in bench.boards]
            seen["devs"] = [f"tbsh{bench.tag}{i}" for i in range(2)]
            seen["hosts"] = [b.host for b in bench.boards]
            seen["auth"] = bench.authorized_keys
            seen["known"] = bench.known_hosts_text()
            loop = asyncio.new_event_loop()
            try:
                conn = loop.run_until_complete(hold_a_session(bench.boards[0], bench))
                seen["pids"] = [p for b in bench.boards for p in b.sshd_pids()]
                assert len(seen["pids"]) >= 3
                raise RuntimeError("the test failed")
            finally:
                conn.close()
                loop.close()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert not any(ns in listed.split() for ns in seen["spaces"])
    assert not any(os.path.exists(f"/sys/class/net/{dev}") for dev in seen["devs"])
    assert not any(sshboards._alive(p) for p in seen["pids"])
    assert not Path(seen["auth"]).parent.exists()
    for host in seen["hosts"]:   # no longer on-link: at most the default route's gateway
        route = subprocess.run(["ip", "-4", "-o", "route", "get", host], capture_output=True, text=True).stdout
        assert not any(dev in route for dev in seen["devs"])
        assert route == "" or " via " in route
    known = asyncssh.import_known_hosts(seen["known"])

    async def login(host: str) -> BaseException | None:
        # Whatever answers there now (nothing, or a gateway that takes any TCP connection and
        # stays silent) is not the board: a login pinned to its key must not succeed.
        try:
            async with asyncssh.connect(host, username="root", client_keys=[str(ssh_session_keys.private)],
                                        known_hosts=known, connect_timeout=2):
                return None
        except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
            return exc
    assert all(asyncio.run(_gather(*(login(h) for h in seen["hosts"]))))


def test_a_board_that_cannot_start_is_reported_and_nothing_is_left(tmp_path: Path, ssh_session_keys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    real = sshboards.sshd_config_text
    monkeypatch.setattr(sshboards, "sshd_config_text", lambda **kw: real(**kw) + "NoSuchOption yes\n")
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    bench = SshBench(root=tmp_path / "b", count=2, client_key=ssh_session_keys)
    with pytest.raises(SshBoardsError, match="sshd exited") as err:
        bench.__enter__()
    assert "NoSuchOption" in str(err.value)                # the log's words come with the error
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {ns for ns in after - before if ns.startswith(f"tbs-{bench.tag}-")}
    assert bench.boards == []
