"""Real OpenSSH boards for tests, with no hardware: one `sshd` per board, each in its own
network namespace joined to the root namespace by a veth pair.

Holds `SshBench` (a context manager: the namespaces, keys, sshd configs and sshd processes of
a few boards, all undone in reverse order on exit), `SshBoard` (one board: its address, its
host key, its own empty workdir, and stop / start / kill / reflash of its sshd), `sshboards_unavailable`
(why this machine cannot host them, or None), `make_client_key` (the one ed25519 client keypair
of a test session) and the pure builders `sshd_config_text`, `sshd_argv`, `keygen_argv`.

Keys: one client ed25519 keypair per test session (`make_client_key`; a bench makes its own
when given none), one ed25519 host key per board, made when the bench is entered. Logins:
`root` with the client key, and `NOSUDO_USER`, a system user with no sudo rights (made once,
if absent, and left on the machine: creating it is the only change outside the bench's folders
and namespaces besides `/run/sshd`, sshd's privilege-separation folder, which is made if missing).

Root only (namespaces, sshd). It must not touch any interface, namespace or process it did not
create, and must not be imported by `testbed`, `nodes` or `linkemu`.
"""
from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkemu.netns import BoardNetns, existing_namespaces, host_networks, namespace_pids, pick_subnets
from linkemu.tc import Runner

__all__ = ["SshBench", "SshBoard", "SshBoardsError", "ClientKey", "make_client_key", "sshboards_unavailable",
           "sshd_config_text", "sshd_argv", "keygen_argv", "ensure_nosudo_user", "SSHD", "NOSUDO_USER",
           "INNER_DEV"]

SSHD = "/usr/sbin/sshd"        # sshd re-executes itself, so it must be started by absolute path
SSH_KEYGEN = "ssh-keygen"
PRIVSEP_DIR = Path("/run/sshd")
NOSUDO_USER = "hbc-tb-nosudo"  # logs in with the client key; not in sudoers
INNER_DEV = "tbs0"             # a board's interface inside its namespace
PORT = 22


class SshBoardsError(RuntimeError):
    """An ssh board could not be made, started or stopped; the message says which and why."""


# ---------------------------------------------------------------------------- pure builders


def keygen_argv(path: Path, *, comment: str) -> list[str]:
    """An ed25519 keypair at `path` (private) and `path`.pub, no passphrase, no prompt."""
    return [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)]


def sshd_argv(ns: str, *, config: Path, log: Path) -> list[str]:
    """sshd in the foreground inside namespace `ns`, logging to `log` (`ip netns exec` execs
    sshd in its own place, so the Popen's pid is sshd's)."""
    return ["ip", "netns", "exec", ns, SSHD, "-D", "-f", str(config), "-E", str(log)]


def sshd_config_text(*, listen: str, port: int = PORT, host_key: Path, pid_file: Path,
                     authorized_keys: Path, per_source_penalties: bool = False) -> str:
    """One board's sshd_config: key-only logins (root included), SFTP in-process, verbose log.
    `per_source_penalties`: OpenSSH >= 9.8 knows the option and must be told `no`, or the
    refused connects a test provokes on purpose get the host's address penalised."""
    lines = [f"ListenAddress {listen}", f"Port {port}", f"HostKey {host_key}", f"PidFile {pid_file}",
             f"AuthorizedKeysFile {authorized_keys}",
             "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
             "PermitRootLogin prohibit-password", "StrictModes no", "UsePAM no",
             "AllowAgentForwarding no", "AllowTcpForwarding no", "X11Forwarding no",
             "UseDNS no", "PrintMotd no", "PrintLastLog no",
             "Subsystem sftp internal-sftp", "LogLevel VERBOSE"]
    if per_source_penalties:
        lines.append("PerSourcePenalties no")
    return "\n".join(lines) + "\n"


