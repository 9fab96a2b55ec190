"""The local link fabric: the wires and radios that simulated boards use on one machine.

Holds ``LocalFabric``, a context manager that, for every link of a bench, makes what its two
ends need and returns each end's transport settings:

- mqtt: nothing to make; both ends get the broker's host/port and the link's topic;
- serial with ``port: pty``: a linked pseudo-terminal pair made by socat (real pyserial on both
  ends; a physical bench names real devices instead, e.g. /dev/ttyAMA0);
- ble with ``hci: virtual``: bumble's two-controller app in its own process, one emulated
  controller per end behind a TCP HCI port, joined by one virtual radio link (real HCI, ATT and
  GATT between the two agent processes).

Each end is reached at ``addresses[board]`` (the host-side veth address of a ``connect: netns``
board, else the broker's host): MQTT ends get it as their broker host (the sending end of a
link listed in ``data_ports`` gets that port, the data plane's own listener), bumble binds the
controller of that end there. A pty is a file, so it works across namespaces unchanged.

Also holds ``BoardNamespaces``: one network namespace per ``connect: netns`` board
(``tb-<bench>-<board>``, veth ``tbh-<hash>`` on the host <-> ``tb0`` inside, a free /30 of
198.18.0.0/15 each), deleted on exit, and ``check_netns`` (root and ``ip netns`` present).

Everything it starts is stopped in reverse order on exit. It does not run agents or shape links.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linkemu.errors import LinkError
from linkemu.netns import (SUBNET_POOL, BoardNetns, existing_namespaces, host_networks, namespace_pids,
                           pick_subnets)
from linkemu.tc import Runner
from nodes.mqtt import topic
from nodes.transport_settings import EDGE_PREFIX, ENDS, LOCAL_PAIR, end_settings
from testbed.broker import free_port
from testbed.config import BoardSpec, Inventory, LinkSpec
from testbed.errors import RunError

NETNS_DEV = "tb0"   # a netns board's interface inside its namespace (docs/linkemu.md)

PTY = "pty"
VIRTUAL = "virtual"


def _wait(predicate: Any, *, what: str, proc: subprocess.Popen, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise RunError(f"{what} exited with code {proc.returncode}: {log.read_text(errors='replace')[-400:]}")
        if time.monotonic() > deadline:
            raise RunError(f"{what} not ready within {timeout:.0f} s")
        time.sleep(0.05)


def _listening(port: int) -> bool:
    """True once a loopback TCP port is in LISTEN state, read from /proc (a probe connection
    would be taken by bumble's controllers app as its host and then lost)."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows)


def ble_address(link_name: str) -> str:
    """A stable static random address for a link's peripheral (top two bits set)."""
    h = zlib.crc32(link_name.encode()).to_bytes(4, "big")
    return ":".join(f"{b:02X}" for b in (0xC0 | (h[0] & 0x3F), h[1], h[2], h[3], 0x48, 0x42))


@contextmanager
def socat_pty_pair(workdir: Path, *, names: tuple[str, str] = ("wearable.tty", "edge.tty"),
                   timeout: float = 20.0) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminals made by socat (absolute paths); socat is stopped on exit."""
    socat = shutil.which("socat")
    if socat is None:
        raise RunError("a local pty pair needs socat (apt-get install socat)")
    d = workdir.resolve()  # agents run in their own folders: absolute paths
    d.mkdir(parents=True, exist_ok=True)
    a, b = d / names[0], d / names[1]
    log = d / "socat.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
                                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            _wait(lambda: a.exists() and b.exists(), what="socat pty pair", proc=proc, log=log, timeout=timeout)
            yield str(a), str(b)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _link_ends(link: LinkSpec) -> dict[str, dict[str, Any]]:
    """A link's file settings as each end gets them (``nodes.transport_settings.end_settings``).

    A value that has this fabric make both ends (``port: pty``, ``hci: virtual``) leaves no room
    for an edge's own value: the inventory refuses that pairing with file:line:key; a LinkSpec
    built by hand gets a RunError here, before anything starts."""
    kind, settings = link.transport.type, link.transport.settings
    local = LOCAL_PAIR.get(kind)
    if local is not None:
        key, value, what = local
        edge_key = EDGE_PREFIX + key
        if edge_key in settings and value in (settings.get(key), settings.get(edge_key)):
            raise RunError(f"link {link.name}: {key}: {value} makes both ends ({what}); expected no "
                           f"{edge_key} with it")
    return {end: end_settings(kind, settings, end) for end in ENDS}


@contextmanager
def _undo_on_error(stack: ExitStack) -> Iterator[None]:
    """While building into ``stack``: if building raises, close it (undo what was made)."""
    try:
        yield
    except BaseException:
        stack.close()
        raise


@dataclass
class LocalFabric:
    """``with LocalFabric(inventory=..., workdir=..., broker_host=..., broker_port=...) as f:
    f.endpoint(link, "tx")``."""

    inventory: Inventory
    workdir: Path
    broker_host: str
    broker_port: int
    addresses: Mapping[str, str] = field(default_factory=dict)   # board -> where it reaches the host
    data_ports: Mapping[str, int] = field(default_factory=dict)  # link -> broker port of its sending end
    _stack: ExitStack = field(default_factory=ExitStack, init=False)
    _ends: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, init=False)
    notes: list[str] = field(default_factory=list, init=False)

    def __enter__(self) -> LocalFabric:
        with _undo_on_error(self._stack):
            for link in self.inventory.links:
                self._make(link)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def endpoint(self, link: LinkSpec, end: str) -> dict[str, Any]:
        """Transport settings (with ``type``) for the ``tx`` (wearable) or ``rx`` (edge) end."""
        return dict(self._ends[(link.name, end)])

    # -- per transport ---------------------------------------------------------------------
    def _make(self, link: LinkSpec) -> None:
        """Each end's settings: the file's, per end (``end_settings``: the edge takes its ``edge_``
        values), plus what the harness makes or knows for that end."""
        kind = link.transport.type
        ends = _link_ends(link)
        tx_s, rx_s = ends["tx"], ends["rx"]
        src, dst = (self.addresses.get(b, self.broker_host) for b in (link.src, link.dst))
        if kind == "mqtt":
            name = topic(self.inventory.bench, "data", link.name)
            tx = {"type": kind, "host": src, "port": self.data_ports.get(link.name, self.broker_port),
                  "topic": name, **tx_s}
            rx = {"type": kind, "host": dst, "port": self.broker_port, "topic": name, **rx_s}
        elif kind == "serial" and tx_s.get("port") == PTY:
            a, b = self._pty_pair(link.name)
            tx, rx = {"type": kind, **tx_s, "port": a}, {"type": kind, **rx_s, "port": b}
        elif kind == "ble" and tx_s.get("hci") == VIRTUAL:
            src, dst = (self.addresses.get(b, "127.0.0.1") for b in (link.src, link.dst))
            p_tx, p_rx = self._ble_controllers(link.name, hosts=(src, dst))
            base = {"type": kind, "stack": "bumble", "address": ble_address(link.name)}
            tx = {**base, **tx_s, "hci": f"tcp-client:{src}:{p_tx}"}
            rx = {**base, **rx_s, "hci": f"tcp-client:{dst}:{p_rx}"}
        else:   # devices named in the file (a bench): each end its own where the file says so
            tx, rx = {"type": kind, **tx_s}, {"type": kind, **rx_s}
        self._ends[(link.name, "tx")], self._ends[(link.name, "rx")] = tx, rx

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen:
        fh = self._stack.enter_context(open(log, "wb"))
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._stack.callback(_stop, proc)
        return proc

    def _pty_pair(self, name: str) -> tuple[str, str]:
        try:
            a, b = self._stack.enter_context(socat_pty_pair(self.workdir / name))
        except RunError as exc:
            raise RunError(f"link {name}: serial over a local pty pair: {exc}") from None
        self.notes.append(f"{name}: serial over pty pair {a} <-> {b}")
        return a, b

    def _ble_controllers(self, name: str, *, hosts: tuple[str, str]) -> tuple[int, int]:
        """Two controllers, one per end, each listening where its end's agent reaches the host."""
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        ports = (free_port(hosts[0]), free_port(hosts[1]))
        proc = self._spawn([sys.executable, "-m", "bumble.apps.controllers",
                            *(f"tcp-server:{h}:{p}" for h, p in zip(hosts, ports))], d / "controllers.log")
        for p in ports:
            _wait(lambda p=p: _listening(p), what=f"bumble controllers for {name}", proc=proc,
                  log=d / "controllers.log")
        self.notes.append(f"{name}: BLE over bumble's virtual controllers on tcp {hosts[0]}:{ports[0]}, "
                          f"{hosts[1]}:{ports[1]}")
        return ports


# ---------------------------------------------------------------------------- network namespaces


def netns_name(bench: str, board: str) -> str:
    """A netns board's namespace (docs/linkemu.md; `testbed link` uses the same name)."""
    return f"tb-{bench}-{board}"


def host_dev_name(bench: str, board: str) -> str:
    """The host end of a netns board's veth: ``tbh-`` + 8 hex digits (15-character limit)."""
    return f"tbh-{zlib.crc32(f'{bench}/{board}'.encode()):08x}"


def check_netns(inventory: Inventory) -> None:
    """RunError, before anything starts, when a ``connect: netns`` board cannot be made here."""
    boards = [b for b in inventory.boards.values() if b.connect == "netns"]
    if not boards:
        return
    b = boards[0]
    where = f"{inventory.path}:{inventory._lines.get(f'boards.{b.name}.connect', '?')}: boards.{b.name}.connect"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        raise RunError(f"{where}: 'netns' needs root (network namespaces and tc); run as root or use "
                       f"connect: local")
    if shutil.which("ip") is None:
        raise RunError(f"{where}: 'netns' needs iproute2's `ip` (apt-get install iproute2)")
    try:
        existing_namespaces()
    except LinkError as exc:
        raise RunError(f"{where}: 'netns' needs `ip netns`, which failed here: {exc}") from None


@dataclass
class BoardNamespaces:
    """``with BoardNamespaces(inventory=...) as ns: ns.address(board)``: the namespaces of the
    bench's ``connect: netns`` boards, made on enter and deleted on exit (reverse order).
    Run `check_netns` first for the friendly refusal (the orchestrator's preflight does)."""

    inventory: Inventory
    runner: Runner = field(default_factory=Runner.local)
    spaces: dict[str, BoardNetns] = field(default_factory=dict, init=False)
    notes: list[str] = field(default_factory=list, init=False)
    _stack: ExitStack = field(default_factory=ExitStack, init=False)

    def __enter__(self) -> BoardNamespaces:
        boards = [b for b in self.inventory.boards.values() if b.connect == "netns"]
        if not boards:
            return self
        try:
            with _undo_on_error(self._stack):
                present = set(existing_namespaces(self.runner))
                subnets = pick_subnets(len(boards), used=host_networks(self.runner))
                for board, subnet in zip(boards, subnets):
                    self._make(board, subnet, present)
        except LinkError as exc:
            raise RunError(f"network namespaces: {exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.spaces.clear()

    def _make(self, board: BoardSpec, subnet: Any, present: set[str]) -> None:
        ns = netns_name(self.inventory.bench, board.name)
        if ns in present:
            pids = namespace_pids(ns, self.runner)
            if pids:
                raise RunError(f"boards.{board.name}: namespace {ns} already exists with processes "
                               f"{', '.join(map(str, pids))} in it (another run of bench "
                               f"{self.inventory.bench!r}?); expected none")
            self.runner.run(["ip", "netns", "del", ns], check=False)
            self.notes.append(f"{board.name}: removed the stale, empty namespace {ns} (an earlier run was killed)")
        space = BoardNetns(ns, host_dev=host_dev_name(self.inventory.bench, board.name), inner_dev=NETNS_DEV,
                           subnet=subnet, runner=self.runner)
        self._stack.enter_context(space)
        self.spaces[board.name] = space
        self.notes.append(f"{board.name}: namespace {ns}, {space.host_dev} {space.host_addr} <-> "
                          f"{NETNS_DEV} {space.ns_addr} ({subnet})")

    def address(self, board: str, default: str) -> str:
        """Where ``board`` reaches services of the host: its veth's host-side address."""
        space = self.spaces.get(board)
        return space.host_addr if space else default

    def exec_prefix(self, board: str) -> list[str]:
        space = self.spaces.get(board)
        return space.exec_prefix() if space else []

    def runner_for(self, board: str) -> Runner:
        return Runner.netns(self.spaces[board].ns)

    def as_dict(self) -> dict[str, Any]:
        return {"pool": SUBNET_POOL, "boards": {name: {**s.as_dict(), "inode": _ns_inode(s.ns)}
                                                for name, s in self.spaces.items()}}


def _ns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None
