"""The local link fabric: the wires and radios that simulated boards use on one machine.

Holds ``LocalFabric``, a context manager that, for every link of a bench, makes what its two
ends need and returns each end's transport settings:

- mqtt: nothing to make; both ends get the broker's host/port and the link's topic;
- serial with ``port: pty``: a linked pseudo-terminal pair made by socat (real pyserial on both
  ends; a physical bench names real devices instead, e.g. /dev/ttyAMA0);
- ble with ``hci: virtual``: bumble's two-controller app in its own process, one emulated
  controller per end behind a TCP HCI port, joined by one virtual radio link (real HCI, ATT and
  GATT between the two agent processes).

Everything it starts is stopped in reverse order on exit. It does not run agents or shape links.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nodes.mqtt import topic
from testbed.broker import free_port
from testbed.config import Inventory, LinkSpec
from testbed.errors import RunError

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


@dataclass
class LocalFabric:
    """``with LocalFabric(inventory=..., workdir=..., broker_host=..., broker_port=...) as f:
    f.endpoint(link, "tx")``."""

    inventory: Inventory
    workdir: Path
    broker_host: str
    broker_port: int
    _stack: ExitStack = field(default_factory=ExitStack, init=False)
    _ends: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict, init=False)
    notes: list[str] = field(default_factory=list, init=False)

    def __enter__(self) -> LocalFabric:
        try:
            for link in self.inventory.links:
                self._make(link)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def endpoint(self, link: LinkSpec, end: str) -> dict[str, Any]:
        """Transport settings (with ``type``) for the ``tx`` (wearable) or ``rx`` (edge) end."""
        return dict(self._ends[(link.name, end)])

    # -- per transport ---------------------------------------------------------------------
    def _make(self, link: LinkSpec) -> None:
        settings = dict(link.transport.settings)
        kind = link.transport.type
        if kind == "mqtt":
            settings.setdefault("host", self.broker_host)
            settings.setdefault("port", self.broker_port)
            settings.setdefault("topic", topic(self.inventory.bench, "data", link.name))
            tx = rx = {"type": kind, **settings}
        elif kind == "serial" and settings.get("port") == PTY:
            a, b = self._pty_pair(link.name)
            tx, rx = {"type": kind, **settings, "port": a}, {"type": kind, **settings, "port": b}
        elif kind == "ble" and settings.get("hci") == VIRTUAL:
            p_tx, p_rx = self._ble_controllers(link.name)
            base = {"type": kind, "stack": "bumble", "address": ble_address(link.name), **settings}
            tx, rx = {**base, "hci": f"tcp-client:127.0.0.1:{p_tx}"}, {**base, "hci": f"tcp-client:127.0.0.1:{p_rx}"}
        else:
            tx = rx = {"type": kind, **settings}
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

    def _ble_controllers(self, name: str) -> tuple[int, int]:
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        ports = (free_port(), free_port())
        proc = self._spawn([sys.executable, "-m", "bumble.apps.controllers",
                            *(f"tcp-server:127.0.0.1:{p}" for p in ports)], d / "controllers.log")
        for p in ports:
            _wait(lambda p=p: _listening(p), what=f"bumble controllers for {name}", proc=proc,
                  log=d / "controllers.log")
        self.notes.append(f"{name}: BLE over bumble's virtual controllers on tcp ports {ports[0]}, {ports[1]}")
        return ports