def known_hosts_line(host: str, port: int, pub_line: str) -> str:
    """OpenSSH's known_hosts line for a `<type> <base64> [comment]` public key line."""
    kind, blob = pub_line.split()[:2]
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {kind} {blob}"


def fingerprint_of(pub_line: str) -> str:
    """``SHA256:<base64, unpadded>`` of a public key line, as ``ssh-keygen -lf`` prints it."""
    digest = hashlib.sha256(base64.b64decode(pub_line.split()[1])).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# ---------------------------------------------------------------------------- this machine


def _sshd_version() -> tuple[int, int] | None:
    done = subprocess.run([SSHD, "-V"], capture_output=True, text=True)
    m = re.search(r"OpenSSH_(\d+)\.(\d+)", done.stdout + done.stderr)
    return (int(m[1]), int(m[2])) if m else None


def sshboards_unavailable() -> str | None:
    """Why ssh boards cannot run here (one line), or None when they can."""
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return "ssh boards need root (network namespaces and sshd)"
    if not os.access(SSHD, os.X_OK):
        return f"ssh boards need OpenSSH's server at {SSHD} (apt-get install openssh-server)"
    if shutil.which(SSH_KEYGEN) is None:
        return "ssh boards need ssh-keygen (apt-get install openssh-client)"
    if shutil.which("ip") is None:
        return "ssh boards need iproute2's ip"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ssh boards need `ip netns`, which failed: {done.stderr.strip()}"
    try:
        pwd.getpwnam("sshd")
    except KeyError:
        return "ssh boards need sshd's privilege-separation user `sshd` (openssh-server makes it)"
    try:
        pwd.getpwnam(NOSUDO_USER)
    except KeyError:
        if shutil.which("useradd") is None:
            return f"ssh boards need useradd to make the test user {NOSUDO_USER}"
    return None


def ensure_nosudo_user() -> str:
    """The system user `NOSUDO_USER` (not in sudoers), made if absent; returns its name.

    Its password field is set to ``*`` (no password can match) rather than useradd's ``!``:
    sshd without PAM refuses every login, key logins included, of an account whose password
    field starts with ``!`` ("account is locked")."""
    try:
        pwd.getpwnam(NOSUDO_USER)
    except KeyError:
        done = subprocess.run(["useradd", "--system", "--create-home", "--shell", "/bin/bash", "--password", "*",
                               NOSUDO_USER], capture_output=True, text=True)
        if done.returncode != 0:
            try:   # another session may have made it meanwhile
                pwd.getpwnam(NOSUDO_USER)
            except KeyError:
                raise SshBoardsError(f"useradd {NOSUDO_USER} failed: {done.stderr.strip()}") from None
    if _shadow_field(NOSUDO_USER).startswith("!"):
        subprocess.run(["usermod", "--password", "*", NOSUDO_USER], check=True, capture_output=True)
    return NOSUDO_USER


