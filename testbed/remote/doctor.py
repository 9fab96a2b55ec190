"""``testbed doctor``: the preflight of every ssh board, in parallel, changing nothing on any.

Holds ``Check`` (one named finding: ok or not, what was seen, how to fix it), ``BoardReport``
(a board's checks and the facts later steps use: its interpreter, its clock offset, its qdiscs)
and ``doctor``, which connects to every board (host key pinned) and checks what the board's
inventory entry needs: Python (>= 3.10) and its path, ``uname -m`` and glibc, the wheel tags it
accepts, free disk in its workdir, the clock offset to the laptop, the serial ports of its links
(present and writable), its Bluetooth adapter (BLE links), its I2C bus (power meters), ``tc`` and
``nft`` and which qdiscs its kernel has, ``sudo -n`` where it needs root, its runtime (the
vendor's torch where the board keeps it), and, given a cache folder, that its group's wheelhouse
can be built on the laptop (the wheel tags it accepts against the wheels that exist). ``render_table`` and ``as_json`` present the result.

It must not change a board: no file written, no package installed, no qdisc left behind.
"""
from __future__ import annotations

import asyncio
import json
import shlex
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from linkemu.errors import LinkError
from linkemu.tc import BACKENDS as QDISCS, probe
from nodes.transport_settings import end_settings
from testbed.remote.wheelhouse import WheelhouseError, build_wheelhouse, requirements_for
from testbed.config import BoardSpec, Inventory
from testbed.remote.boardpython import PROBE_SCRIPT, BoardPython
from testbed.remote.ssh import Boards, Session, board_path, quote_path
from testbed.shaping import KERNEL_SSH, shaper_choices

__all__ = ["Check", "BoardReport", "doctor", "render_table", "as_json", "MIN_FREE_MB", "board_needs"]

MIN_FREE_MB = 300            # a wheelhouse (numpy, LiteRT) plus a bundle, with room to spare
CLOCK_SAMPLES = 5


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True   # a failed check that is not required is a warning


@dataclass
class BoardReport:
    board: str
    checks: list[Check] = field(default_factory=list)
    python: BoardPython | None = None
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok or not c.required for c in self.checks)

    def add(self, name: str, ok: bool, detail: str, fix: str | None = None, *, required: bool = True) -> None:
        self.checks.append(Check(name, ok, detail, fix, required))

    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok and c.required]


@dataclass(frozen=True)
class Needs:
    """What a board's inventory entry asks of it."""

    serial_ports: tuple[str, ...]
    ble_adapters: tuple[str, ...]
    i2c: bool
    kernel_shaping: bool
    sudo: bool


def board_needs(inventory: Inventory, board: BoardSpec) -> Needs:
    """The devices and privileges ``board`` needs, from its links and its entry."""
    ports: list[str] = []
    adapters: list[str] = []
    for link in inventory.links:
        if board.name not in (link.src, link.dst):
            continue
        end = "tx" if link.src == board.name else "rx"
        s = end_settings(link.transport.type, dict(link.transport.settings), end)
        if link.transport.type == "serial" and s.get("port") and s["port"] != "pty":
            ports.append(str(s["port"]))
        if link.transport.type == "ble" and s.get("stack") == "bluez":   # bumble brings its own controller
            adapters.append(str(s.get("adapter") or "hci0"))
    kernel = any(c.kind == KERNEL_SSH and c.board.name == board.name for c in shaper_choices(inventory).values())
    return Needs(serial_ports=tuple(dict.fromkeys(ports)), ble_adapters=tuple(dict.fromkeys(adapters)),
                 i2c=board.energy is not None and board.energy.meter.startswith("ina"), kernel_shaping=kernel, sudo=kernel)


def doctor(inventory: Inventory, *, names: Iterable[str] | None = None, boards: Boards | None = None,
           cache_dir: Path | None = None) -> dict[str, BoardReport]:
    """Check every (named) ssh board; one report per board, unreachable ones included. With
    ``cache_dir``, also build (or find cached) each board group's wheelhouse on the laptop: a
    board whose Python and platform no wheel fits is refused with the package and the reason."""
    if boards is None:
        with Boards(inventory, names) as b:
            return doctor(inventory, names=names, boards=b, cache_dir=cache_dir)
    limit = inventory.ssh.max_clock_offset_ms if inventory.ssh else 100.0
    wheels = _Wheels(cache_dir) if cache_dir is not None else None
    outcomes = boards.each(lambda s: _check_board(s, inventory, limit, boards, wheels), names=names)
    reports: dict[str, BoardReport] = {}
    for name, o in outcomes.items():
        if o.ok:
            reports[name] = o.value  # type: ignore[assignment]
        else:
            r = BoardReport(name)
            fix = None
            b = inventory.boards[name]
            if o.error and "testbed trust" in o.error:
                fix = f"testbed trust {name}"
            elif o.error and "unreachable" in o.error:
                fix = f"is {name} on and on the bench LAN? ping {b.host}; check host: and port: (docs/hardware.md)"
            elif o.error and "login refused" in o.error:
                fix = f"ssh-copy-id {b.user + '@' if b.user else ''}{b.host}; check user: and key:"
            r.add("ssh", False, o.error or "unreachable", fix)
            reports[name] = r
    return reports


