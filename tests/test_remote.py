"""SSH boards for real: OpenSSH sshd in network namespaces (tests/sshboards.py), driven by the
`testbed` commands and `testbed.remote`: host-key pinning, doctor, deploy (bytes moved, a second
deploy moving none, an interrupted one leaving the previous bundle), agents detached, stop."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from conftest import run_cli, sigint_default

REPO = Path(__file__).resolve().parent.parent
VENV_PY = sys.executable   # the boards' `env: python` interpreter: torch, numpy, paho already there


def bench_inventory(path: Path, bench, *, key: Path, roles: dict[str, str] | None = None,
                     env: str = "python", python: str = VENV_PY, extra_board: str = "", known: str = "known_hosts",
                     transport: str = "mqtt") -> Path:
    """An inventory of the bench's boards: the last one is the edge unless ``roles`` says otherwise."""
    names = [b.name for b in bench.boards]
    roles = roles or {n: ("edge" if i == len(names) - 1 else "wearable") for i, n in enumerate(names)}
    edge = next(n for n, r in roles.items() if r == "edge")
    lines = [f"bench: t{bench.tag or 'x'}", "broker: {mode: embedded}",
             f"ssh: {{known_hosts: {known}, key: {key}}}", "boards:"]
    for b in bench.boards:
        lines += [f"  {b.name}:", f"    role: {roles[b.name]}", "    kind: rpi4" if roles[b.name] == "wearable"
                  else "    kind: jetson-orin-nano", "    connect: ssh", f"    host: {b.host}", f"    user: {b.user}",
                  "    runtime: torch", f"    python: {python}", f"    env: {env}", f"    workdir: {b.workdir}"]
        if extra_board:
            lines.append(extra_board)
    lines.append("links:")
    for n, r in roles.items():
        if r == "wearable":
            lines += [f"  - {{from: {n}, to: {edge}, transport: {transport}, profile: ideal}}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def pin_all(path: Path, bench) -> None:
    (path.parent / "known_hosts").write_text("".join(b.host_key_line() + "\n" for b in bench.boards))


@pytest.fixture
def two_boards(ssh_bench, ssh_session_keys, tmp_path):
    bench = ssh_bench(names=["wrist", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    return bench, inv


def test_unknown_host_key_is_refused_with_fingerprint_and_trust_pins_it(two_boards, tmp_path, model_cache):
    bench, inv = two_boards
    proc = run_cli("doctor", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    wrist = doc["boards"]["wrist"]["checks"][0]
    assert not wrist["ok"] and "unknown host key" in wrist["detail"]
    assert bench.boards[0].fingerprint() in wrist["detail"] and "testbed trust wrist" in wrist["detail"]
    assert not (tmp_path / "known_hosts").exists(), "doctor pins nothing"
    for name in ("wrist", "edge"):
        done = run_cli("trust", name, "--yes", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    pinned = (tmp_path / "known_hosts").read_text()
    assert all(b.fingerprint() in run_cli("trust", b.name, "--yes", "--inventory", str(inv), cache=model_cache,
                                          cwd=tmp_path).stdout for b in bench.boards)
    assert pinned.count("\n") == 2 and "twrist" not in pinned


def test_changed_host_key_is_refused_with_both_fingerprints(two_boards, tmp_path, model_cache):
    bench, inv = two_boards
    pin_all(inv, bench)
    old = bench.boards[0].fingerprint()
    bench.boards[0].new_host_key()
    new = bench.boards[0].fingerprint()
    proc = run_cli("status", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 1
    assert "host key changed" in proc.stdout and old in proc.stdout and new in proc.stdout, proc.stdout
    assert "Traceback" not in proc.stderr
    # the edge is still reached: one board's failure does not hide another's result
    assert "edge" in proc.stdout and "stopped" in proc.stdout


def test_doctor_table_on_reachable_boards(two_boards, tmp_path, model_cache):
    bench, inv = two_boards
    pin_all(inv, bench)
    proc = run_cli("doctor", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("wrist", "edge"):
        checks = {c["name"]: c for c in doc["boards"][name]["checks"]}
        assert {"ssh", "python", "platform", "disk", "clock", "tc/nft", "runtime"} <= set(checks), checks
        assert "Python 3." in checks["python"]["detail"] and VENV_PY in checks["python"]["detail"]
        assert abs(doc["boards"][name]["facts"]["clock_offset_ms"]) < 100   # same kernel clock
        assert checks["runtime"]["ok"] and "torch" in checks["runtime"]["detail"]
        if name == "wrist":   # it sends over MQTT: the board's kernel shapes it, as root
            assert checks["sudo"]["ok"] and checks["tc/nft"]["ok"] and "tbf" in checks["qdiscs"]["detail"]
    assert "wrist" in proc.stderr and "doctor: 2 board(s) ready" in proc.stderr


def test_old_python_is_refused_by_doctor(ssh_bench, ssh_session_keys, tmp_path, model_cache):
    old = Path("/root/.pyenv/versions/3.9.18/bin/python")
    if not old.exists():
        pytest.skip("no Python 3.9 here (pyenv 3.9.18) to stand for an old board")
    bench = ssh_bench(names=["wrist", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private, python=str(old),
                          env="venv")
    pin_all(inv, bench)
    proc = run_cli("doctor", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 1
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    py = {c["name"]: c for c in doc["boards"]["wrist"]["checks"]}["python"]
    assert not py["ok"] and "3.9.18" in py["detail"] and ">= 3.10" in py["detail"], py


def test_sudo_that_needs_a_password_is_refused_at_once(ssh_bench, ssh_session_keys, tmp_path, model_cache):
    bench = ssh_bench(names=["wrist", "edge"])
    for b in bench.boards:
        b.user = bench.nosudo_user
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    pin_all(inv, bench)
    proc = run_cli("doctor", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path, timeout=120)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    sudo = {c["name"]: c for c in doc["boards"]["wrist"]["checks"]}["sudo"]
    assert proc.returncode == 1 and not sudo["ok"] and "password" in sudo["detail"], sudo
    assert "passwordless sudo" in sudo["fix"]


# ---------------------------------------------------------------------------- deploy and run (slow)


@pytest.fixture
def four_boards(ssh_bench, ssh_session_keys, tmp_path):
    bench = ssh_bench(names=["wrist", "chest", "ankle", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private,
                          extra_board="    energy: model")
    pin_all(inv, bench)
    return bench, inv


def _board_processes(bench) -> list[str]:
    out = []
    for b in bench.boards:
        ps = b.run(["sh", "-c", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline 2>/dev/null; echo; done"])
        out += [line for line in ps.stdout.splitlines() if "nodes.agent" in line and str(b.workdir) in line]
    return out


@pytest.mark.slow
def test_deploy_twice_then_run_the_demo_on_four_ssh_boards_then_stop(four_boards, tmp_path, model_cache):
    from conftest import digits_experiment
    bench, inv = four_boards
    inv.write_text(inv.read_text().replace("profile: ideal", "profile: hbc-1312k"))   # the boards' kernels shape
    exp = digits_experiment(tmp_path / "exp.yaml", samples=30, output=tmp_path / "runs")
    first = run_cli("deploy", str(exp), "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    cold = json.loads(first.stdout.strip().splitlines()[-1])["boards"]
    assert all(r["ok"] and r["bytes"] > 0 for r in cold.values()), cold
    for b in bench.boards:   # a versioned folder per bundle, `current` pointing at it, hashes on the board
        cur = (b.workdir / "current").resolve()
        assert cur.parent.name == "bundles" and (cur / ".complete").exists() and (cur / "agent.json").exists()
        assert (b.workdir / "lib").is_dir()   # env: python: only this project's wheel, into lib/
    second = run_cli("deploy", str(exp), "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    warm = json.loads(second.stdout.strip().splitlines()[-1])["boards"]
    assert all(r["ok"] and r["bytes"] == 0 and r["files"] == [] for r in warm.values()), warm
    assert {n: r["bundle"] for n, r in warm.items()} == {n: r["bundle"] for n, r in cold.items()}

    run = run_cli("run", str(exp), "--inventory", str(inv), "--headless", "--json", cache=model_cache, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["samples"] == 30 and summary["complete"] == 30, summary
    assert summary["accuracy"] > 0.5
    run_dir = next((tmp_path / "runs").iterdir())
    for name in ("wrist", "chest", "ankle", "edge"):   # each board's energy, modelled on the board, reaches the run
        e = summary["energy"][name]
        assert e["modelled"] and e["inferences"] == 30 and e["joules"] > 0, (name, e)
        assert len((run_dir / "power" / f"{name}.csv").read_text().splitlines()) > 2
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    deploys = [e for e in events if e["type"] == "deploy"]
    assert {e["board"] for e in deploys} == {"wrist", "chest", "ankle", "edge"} and all(e["bytes"] == 0 for e in deploys)
    for name in ("wrist", "chest", "ankle", "edge"):   # each board's log pulled into the run
        log = (run_dir / "boards" / name / "agent.log").read_text()
        assert f"agent {name}: ready" in log and f"agent {name}: stopped" in log, log
        assert not [e for e in events if e["type"] == "error" and e.get("board") == name], name
    logs = run_cli("logs", "wrist", "--run", run_dir.name, "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert logs.returncode == 0 and "agent wrist: ready" in logs.stdout, logs.stdout + logs.stderr
    status = run_cli("status", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    st = json.loads(status.stdout.strip().splitlines()[-1])["boards"]
    assert st["wrist"]["run"] == run_dir.name and not st["wrist"]["alive"] and st["wrist"]["bundle"] == cold["wrist"]["bundle"]
    doc = json.loads((run_dir / "run.json").read_text())
    assert doc["shaping"]["wrist-edge"]["shaper"].startswith("kernel:")
    stats = doc["kernel_stats"]["wrist-edge"]
    assert stats["dev"] == "tbs0"   # found on the board: its route toward the broker
    assert stats["shaped_packets"] > 0 and stats["apply"]   # the data plane went through the board's qdisc
    assert _board_processes(bench) == [], "agents exit after the run"

    stop = run_cli("stop", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    for b in bench.boards:
        q = b.run(["tc", "qdisc", "show"]).stdout
        assert "htb" not in q and "tbf" not in q and "netem" not in q, q
    assert _board_processes(bench) == []


@pytest.mark.slow
def test_deploy_a_bundle_alone_uses_the_experiment_it_carries(ssh_bench, ssh_session_keys, tmp_path, model_cache):
    """`testbed deploy --bundle DIR` with no experiment file: a bundle passed between people
    deploys as it was built; a bundle without its experiment is refused in one line."""
    from test_partition_cli import experiment

    bench = ssh_bench(names=["a", "b", "c", "d", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    pin_all(inv, bench)
    (tmp_path / "gone").mkdir()
    exp = experiment(tmp_path / "gone" / "e.yaml", method="nonn")
    built = run_cli("partition", str(exp), "--out", str(tmp_path / "bundle"), "--threads", "1",
                    cache=model_cache, cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-2000:]
    exp.unlink()   # the file it was built from is not on this laptop
    proc = run_cli("deploy", "--bundle", str(tmp_path / "bundle"), "--inventory", str(inv), "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    rows = json.loads(proc.stdout.strip().splitlines()[-1])["boards"]
    assert sorted(rows) == ["a", "b", "c", "d", "edge"] and all(r["ok"] and r["bytes"] > 0 for r in rows.values())
    config = json.loads((bench.board("c").workdir / "current" / "agent.json").read_text())
    assert config["board"] == "c" and config["shard_index"] == 2, config

    (tmp_path / "bundle" / "experiment.yaml").unlink()
    proc = run_cli("deploy", "--bundle", str(tmp_path / "bundle"), "--inventory", str(inv),
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2 and "carries no experiment.yaml" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("deploy", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2 and "give EXPERIMENT.yaml or --bundle DIR" in proc.stderr, proc.stderr


def test_sshd_killed_mid_transfer_leaves_the_previous_bundle_and_a_rerun_completes(
        ssh_bench, ssh_session_keys, tmp_path):
    import threading

    from testbed.config import load_inventory
    from testbed.remote.deploy import BoardBundle, push_bundle
    from testbed.remote.ssh import Boards

    bench = ssh_bench(names=["wrist", "edge"])
    inv_path = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    pin_all(inv_path, bench)
    inv = load_inventory(inv_path)
    board = bench.board("wrist")
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir(), new.mkdir()
    (old / "agent.json").write_text('{"v": 1}\n')
    (new / "agent.json").write_text('{"v": 2}\n')
    (new / "big.bin").write_bytes(bytes(range(256)) * (256 * 1024))   # 64 MiB: still moving when sshd dies
    a, b = BoardBundle.from_dir("wrist", old), BoardBundle.from_dir("wrist", new)
    with Boards(inv, ["wrist"]) as boards:
        assert boards.call(push_bundle(boards.session("wrist"), a)).files == ["agent.json"]
        failed: list[BaseException] = []

        def push_new() -> None:
            try:
                boards.call(push_bundle(boards.session("wrist"), b))
            except BaseException as exc:   # noqa: BLE001 - asserted below
                failed.append(exc)
        t = threading.Thread(target=push_new)
        t.start()
        partial = board.workdir / "bundles"
        while not any(p.stat().st_size > 1 << 20 for p in partial.glob(".partial-*/big.bin")):
            assert t.is_alive(), failed
        board.kill_sshd()
        t.join(timeout=60)
        assert failed and "wrist" in str(failed[0]) and "Traceback" not in str(failed[0]), failed
        cur = (board.workdir / "current").resolve()
        assert cur.name == a.key and (cur / "agent.json").read_text() == '{"v": 1}\n'   # the previous one, intact
        board.start_sshd()
        boards.reconnect(["wrist"])
        done = boards.call(push_bundle(boards.session("wrist"), b))
        assert set(done.files) == {"agent.json", "big.bin"} and done.bytes == b.size
    cur = (board.workdir / "current").resolve()
    assert cur.name == b.key and (cur / ".complete").exists()
    assert not list((board.workdir / "bundles").glob(".partial-*")), "the interrupted push's leftovers are cleared"
    assert (board.workdir / "bundles" / a.key / "agent.json").exists()


@pytest.mark.slow
def test_laptop_ssh_dropped_mid_run_and_the_run_still_completes(ssh_bench, ssh_session_keys, tmp_path, model_cache):
    """Every board's sshd (and with it every SSH connection of the laptop) dies while samples
    flow: the agents run on, detached; the run completes; the laptop connects again for the logs."""
    import subprocess
    import time as _time

    from conftest import ROOT, digits_experiment
    bench = ssh_bench(names=["wrist", "chest", "ankle", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    pin_all(inv, bench)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=120, rate_hz=20, output=tmp_path / "runs")
    env = {**__import__("os").environ, "HBC_TESTBED_CACHE": str(model_cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(inv), "--headless",
                             "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_default)
    try:
        def results() -> int:
            logs = list((tmp_path / "runs").glob("*/events.jsonl"))
            lines = logs[0].read_text().splitlines()[:-1] if logs else []   # the last may be half written
            return sum(json.loads(line)["type"] == "result" for line in lines)
        while results() < 10:   # samples are flowing
            assert proc.poll() is None, proc.communicate()
            _time.sleep(0.05)
        for b in bench.boards:
            b.kill_sshd()
        assert results() < 120, "the drop happened mid-run"
        for b in bench.boards:
            b.start_sshd()
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["complete"] == 120, summary
    run_dir = next((tmp_path / "runs").iterdir())
    assert all((run_dir / "boards" / n / "agent.log").is_file() for n in ("wrist", "chest", "ankle", "edge"))
    assert _board_processes(bench) == []


@pytest.mark.slow
def test_a_pi_like_board_gets_a_venv_from_the_laptops_wheelhouse_without_internet(
        ssh_bench, ssh_session_keys, tmp_path, model_cache):
    """env: venv, runtime tflite (a Pi): doctor's probe picks the board group, the wheelhouse is
    built on the laptop, pushed, installed with --no-index; LiteRT and the agent import on the
    board; a second push moves nothing."""
    from testbed.config import load_inventory
    from testbed.remote.deploy import push_env
    from testbed.remote.doctor import doctor
    from testbed.remote.rollout import env_for
    from testbed.remote.ssh import Boards

    py = "/root/.pyenv/versions/3.11.7/bin/python"
    if not Path(py).exists():
        pytest.skip("no pyenv CPython 3.11.7 here to stand for a Pi's python3")
    bench = ssh_bench(names=["wrist", "edge"])
    inv_path = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private, python=py,
                               env="venv")
    inv_path.write_text(inv_path.read_text().replace("runtime: torch", "runtime: tflite"))
    pin_all(inv_path, bench)
    inv = load_inventory(inv_path)
    with Boards(inv, ["wrist"]) as boards:
        rep = doctor(inv, names=["wrist"], boards=boards, cache_dir=model_cache)["wrist"]
        assert rep.python is not None and rep.ok, [c for c in rep.checks if not c.ok]
        wheels = {c.name: c for c in rep.checks}["wheels"]
        assert wheels.ok and "cpython-3.11-x86_64" in wheels.detail, wheels
        env = env_for(inv.boards["wrist"], rep.python, cache_dir=model_cache)
        assert any(n.startswith("ai_edge_litert") for n in env.wheels) and "ai-edge-litert" in " ".join(env.requirements)
        first = boards.call(push_env(boards.session("wrist"), env))
        assert first.bytes == env.size and set(first.files) == set(env.wheels)
        again = boards.call(push_env(boards.session("wrist"), env))
        assert again.bytes == 0 and again.files == []
    venv_py = bench.board("wrist").workdir / "venv" / "bin" / "python"
    done = bench.board("wrist").run([str(venv_py), "-c", "import nodes.agentconfig, ai_edge_litert.interpreter; "
                                     "import sys; print(sys.prefix)"])
    assert done.returncode == 0, done.stderr
    assert str(bench.board("wrist").workdir) in done.stdout


def test_doctor_refuses_a_board_group_no_wheel_fits(tmp_path):
    """A 32-bit Pi OS board (armv7l userland; modelled by its probe record, no such board here)
    running CPython 3.13: LiteRT ships no wheel for it, and doctor says so in one line."""
    import asyncio

    from test_wheelhouse import ARMHF, fake_probe
    from testbed.config import BoardSpec
    from testbed.remote.boardpython import BoardPython
    from testbed.remote.doctor import BoardReport, _Wheels

    pi32 = BoardPython.from_probe(fake_probe(version=[3, 13, 5], machine="armv7l", platform="linux-armv7l",
                                             pointer_bits=32, elf=ARMHF, glibc="2.41"))
    board = BoardSpec(name="wrist", role="wearable", kind="rpi4", connect="ssh", runtime="tflite", host="h",
                      env="venv")
    rep = BoardReport("wrist")
    asyncio.run(_Wheels(tmp_path).check(board, pi32, rep))
    (check,) = rep.checks
    assert not check.ok and check.name == "wheels" and not rep.ok
    assert "CPython 3.13 on armv7l" in check.detail and "\n" not in check.detail, check.detail
    assert "64-bit" in check.fix


def test_link_apply_on_an_ssh_board_shapes_its_data_plane_and_stop_clears_it(two_boards, tmp_path, model_cache):
    bench, inv = two_boards
    pin_all(inv, bench)
    inv.write_text(inv.read_text().replace("profile: ideal", "profile: hbc-328k"))
    wrist = bench.board("wrist")
    applied = run_cli("link", "apply", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    qdisc = wrist.run(["tc", "qdisc", "show", "dev", "tbs0"]).stdout
    assert "htb" in qdisc and ("tbf" in qdisc or "netem" in qdisc), qdisc   # classified: the data plane only
    filters = wrist.run(["tc", "filter", "show", "dev", "tbs0"]).stdout
    assert "match" in filters and f"{1884:04x}" in filters, filters   # TCP to the run's data port (1883 + 1)
    shown = run_cli("link", "show", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert shown.returncode == 0 and "htb" in shown.stdout
    assert "htb" not in bench.board("edge").run(["tc", "qdisc", "show"]).stdout   # the edge sends nothing
    stop = run_cli("stop", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert stop.returncode == 0 and "cleared: tc qdisc del dev tbs0 root" in stop.stdout, stop.stdout
    assert "htb" not in wrist.run(["tc", "qdisc", "show", "dev", "tbs0"]).stdout


@pytest.mark.slow
def test_run_with_an_external_broker_on_the_bench_lan(ssh_bench, ssh_session_keys, tmp_path, model_cache):
    """broker.mode: external (mosquitto run by the lab, here on the first board's LAN address, with
    one user for the bench): every agent and the laptop log in to it with the inventory's username
    and password_file (pushed to each board for the run, removed after); the kernel-shaped senders
    publish to its one port."""
    from conftest import digits_experiment
    from testbed.broker import BrokerAuth, EmbeddedBroker, Grant, free_port

    bench = ssh_bench(names=["wrist", "chest", "ankle", "edge"])
    host = bench.boards[0].laptop_addr
    port = free_port(host)
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    (tmp_path / "lab.pass").write_text("lab-secret-1234\n")
    inv.write_text(inv.read_text().replace("broker: {mode: embedded}",
                                           f"broker: {{mode: external, host: {host}, port: {port}, "
                                           f"username: lab, password_file: lab.pass}}"))
    pin_all(inv, bench)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=30, output=tmp_path / "runs")
    lab_users = BrokerAuth(grants=(Grant("lab", "lab-secret-1234", publish=("tb/#",), read=("tb/#",)),))
    with EmbeddedBroker(workdir=tmp_path / "lab-broker", host=host, port=port, auth=lab_users) as lab:
        assert lab.kind == "mosquitto"
        run = run_cli("run", str(exp), "--inventory", str(inv), "--headless", "--json", cache=model_cache,
                      cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["complete"] == 30, summary
    doc = json.loads(next((tmp_path / "runs").glob("*/run.json")).read_text())
    assert doc["broker"]["kind"] == "external" and doc["broker"]["port"] == port
    assert f"TCP to port {port}" in doc["shaping"]["wrist-edge"]["where"]
    agent = json.loads((bench.board("wrist").workdir / "current" / "agent.json").read_text())
    assert {k: agent["broker"][k] for k in ("host", "port", "username")} == {"host": host, "port": port,
                                                                             "username": "lab"}
    assert agent["broker"]["password_file"].endswith("/run/broker.password")
    assert not (bench.board("wrist").workdir / "run" / "broker.password").exists()
    run_dir = next((tmp_path / "runs").glob("*/"))
    assert b"lab-secret-1234" not in b"".join(f.read_bytes() for f in run_dir.rglob("*") if f.is_file())


def test_doctor_checks_what_each_entry_needs(ssh_bench, ssh_session_keys, tmp_path, model_cache):
    """A serial link's two ports (a pty pair: one end each), a BLE link's BlueZ adapter and an
    INA219's I2C bus: this machine has the ptys but no Bluetooth controller and no I2C."""
    from testbed.fabric import socat_pty_pair

    bench = ssh_bench(names=["wrist", "chest", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    with socat_pty_pair(tmp_path / "ptys") as (a, b):
        text = inv.read_text()
        text = text.replace("  - {from: wrist, to: edge, transport: mqtt, profile: ideal}",
                            f"  - {{from: wrist, to: edge, transport: {{type: serial, port: {a}, edge_port: {b}, "
                            f"baud: 115200}}, profile: ideal}}")
        text = text.replace("  - {from: chest, to: edge, transport: mqtt, profile: ideal}",
                            "  - {from: chest, to: edge, transport: {type: ble, stack: bluez, adapter: hci0, "
                            "address: 'AA:BB:CC:DD:EE:01'}, profile: ideal}")
        text = text.replace("  wrist:\n    role: wearable", "  wrist:\n    role: wearable\n    energy: ina219")
        inv.write_text(text)
        pin_all(inv, bench)
        proc = run_cli("doctor", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = {n: {c["name"]: c for c in doc["boards"][n]["checks"]} for n in ("wrist", "chest", "edge")}
    assert checks["wrist"][f"serial {a}"]["ok"] and checks["edge"][f"serial {b}"]["ok"]   # each end its own port
    assert f"serial {b}" not in checks["wrist"] and f"serial {a}" not in checks["edge"]
    i2c = checks["wrist"]["i2c"]
    assert not i2c["ok"] and "raspi-config" in i2c["fix"]
    bt = checks["chest"]["bluetooth hci0"]
    assert not bt["ok"] and bt["detail"] == "no such adapter" and "bluetooth hci0" in checks["edge"]
    assert proc.returncode == 1 and not doc["ok"]
    assert "tc/nft" in checks["wrist"] and checks["wrist"]["tc/nft"]["required"] is False   # serial: user space


def test_logs_follow_prints_new_lines_as_the_board_writes_them(two_boards, tmp_path, model_cache):
    import os
    import subprocess

    from conftest import ROOT
    bench, inv = two_boards
    pin_all(inv, bench)
    wrist = bench.board("wrist")
    log = wrist.workdir / "logs" / "r1.log"
    log.parent.mkdir(parents=True)
    log.write_text("agent wrist: ready\n")
    (wrist.workdir / "run").mkdir()
    (wrist.workdir / "run" / "agent.json").write_text(json.dumps({"run": "r1", "log": str(log), "pid": None}))
    env = {**os.environ, "HBC_TESTBED_CACHE": str(model_cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "logs", "wrist", "--follow", "--inventory", str(inv)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_default)
    try:
        assert proc.stdout.readline() == "agent wrist: ready\n"
        with log.open("a") as fh:
            fh.write("agent wrist: stopped\n")
        assert proc.stdout.readline() == "agent wrist: stopped\n"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = run_cli("logs", "wrist", "--run", "../../etc/passwd", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
    assert bad.returncode == 1 and "bad run id" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_ctrl_c_mid_run_stops_the_boards_agents_and_clears_their_shaping(ssh_bench, ssh_session_keys, tmp_path,
                                                                          model_cache):
    import os
    import signal as _signal
    import subprocess
    import time as _time

    from conftest import ROOT, digits_experiment
    bench = ssh_bench(names=["wrist", "edge"])
    inv = bench_inventory(tmp_path / "inventory.yaml", bench, key=ssh_session_keys.private)
    inv.write_text(inv.read_text().replace("profile: ideal", "profile: hbc-1312k"))
    pin_all(inv, bench)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=400, rate_hz=20, output=tmp_path / "runs")
    exp.write_text(exp.read_text().replace("assignment: {wrist: 0, chest: 1, ankle: 2, edge: merge}",
                                           "assignment: {wrist: 0, edge: merge}").replace("students: 3", "students: 1"))
    env = {**os.environ, "HBC_TESTBED_CACHE": str(model_cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(inv), "--headless"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_default)
    try:
        while not any('"type": "result"' in p.read_text() or '"type":"result"' in p.read_text()
                      for p in (tmp_path / "runs").glob("*/events.jsonl")):
            assert proc.poll() is None, proc.communicate()
            _time.sleep(0.05)
        assert "htb" in bench.board("wrist").run(["tc", "qdisc", "show", "dev", "tbs0"]).stdout   # shaping on
        proc.send_signal(_signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err[-2000:]
    assert _board_processes(bench) == [], "our agents are stopped on the boards"
    assert "htb" not in bench.board("wrist").run(["tc", "qdisc", "show", "dev", "tbs0"]).stdout
    run_dir = next((tmp_path / "runs").iterdir())
    assert json.loads((run_dir / "summary.json").read_text())["samples"] == 400   # what was logged is kept


def test_a_corrupt_agent_record_on_a_board_is_left_alone(two_boards, tmp_path, model_cache):
    """run/agent.json on the board is the board's file: a pid that is not a number, a config that
    is not a string, or no JSON at all makes stop and status act on nothing, without a traceback."""
    bench, inv = two_boards
    pin_all(inv, bench)
    run_dir = bench.board("wrist").workdir / "run"
    run_dir.mkdir()
    for text in ('{"pid": "1; reboot", "config": 5, "unit": ["x"]}', '{"pid": 1}', "not json", "[1, 2]"):
        (run_dir / "agent.json").write_text(text)
        stop = run_cli("stop", "wrist", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
        assert stop.returncode == 0 and "nothing of ours was running" in stop.stdout, (text, stop.stdout, stop.stderr)
        status = run_cli("status", "wrist", "--inventory", str(inv), cache=model_cache, cwd=tmp_path)
        assert status.returncode == 0 and "stopped" in status.stdout and "Traceback" not in status.stderr, text