def _shadow_field(user: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        parts = line.split(":")
        if parts[0] == user and len(parts) > 1:
            return parts[1]
    return ""


@dataclass(frozen=True)
class ClientKey:
    """The client's ed25519 keypair: `private` and `public` (`private`.pub)."""

    private: Path

    @property
    def public(self) -> Path:
        return Path(f"{self.private}.pub")

    def public_line(self) -> str:
        return self.public.read_text().strip()


def make_client_key(folder: Path) -> ClientKey:
    """A fresh ed25519 client keypair in `folder` (id_ed25519 and id_ed25519.pub)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "id_ed25519"
    subprocess.run(keygen_argv(path, comment="hbc-testbed-client"), check=True, capture_output=True)
    return ClientKey(path)


# ---------------------------------------------------------------------------- processes


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        out[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _tree(root: int) -> list[int]:
    """`root` and all its descendants (parents before children)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _ppids().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _wait_gone(pids: Sequence[int], *, timeout: float) -> list[int]:
    """Poll until none of `pids` is alive or `timeout` passes; returns the ones still alive."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if _alive(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.01)


def _tcp_hex(addr: str, port: int) -> str:
    """An IPv4 socket address as /proc/net/tcp writes it (host byte order of the address)."""
    return f"{int.from_bytes(socket.inet_aton(addr), 'little'):08X}:{port:04X}"


def _listening_in(pid: int, addr: str, port: int) -> bool:
    """True once `addr`:`port` is in LISTEN state in the network namespace of `pid` (read from
    /proc/<pid>/net/tcp: no probe connection, so sshd logs no stray preauth disconnects)."""
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return False
    want = _tcp_hex(addr, port)
    return any(r.split()[1] == want and r.split()[3] == "0A" for r in rows)


# ---------------------------------------------------------------------------- one board


@dataclass
class SshBoard:
    """One board: sshd listening on `host`:`port` inside namespace `ns`, reachable from the root
    namespace over its veth; `workdir` is its own folder; `host_key` its private host key
    (`host_key`.pub beside it). Made and torn down by `SshBench`."""

    name: str
    ns: str
    host: str
    workdir: Path
    laptop_addr: str
    host_key: Path
    config: Path
    log: Path
    port: int = PORT
    user: str = "root"
    start_timeout: float = 15.0
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    # -- keys

    @property
    def host_key_pub(self) -> Path:
        return Path(f"{self.host_key}.pub")

    def host_key_line(self) -> str:
        """This board's known_hosts line: ``host <type> <base64>`` (``[host]:port`` off port 22)."""
        return known_hosts_line(self.host, self.port, self.host_key_pub.read_text())

    def fingerprint(self) -> str:
        """``SHA256:...`` of the host key, as ``ssh-keygen -lf`` prints it."""
        return fingerprint_of(self.host_key_pub.read_text())

    def make_host_key(self) -> None:
        """A fresh ed25519 host key (the old one, if any, is deleted first); sshd is not touched."""
        self.host_key.unlink(missing_ok=True)
        self.host_key_pub.unlink(missing_ok=True)
        subprocess.run(keygen_argv(self.host_key, comment=f"{self.name}-host"), check=True, capture_output=True)

    def new_host_key(self) -> None:
        """Reflash: stop sshd (its sessions end), make a new host key, start sshd again."""
        self.stop_sshd()
        self.make_host_key()
        self.start_sshd()

    # -- sshd

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def launch_sshd(self) -> None:
        """Start sshd without waiting for it (`wait_listening` waits); a no-op while it runs."""
        if self.running:
            return
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        with open(self.log, "ab") as fh:
            self._proc = subprocess.Popen(sshd_argv(self.ns, config=self.config, log=self.log), stdin=subprocess.DEVNULL,
                                          stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)

    def listening(self) -> bool:
        """True once sshd accepts TCP on host:port (raises if sshd has exited)."""
        if self._proc is None:
            raise SshBoardsError(f"{self.name}: sshd is not started")
        if self._proc.poll() is not None:
            raise SshBoardsError(f"{self.name}: sshd exited with code {self._proc.returncode}; "
                                 f"log {self.log}: {self.log_text()[-600:]}")
        return _listening_in(self._proc.pid, self.host, self.port)

    def start_sshd(self) -> None:
        """Start sshd and return once it listens on host:port (`start_timeout` at most)."""
        self.launch_sshd()
        wait_listening([self], timeout=self.start_timeout)

    def sshd_pids(self) -> list[int]:
        """The listener and every process below it (session sshds and what they run)."""
        if self._proc is None or self._proc.poll() is not None:
            return []
        return _tree(self._proc.pid)

    def _end(self, sig: int, *, timeout: float) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        pids = _tree(proc.pid) if proc.poll() is None else []
        _signal_all(pids, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        left = _wait_gone(pids, timeout=timeout)
        if left:
            _signal_all(left, signal.SIGKILL)
            proc.wait()
            left = _wait_gone(left, timeout=timeout)
            if left:
                raise SshBoardsError(f"{self.name}: sshd processes {left} survived SIGKILL")

    def stop_sshd(self, *, timeout: float = 5.0) -> None:
        """SIGTERM to the listener and its sessions; SIGKILL to any left after `timeout`."""
        self._end(signal.SIGTERM, timeout=timeout)

    def kill_sshd(self) -> None:
        """SIGKILL to the listener and every session below it at once: the board vanishes
        mid-transfer (its kernel still closes the TCP connections, so clients see the
        connection drop rather than a silent hang). Returns once they are all gone."""
        self._end(signal.SIGKILL, timeout=5.0)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # -- inside the namespace

    def run(self, argv: Sequence[str], *, check: bool = False, timeout: float = 30.0,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`argv` inside this board's namespace, as root on this machine; text output captured."""
        return subprocess.run(["ip", "netns", "exec", self.ns, *argv], capture_output=True, text=True,
                              check=check, timeout=timeout, input=input)


def wait_listening(boards: Sequence[SshBoard], *, timeout: float) -> None:
    """Poll until every board's sshd listens; raises naming the ones that did not (or exited)."""
    deadline = time.monotonic() + timeout
    waiting = list(boards)
    while waiting:
        waiting = [b for b in waiting if not b.listening()]
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise SshBoardsError(f"sshd of {', '.join(b.name for b in waiting)} not listening within "
                                 f"{timeout:.0f} s; last log lines: {waiting[0].log_text()[-400:]}")
        time.sleep(0.01)


# ---------------------------------------------------------------------------- a bench


class SshBench:
    """``with SshBench(root=tmp, count=4) as bench: bench.boards``: `count` boards (named
    `names`, else board0, board1, ...), each an sshd in namespace ``tbs-<4 hex>-<i>`` with veth
    ``tbsh<4 hex><i>`` in the root namespace. `client_key` is the private client key allowed to
    log in (made under `root` when not given). Everything is undone in reverse order on exit,
    also when entering fails half-way: sshds stopped (sessions too), namespaces deleted, the
    authorized_keys folder removed. `mtu` is the veths' MTU (None: the kernel's default)."""

    def __init__(self, *, root: Path, count: int | None = None, names: Sequence[str] | None = None,
                 client_key: Path | ClientKey | None = None, mtu: int | None = None,
                 start_timeout: float = 15.0) -> None:
        if names is not None and count is not None and len(names) != count:
            raise ValueError(f"count={count} but {len(names)} names: {list(names)}")
        if names is None and count is None:
            raise ValueError("give count or names")
        self.names = list(names) if names is not None else [f"board{i}" for i in range(count or 0)]
        if len(set(self.names)) != len(self.names) or not self.names:
            raise ValueError(f"expected one or more distinct board names; got {self.names}")
        self.root = Path(root).resolve()
        self._given_key = ClientKey(Path(client_key)) if isinstance(client_key, (str, Path)) else client_key
        self.mtu = mtu
        self.start_timeout = start_timeout
        self.boards: list[SshBoard] = []
        self.nosudo_user = NOSUDO_USER
        self.tag = ""
        self.client: ClientKey | None = None
        self.authorized_keys: Path | None = None
        self._stack = ExitStack()

    @property
    def client_key(self) -> Path:
        """The private client key (ed25519) that logs in to every board, as root or nosudo_user."""
        if self.client is None:
            raise SshBoardsError("the bench is not entered")
        return self.client.private

    def board(self, name: str) -> SshBoard:
        for b in self.boards:
            if b.name == name:
                return b
        raise KeyError(f"no board {name!r}; boards: {', '.join(b.name for b in self.boards)}")

    def known_hosts_text(self, *, boards: Iterable[SshBoard] | None = None) -> str:
        """known_hosts text pinning each board (all by default) to its current host key."""
        return "".join(b.host_key_line() + "\n" for b in (self.boards if boards is None else boards))

    # -- lifecycle

    def __enter__(self) -> SshBench:
        why = sshboards_unavailable()
        if why:
            raise SshBoardsError(why)
        try:
            self._setup()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            self._stack.close()
        finally:
            self.boards = []

    def _setup(self) -> None:
        ensure_nosudo_user()
        self.root.mkdir(parents=True, exist_ok=True)
        self.client = self._given_key or make_client_key(self.root / "client")
        # sshd reads authorized_keys as the user logging in: the nosudo user could not reach a
        # file under a root-only tmp folder, so the file lives in a folder of its own everyone can read.
        auth_dir = Path(tempfile.mkdtemp(prefix="tbs-auth-"))
        self._stack.callback(shutil.rmtree, auth_dir, ignore_errors=True)
        auth_dir.chmod(0o755)
        self.authorized_keys = auth_dir / "authorized_keys"
        self.authorized_keys.write_text(self.client.public_line() + "\n")
        self.authorized_keys.chmod(0o644)

        runner = Runner.local()
        present = set(existing_namespaces(runner))
        links = set(os.listdir("/sys/class/net"))
        for _ in range(100):
            tag = secrets.token_hex(2)
            if not any(n.startswith(f"tbs-{tag}-") for n in present) and not any(
                    dev.startswith(f"tbsh{tag}") for dev in links):
                break
        else:
            raise SshBoardsError("no free tbs-<tag> namespace prefix after 100 tries")
        self.tag = tag
        subnets = pick_subnets(len(self.names), used=host_networks(runner))
        penalties = (_sshd_version() or (0, 0)) >= (9, 8)

        for i, (name, subnet) in enumerate(zip(self.names, subnets)):
            self.boards.append(self._make_board(i, name, subnet, runner=runner, penalties=penalties))
        for b in self.boards:            # all started, then waited for together
            b.launch_sshd()
        wait_listening(self.boards, timeout=self.start_timeout)

    def _make_board(self, i: int, name: str, subnet: ipaddress.IPv4Network, *, runner: Runner,
                    penalties: bool) -> SshBoard:
        ns = f"tbs-{self.tag}-{i}"
        space = BoardNetns(ns, host_dev=f"tbsh{self.tag}{i}", inner_dev=INNER_DEV, subnet=subnet, mtu=self.mtu,
                           runner=runner)
        self._stack.enter_context(space)
        # as on a LAN: every address of this machine (the laptop) is reachable from the board,
        # e.g. a broker on another board's veth address (broker.mode: external)
        runner.run(["ip", "-n", ns, "route", "add", "default", "via", space.host_addr.split("/")[0]])
        self._stack.callback(_kill_namespace_leftovers, ns, runner)   # runs before the namespace goes
        etc = self.root / name / "etc"
        workdir = self.root / name / "work"
        etc.mkdir(parents=True, exist_ok=False)
        workdir.mkdir(parents=True, exist_ok=False)
        board = SshBoard(name=name, ns=ns, host=space.ns_addr, laptop_addr=space.host_addr.split("/")[0],
                         workdir=workdir, host_key=etc / "ssh_host_ed25519_key",
                         config=etc / "sshd_config", log=etc / "sshd.log", start_timeout=self.start_timeout)
        board.make_host_key()
        assert self.authorized_keys is not None
        board.config.write_text(sshd_config_text(listen=board.host, host_key=board.host_key,
                                                 pid_file=etc / "sshd.pid", authorized_keys=self.authorized_keys,
                                                 per_source_penalties=penalties))
        self._stack.callback(board.stop_sshd)
        return board


def _kill_namespace_leftovers(ns: str, runner: Runner) -> None:
    """SIGKILL whatever still runs in `ns` (a session's daemonised child, a `run` that was
    interrupted), so deleting the namespace really frees it."""
    pids = namespace_pids(ns, runner)
    _signal_all(pids, signal.SIGKILL)
    _wait_gone(pids, timeout=5.0)