async def _check_board(s: Session, inventory: Inventory, limit_ms: float, boards: Boards,
                       wheels: _Wheels | None) -> BoardReport:
    board = s.board
    r = BoardReport(board.name)
    r.add("ssh", True, f"{board.user or ''}{'@' if board.user else ''}{board.host}:{board.port or 22}, host key pinned")
    await _python(s, r)
    if wheels is not None and r.python is not None and not r.problems():
        await wheels.check(board, r.python, r)
    await _disk(s, r)
    await _clock(s, r, limit_ms)
    needs = board_needs(inventory, board)
    for port in needs.serial_ports:
        await _serial(s, r, port)
    for adapter in needs.ble_adapters:
        await _bluetooth(s, r, adapter)
    if needs.i2c:
        await _i2c(s, r)
    await _shaping(s, r, needs, boards)
    await _runtime(s, r)
    return r


async def _python(s: Session, r: BoardReport) -> None:
    board = s.board
    done = await s.run([board.python, "-c", PROBE_SCRIPT], check=False, timeout=60)
    if done.code != 0:
        r.add("python", False, f"{board.python} did not run ({(done.stderr or done.stdout).strip()[-200:] or done.code})",
              "install Python 3 (Pi OS and JetPack have it) or set python: in the inventory")
        return
    try:
        bp = BoardPython.from_probe(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        r.add("python", False, f"{board.python} printed an unreadable probe: {str(exc)[:200]}")
        return
    r.python = bp
    reasons = bp.check()
    ver = ".".join(map(str, bp.version))
    r.add("python", not reasons, f"Python {ver} at {bp.executable}" + (f": {'; '.join(reasons)}" if reasons else ""),
          "use Pi OS Bookworm (3.11) or JetPack 6 (3.10), or set python: to a newer interpreter" if reasons else None)
    r.add("platform", bp.glibc is not None, f"{bp.machine}, glibc {bp.glibc or 'none'}, {len(bp.platforms)} platform tags"
          f" ({bp.platforms[0] if bp.platforms else 'none'} ...)")
    if board.env in ("venv", "venv-system"):
        r.add("venv", bp.has_venv, "venv and ensurepip present" if bp.has_venv else "venv or ensurepip missing",
              None if bp.has_venv else "sudo apt install python3-venv")
    r.facts["python"] = asdict(bp)


class _Wheels:
    """Each board group's wheelhouse, built once on the laptop (beside the event loop, one build
    per group at a time) and cached by content hash for deploy."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.locks: dict[str, asyncio.Lock] = {}

    async def check(self, board: BoardSpec, python: BoardPython, r: BoardReport) -> None:
        if board.env == "python":
            r.add("wheels", True, "env: python: only this project's wheel goes to the board")
            return
        reqs = requirements_for(runtime=board.runtime, env=str(board.env))
        lock = self.locks.setdefault(python.group_key, asyncio.Lock())
        async with lock:
            try:
                house = await asyncio.get_running_loop().run_in_executor(None, lambda: build_wheelhouse(
                    board=python, requirements=reqs, cache_dir=self.cache_dir))
            except WheelhouseError as exc:
                r.add("wheels", False, str(exc), "use a 64-bit OS image (Pi OS Bookworm 64-bit, JetPack 6), or "
                      "another python: on the board")
                return
        mb = sum((Path(house.path) / n).stat().st_size for n in house.files) / 1e6
        r.add("wheels", True, f"{len(house.files)} wheels for {python.group_key} ({mb:.1f} MB, "
                              f"{'cached' if house.cached else 'built'} on this machine)")


async def _disk(s: Session, r: BoardReport) -> None:
    wd = board_path(s.board)
    script = (f"d={quote_path(wd)}; while [ ! -d \"$d\" ]; do d=$(dirname \"$d\"); done; "
              "df -Pk \"$d\" | tail -n 1")
    done = await s.run(script, check=False)
    try:
        free_mb = int(done.stdout.split()[3]) // 1024
    except (IndexError, ValueError):
        r.add("disk", False, f"could not read free space under {wd}: {(done.stderr or done.stdout).strip()[:200]}")
        return
    r.facts["free_mb"] = free_mb
    r.add("disk", free_mb >= MIN_FREE_MB, f"{free_mb} MB free under {wd}",
          None if free_mb >= MIN_FREE_MB else f"free at least {MIN_FREE_MB} MB there, or set workdir:")


async def _clock(s: Session, r: BoardReport, limit_ms: float) -> None:
    """NTP-style over one open SSH channel: a shell on the board answers each line with its
    ``date +%s%N``; the board's time is compared with the midpoint of each round trip (a channel
    kept open makes both directions alike); the least round trip wins, half of it is the
    uncertainty."""
    best: tuple[float, float] | None = None
    try:
        async with s.conn.create_process("while read -r _; do date +%s%N; done") as proc:
            for _ in range(CLOCK_SAMPLES):
                t0 = time.time_ns()
                proc.stdin.write("\n")
                line = await asyncio.wait_for(proc.stdout.readline(), 20)
                t1 = time.time_ns()
                remote = int(str(line).strip())
                rtt = (t1 - t0) / 1e6
                offset = (remote - (t0 + t1) / 2) / 1e6
                if best is None or rtt < best[1]:
                    best = (offset, rtt)
            proc.stdin.write_eof()
    except (ValueError, OSError, asyncio.TimeoutError, asyncssh.Error) as exc:
        r.add("clock", False, f"could not read the board's clock: {str(exc)[:120] or type(exc).__name__}",
              required=False)
        return
    assert best is not None
    offset, rtt = best
    r.facts["clock_offset_ms"] = round(offset, 3)
    r.facts["clock_uncertainty_ms"] = round(rtt / 2, 3)
    ok = abs(offset) <= limit_ms + rtt / 2
    r.add("clock", ok, f"offset {offset:+.1f} ms ± {rtt / 2:.1f} ms (limit {limit_ms:g} ms)",
          None if ok else "sync the board's clock: sudo apt install chrony, point it at the laptop or a lab "
                          "NTP server (docs/hardware.md, 'Clocks')")


async def _serial(s: Session, r: BoardReport, port: str) -> None:
    q = shlex.quote(port)
    done = await s.run(f"if [ ! -e {q} ]; then echo missing; elif [ ! -w {q} ]; then echo readonly; "
                       f"else echo ok; fi", check=False)
    state = done.stdout.strip()
    fix = {"missing": "enable the UART (docs/hardware.md, 'Serial') or fix the port in the inventory",
           "readonly": f"add the board's user to the dialout group: sudo usermod -aG dialout {s.board.user or '$USER'}"}
    r.add(f"serial {port}", state == "ok", {"ok": "present, writable", "missing": "no such device",
                                            "readonly": "not writable by the login user"}.get(state, state), fix.get(state))


async def _bluetooth(s: Session, r: BoardReport, adapter: str) -> None:
    q = shlex.quote(adapter)
    done = await s.run(f"if [ ! -e /sys/class/bluetooth/{q} ]; then echo missing; "
                       f"elif command -v hciconfig >/dev/null && ! hciconfig {q} | grep -q 'UP RUNNING'; "
                       f"then echo down; else echo ok; fi", check=False)
    state = done.stdout.strip()
    r.add(f"bluetooth {adapter}", state == "ok", {"ok": "present and up", "missing": "no such adapter",
                                                  "down": "present but down"}.get(state, state),
          {"missing": "enable Bluetooth (docs/hardware.md, 'Bluetooth')",
           "down": f"sudo rfkill unblock bluetooth && sudo hciconfig {adapter} up"}.get(state))


async def _i2c(s: Session, r: BoardReport) -> None:
    done = await s.run("ls /dev/i2c-* 2>/dev/null", check=False)
    buses = done.stdout.split()
    r.add("i2c", bool(buses), ", ".join(buses) or "no /dev/i2c-* bus",
          None if buses else "enable I2C: sudo raspi-config nonint do_i2c 0 (docs/hardware.md, 'I2C')")


async def _shaping(s: Session, r: BoardReport, needs: Needs, boards: Boards) -> None:
    modules = " ".join(f"sch_{q}" for q in QDISCS)
    done = await s.run("PATH=$PATH:/usr/sbin:/sbin; for t in tc nft; do command -v $t >/dev/null && echo $t; done; "
                       "m=/lib/modules/$(uname -r); for q in " + modules + "; do "
                       "{ grep -qs \"/$q.ko\" $m/modules.builtin || modinfo -n $q || ls $m/kernel/net/sched/$q.ko*; } "
                       ">/dev/null 2>&1 && echo $q; done", check=False)
    seen = set(done.stdout.split())
    tools = [t for t in ("tc", "nft") if t in seen]
    qdiscs = [q for q in QDISCS if f"sch_{q}" in seen]
    r.facts["qdiscs"] = qdiscs
    r.facts["tools"] = tools
    missing = [t for t in ("tc", "nft") if t not in seen]
    r.add("tc/nft", not missing, f"{', '.join(tools) or 'neither'} present; kernel qdiscs: {', '.join(qdiscs) or 'none found'}",
          f"sudo apt install {' '.join({'tc': 'iproute2', 'nft': 'nftables'}[t] for t in missing)}" if missing else None,
          required=needs.kernel_shaping)
    if needs.sudo:
        done = await s.run("[ \"$(id -u)\" = 0 ] || sudo -n -- tc qdisc show dev lo 2>&1", check=False)
        ok = done.code == 0
        r.add("sudo", ok, "root, or sudo -n tc works" if ok else (done.stdout.strip() or "sudo -n failed")[:200],
              None if ok else "give the login user passwordless sudo (docs/hardware.md, 'sudo')")
        if ok and not missing:
            await _probe_qdiscs(s, r, boards)


async def _probe_qdiscs(s: Session, r: BoardReport, boards: Boards) -> None:
    """linkemu's probe on the board (a qdisc added to a veth in a throwaway namespace, deleted
    after): which qdiscs its kernel really has, where module lists are absent or incomplete."""
    loop = asyncio.get_running_loop()
    try:   # the probe's runner waits on this loop: run it beside the loop, not on it
        caps = await loop.run_in_executor(None, lambda: probe(runner=boards.runner(s.board.name)))
    except LinkError as exc:
        r.add("qdiscs", False, f"probe failed: {str(exc)[:200]}", required=False)
        return
    have = [q for q in QDISCS if caps.get(q)]
    r.facts["qdiscs"] = have
    r.facts["probe"] = {k: v for k, v in caps.items() if k != "errors"}
    backend = "netem" if caps.get("netem") else ("tbf/htb + nft" if have else "none")
    r.add("qdiscs", bool(have) and bool(caps.get("u32")),
          f"probed: {', '.join(have) or 'none'}{', u32' if caps.get('u32') else ''}{', nft' if caps.get('nft') else ''}"
          f" (kernel shaping will use {backend})")


async def _runtime(s: Session, r: BoardReport) -> None:
    board = s.board
    module = {"tflite": "ai_edge_litert", "torch": "torch"}[board.runtime]
    keeps = board.env == "python" or (board.env == "venv-system" and board.runtime == "torch")
    if not keeps:
        r.add("runtime", True, f"{module} comes from the laptop's wheelhouse (deploy installs it)")
        return
    code = (f"import {module} as m; print(getattr(m, '__version__', '?'))" if module == "torch" else
            "import importlib\nfor n in ('ai_edge_litert', 'tflite_runtime'):\n"
            "    try:\n        importlib.import_module(n); print(n); break\n    except ImportError: pass\n"
            "else:\n    raise SystemExit('neither ai_edge_litert nor tflite_runtime imports')")
    done = await s.run([board.python, "-c", code], check=False, timeout=120)
    ok = done.code == 0
    r.add("runtime", ok, f"{module} {done.stdout.strip()} imports with {board.python}" if ok else
          f"{module} does not import with {board.python}: {(done.stderr or done.stdout).strip().splitlines()[-1][:200] if (done.stderr or done.stdout).strip() else done.code}",
          None if ok else ("install NVIDIA's torch wheel for this JetPack (docs/hardware.md, 'Jetson')"
                           if module == "torch" else "set env: venv so deploy installs it"))


def render_table(reports: dict[str, BoardReport]) -> Any:
    """A rich Table: one row per check, grouped by board."""
    from rich.table import Table
    t = Table(title="testbed doctor", show_lines=False)
    for col in ("board", "check", "", "detail", "fix"):
        t.add_column(col, overflow="fold")
    for name, rep in reports.items():
        for i, c in enumerate(rep.checks):
            mark = "[green]ok[/]" if c.ok else ("[red]FAIL[/]" if c.required else "[yellow]warn[/]")
            t.add_row(name if i == 0 else "", c.name, mark, c.detail, c.fix or "")
    return t


def as_json(reports: dict[str, BoardReport]) -> dict[str, Any]:
    return {"ok": all(r.ok for r in reports.values()),
            "boards": {name: {"ok": r.ok, "checks": [asdict(c) for c in r.checks], "facts": r.facts}
                       for name, r in reports.items()}}


def summary_line(reports: dict[str, BoardReport]) -> str:
    bad = {n: r.problems() for n, r in reports.items() if not r.ok}
    if not bad:
        return f"doctor: {len(reports)} board(s) ready"
    return "doctor: " + "; ".join(f"{n}: " + ", ".join(f"{c.name}: {c.detail}" for c in cs) for n, cs in bad.items())

