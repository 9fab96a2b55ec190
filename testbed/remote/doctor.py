"""``testbed doctor``: the preflight of every ssh board, in parallel, changing nothing on any.

Holds ``Check`` (one named finding: ok or not, what was seen, how to fix it), ``BoardReport``
(a board's checks and the facts later steps use: its interpreter, its clock offset, its qdiscs)
and ``doctor``, which connects to every board (host key pinned) and checks what the board's
inventory entry needs: Python (>= 3.10) and its path, ``uname -m`` and glibc, the wheel tags it
accepts, free disk in its workdir, the clock offset to the laptop, the serial ports of its links
(present and writable), its Bluetooth adapter (BLE links), its power meter as the entry's ``energy:``
names it (``energy_checks``: the I2C bus and the chip's ID registers of an INA219/226/260, a Jetson's
INA3221 rail files, a RAPL zone's counter, the Pi 5's ``vcgencmd pmic_read_adc``), ``tc`` and
``nft`` and which qdiscs its kernel has, ``sudo -n`` where it needs root, its runtime (the
vendor's torch where the board keeps it), and, given a cache folder, that its group's wheelhouse
can be built on the laptop (the wheel tags it accepts against the wheels that exist). ``render_table`` and ``as_json`` present the result.
With an external broker, ``broker_login_check`` (a report of its own, ``BROKER_REPORT``) logs in
from the laptop with the inventory's login and TLS files, naming why it is refused; the boards'
own logins are the same credentials and are tried when their agents start.

It must not change a board: no file written, no package installed, no qdisc left behind (the
INA probe writes only the chip's register pointer, as every register read does).
"""
from __future__ import annotations

import asyncio
import errno
import fnmatch
import glob
import json
import os
import re
import shlex
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from linkemu.errors import LinkError
from linkemu.tc import BACKENDS as QDISCS, probe
from nodes.energy import sysfs
from nodes.energy.ina import DIE_IDS, INA219_POR_CONFIG, REG_CONFIG, REG_DIE_ID, REG_MANUFACTURER_ID, TI_MANUFACTURER_ID
from nodes.transport_settings import end_settings
from testbed.remote.wheelhouse import WheelhouseError, build_wheelhouse, requirements_for
from testbed.config import BoardSpec, EnergySpec, Inventory
from testbed.remote.boardpython import PROBE_SCRIPT, BoardPython
from testbed.remote.ssh import Boards, Session, board_path, quote_path
from testbed.shaping import KERNEL_SSH, shaper_choices

__all__ = ["Check", "BoardReport", "doctor", "broker_login_check", "BROKER_REPORT", "render_table", "as_json", "MIN_FREE_MB", "board_needs",
           "energy_checks", "energy_probe_spec", "judge_energy", "ENERGY_PROBE"]

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
                 kernel_shaping=kernel, sudo=kernel)


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
    login = broker_login_check(inventory)
    if login is not None:
        reports[BROKER_REPORT] = login
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


BROKER_REPORT = "(broker)"   # not a board name: those start with a letter or digit


def broker_login_check(inventory: Inventory, *, timeout: float = 5.0) -> BoardReport | None:
    """Log in to the inventory's external broker from the laptop, as every board will (same
    login, same TLS files); None for an embedded broker (its users are made per run)."""
    from nodes.errors import NodeError
    from nodes.mqtt import MqttClient
    from testbed.broker import external_login

    spec = inventory.broker
    if spec.mode != "external":
        return None
    r = BoardReport(BROKER_REPORT)
    where = f"{spec.host}:{spec.port}"
    who = "anonymously" if spec.anonymous else \
        f"as {spec.username}" if spec.username else "with the client certificate"
    tls = " over TLS" if spec.tls else ""
    try:
        login = external_login(spec)
        client = MqttClient(host=str(spec.host), port=int(spec.port or 1883), login=login,
                            client_id=f"testbed-doctor-{os.getpid()}")
        client.connect(timeout=timeout)
        client.close()
    except NodeError as exc:
        text = str(exc)
        if "refused" in text:
            fix = ("anonymous access is off on this broker: give broker.username and broker.password_file"
                   if spec.anonymous else "check broker.username and the password in broker.password_file "
                   "against the broker's own users (mosquitto_passwd), and its ACL")
        elif "TLS" in text or "certificate" in text.lower():
            fix = "broker.tls.ca_file must sign the broker's certificate, issued for the host name in broker.host"
        else:
            fix = f"is the broker running on {where} and reachable from this machine (firewall)?"
        r.add("broker login", False, f"{where} {who}{tls}: {text}", fix)
        return r
    r.add("broker login", True, f"logged in to {where} {who}{tls}")
    return r


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
    if board.energy is not None:
        await energy_checks(s, r, board.energy)
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


# -- the power meter ---------------------------------------------------------------------------------

# Run on the board with its python (stdlib only: the board may not have this project yet): reads
# the files the laptop's globs name, lists what other globs match, checks an I2C bus and reads a
# chip's registers (I2C_SMBUS block reads, as smbus2's read_i2c_block_data: only the register
# pointer is written), runs one command; prints one JSON line. The laptop judges what it found.
ENERGY_PROBE = r'''
import glob, json, os, stat, sys
spec = json.loads(sys.argv[1])
out = {"uid": os.getuid()}
try:
    import pwd
    out["user"] = pwd.getpwuid(os.getuid()).pw_name
except Exception:
    out["user"] = str(os.getuid())

def failed(exc, **more):
    d = {"errno": exc.errno, "error": exc.strerror or str(exc)}
    d.update(more)
    return d

files = {}
for pattern in spec.get("read", []):
    for path in sorted(glob.glob(pattern)):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            files[path] = failed(exc)
            continue
        try:
            files[path] = {"text": os.read(fd, 64).decode("ascii", "replace").strip()}
        except OSError as exc:
            files[path] = failed(exc)
        finally:
            os.close(fd)
out["files"] = files
out["listed"] = {p: sorted(glob.glob(p)) for p in spec.get("list", [])}

i2c = spec.get("i2c")
if i2c:
    dev = i2c["device"]
    res = out["i2c"] = {}
    if not os.path.exists(dev):
        res["state"] = "missing"
    elif not os.access(dev, os.R_OK | os.W_OK):
        res["state"] = "denied"
        st = os.stat(dev)
        res["mode"] = stat.filemode(st.st_mode)
        try:
            import grp
            res["owner"] = pwd.getpwuid(st.st_uid).pw_name + ":" + grp.getgrgid(st.st_gid).gr_name
        except Exception:
            res["owner"] = "%d:%d" % (st.st_uid, st.st_gid)
    else:
        try:
            fd = os.open(dev, os.O_RDWR)
        except OSError as exc:
            res.update(failed(exc, state="open"))
        else:
            import ctypes, fcntl
            class Data(ctypes.Union):
                _fields_ = [("byte", ctypes.c_uint8), ("word", ctypes.c_uint16), ("block", ctypes.c_uint8 * 34)]
            class Args(ctypes.Structure):
                _fields_ = [("read_write", ctypes.c_uint8), ("command", ctypes.c_uint8),
                            ("size", ctypes.c_uint32), ("data", ctypes.POINTER(Data))]
            try:
                funcs = ctypes.c_ulong()
                fcntl.ioctl(fd, 0x0705, funcs)                       # I2C_FUNCS
                res["funcs"] = funcs.value
                if not funcs.value & 0x04000000:                     # I2C_FUNC_SMBUS_READ_I2C_BLOCK
                    res["state"] = "nofunc"
                else:
                    fcntl.ioctl(fd, 0x0703, i2c["address"])          # I2C_SLAVE (never _FORCE)
                    res["state"] = "ok"
                    res["registers"] = {}
                    for reg in i2c["registers"]:
                        data = Data()
                        data.block[0] = 2
                        args = Args(1, reg, 8, ctypes.pointer(data))  # read, I2C_SMBUS_I2C_BLOCK_DATA
                        try:
                            fcntl.ioctl(fd, 0x0720, args)            # I2C_SMBUS
                            res["registers"][str(reg)] = {"word": data.block[1] << 8 | data.block[2]}
                        except OSError as exc:
                            res["registers"][str(reg)] = failed(exc)
            except OSError as exc:
                res.update(failed(exc, state="ioctl"))
            finally:
                os.close(fd)

run = spec.get("run")
if run:
    import shutil, subprocess
    if shutil.which(run[0]) is None:
        out["run"] = {"missing": True}
    else:
        try:
            p = subprocess.run(run, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=10,
                               universal_newlines=True)
        except subprocess.TimeoutExpired:
            out["run"] = {"timeout": 10}
        except OSError as exc:
            out["run"] = failed(exc)
        else:
            out["run"] = {"code": p.returncode, "stdout": p.stdout[-8000:], "stderr": p.stderr[-1000:]}
print(json.dumps(out))
'''

I2C_FIX = ("enable I2C: add dtparam=i2c_arm=on to /boot/firmware/config.txt (Pi OS Bookworm) or run "
           "sudo raspi-config nonint do_i2c 0, then reboot (docs/hardware.md, 'I2C')")
_NO_ANSWER = {errno.ENXIO, errno.EREMOTEIO, errno.EIO, errno.ETIMEDOUT}   # a NACK, as adapters report it


def _under(root: str, pattern: str) -> str:
    return os.path.join(glob.escape(root), pattern)


def _jetson_globs(root: str) -> list[str]:
    return [_under(root, f"{sysfs.HWMON_GLOB}/{sysfs.HWMON_LABEL_GLOB}"), _under(root, f"{sysfs.HWMON_GLOB}/*_input"),
            _under(root, f"{sysfs.IIO_GLOB}/{sysfs.IIO_LABEL_GLOB}"), _under(root, f"{sysfs.IIO_GLOB}/in_*_input")]


def _zone_dir(root: str, energy: EnergySpec) -> str:
    return os.path.join(root, sysfs.POWERCAP, str(energy.settings.get("zone") or "intel-rapl:0"))


def energy_probe_spec(energy: EnergySpec, *, root: str = "/", vcgencmd: tuple[str, ...] = ("vcgencmd",)
                      ) -> dict[str, Any] | None:
    """What ``ENERGY_PROBE`` is to look at on the board for ``energy`` (None: nothing to look at).
    ``root`` stands for ``/`` and ``vcgencmd`` for the tool (tests only, as the agent's
    ``HBC_TESTBED_METER_ROOT``)."""
    meter, st = energy.meter, energy.settings
    if meter in ("ina219", "ina226", "ina260"):
        regs = [REG_CONFIG, REG_MANUFACTURER_ID, REG_DIE_ID] if meter == "ina219" else [REG_MANUFACTURER_ID, REG_DIE_ID]
        return {"i2c": {"device": os.path.join(root, f"dev/i2c-{int(st.get('bus', 1))}"),
                        "address": int(st.get("address", 0x40)), "registers": regs},
                "list": [_under(root, "dev/i2c-*")]}
    if meter == "jetson":
        return {"read": _jetson_globs(root)}
    if meter == "rapl":
        zone = _zone_dir(root, energy)
        return {"list": [_under(root, f"{sysfs.POWERCAP}/*")],
                "read": [os.path.join(glob.escape(zone), n) for n in (sysfs.RAPL_ENERGY, sysfs.RAPL_RANGE, sysfs.RAPL_NAME)]}
    if meter == "pi5-pmic":
        return {"run": sysfs.pmic_argv(vcgencmd)}
    return None


async def energy_checks(s: Session, r: BoardReport, energy: EnergySpec, *, root: str = "/",
                        vcgencmd: tuple[str, ...] = ("vcgencmd",)) -> None:
    """The board's meter, as ``energy`` names it, looked at in one round trip (nothing changed):
    adds ``i2c`` (INA chips: the bus) and ``energy`` (the meter itself) to ``r``."""
    spec = energy_probe_spec(energy, root=root, vcgencmd=vcgencmd)
    if spec is None:
        r.checks.extend(judge_energy(energy, {}, root=root))
        return
    done = await s.run([s.board.python, "-I", "-c", ENERGY_PROBE, json.dumps(spec)], check=False, timeout=60)
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
        if not isinstance(found, dict):
            raise ValueError("not an object")
    except (ValueError, IndexError):
        why = (done.stderr or done.stdout).strip().splitlines()
        r.add("energy", False, f"{energy.meter}: the probe did not run with {s.board.python}: "
                               f"{why[-1][:200] if why else f'exit {done.code}'}")
        return
    r.checks.extend(judge_energy(energy, found, root=root))
    r.facts["energy"] = {"meter": energy.meter, "user": found.get("user")}


def _who(found: dict[str, Any]) -> str:
    return str(found.get("user") or "the login user")


def _err(res: dict[str, Any]) -> str:
    return str(res.get("error") or f"errno {res.get('errno')}")


def judge_energy(energy: EnergySpec, found: dict[str, Any], *, root: str = "/") -> list[Check]:
    """The checks ``found`` (what ``ENERGY_PROBE`` printed for ``energy_probe_spec``) makes; pure."""
    meter = energy.meter
    if meter == "model":
        return [Check("energy", True, "modelled: no meter (CPU time and airtime times the board's power table; "
                                      "figures say modelled)")]
    if meter in ("ina219", "ina226", "ina260"):
        return _judge_ina(energy, found, root)
    if meter == "jetson":
        return [_judge_jetson(energy, found, root)]
    if meter == "rapl":
        return [_judge_rapl(energy, found, root)]
    if meter == "pi5-pmic":
        return [_judge_pmic(energy, found)]
    return [Check("energy", False, f"doctor does not know the meter {meter!r}")]


def _judge_ina(energy: EnergySpec, found: dict[str, Any], root: str) -> list[Check]:
    meter, st = energy.meter, energy.settings
    bus, addr = int(st.get("bus", 1)), int(st.get("address", 0x40))
    dev = os.path.join(root, f"dev/i2c-{bus}")
    res = found.get("i2c") or {}
    state = res.get("state")
    user = _who(found)
    if state == "missing":
        others = [b for lst in (found.get("listed") or {}).values() for b in lst]
        if others:
            return [Check("i2c", False, f"{dev}: no such bus (buses: {', '.join(others)})",
                          f"set energy: {{meter: {meter}, bus: N}} to the bus the meter is wired to "
                          f"(i2cdetect -l lists them), or {I2C_FIX}")]
        return [Check("i2c", False, f"{dev}: no such bus (no /dev/i2c-* at all)", I2C_FIX)]
    if state in ("denied", "open"):
        how = (f"{res.get('mode', '?')} {res.get('owner', '?')}" if state == "denied" else _err(res))
        return [Check("i2c", False, f"{dev} is not readable and writable by {user} ({how})",
                      f"sudo usermod -aG i2c {user}, then log in again (docs/hardware.md, 'I2C')")]
    if state is None:
        return [Check("i2c", False, f"{dev}: the probe said nothing about it")]
    bus_ok = Check("i2c", True, f"{dev} present, readable and writable by {user}")
    at = f"0x{addr:02X} on bus {bus}"
    if state == "nofunc":
        return [bus_ok, Check("energy", False, f"{dev}'s adapter cannot do I2C block reads (functionality "
                                               f"0x{int(res.get('funcs', 0)):08X}), which the {meter} driver uses",
                              "wire the meter to a hardware I2C bus (i2c_arm: GPIO 2/3 on a Pi)")]
    if state == "ioctl":
        if res.get("errno") == errno.EBUSY:
            return [bus_ok, Check("energy", False, f"{at} is held by a kernel driver ({_err(res)})",
                                  "remove the dtoverlay that binds an ina2xx driver there (the agent reads the "
                                  "chip itself), or fix address:")]
        return [bus_ok, Check("energy", False, f"{dev} is not an I2C adapter ({_err(res)})",
                              f"set energy: {{meter: {meter}, bus: N}} to a real bus (i2cdetect -l lists them)")]
    regs = res.get("registers") or {}

    def word(reg: int) -> int | None:
        v = regs.get(str(reg)) or {}
        return int(v["word"]) if "word" in v else None

    first = regs.get(str(REG_CONFIG if meter == "ina219" else REG_MANUFACTURER_ID)) or {}
    if "word" not in first:
        if first.get("errno") in _NO_ANSWER or not first:
            return [bus_ok, Check("energy", False, f"no device answers at {at} ({_err(first) if first else 'not read'})",
                                  f"check the wiring, power and address: (A0/A1 strapping); /usr/sbin/i2cdetect -y "
                                  f"{bus} lists what answers")]
        return [bus_ok, Check("energy", False, f"reading {at} failed: {_err(first)}")]
    mfr, die = word(REG_MANUFACTURER_ID), word(REG_DIE_ID)
    other = next((n for n, d in DIE_IDS.items() if mfr == TI_MANUFACTURER_ID and d == die), None)
    if meter == "ina219":
        if other is not None:
            return [bus_ok, Check("energy", False, f"found an {other.upper()} at {at} (die ID 0x{die:04X}); "
                                                   f"the inventory says ina219", f"set energy: {{meter: {other}}}")]
        cfg = word(REG_CONFIG)
        note = ("the INA219's power-on default" if cfg == INA219_POR_CONFIG else
                "configured since power-on, or no INA219")
        return [bus_ok, Check("energy", True, f"a device answers at {at} (configuration 0x{cfg:04X}: {note}; an INA219 "
                                              f"has no ID register, the agent identifies it when it opens it)")]
    want = DIE_IDS[meter]
    if mfr != TI_MANUFACTURER_ID:
        return [bus_ok, Check("energy", False, f"a device answers at {at}, but its manufacturer ID (0xFE) reads "
                                               f"{'nothing' if mfr is None else f'0x{mfr:04X}'}, not 0x{TI_MANUFACTURER_ID:04X} "
                                               f"(TI): no {meter.upper()}",
                              f"check address: (/usr/sbin/i2cdetect -y {bus}); an INA219 has no ID: set meter: ina219")]
    if die != want:
        what = f"an {other.upper()}" if other else f"a TI chip with die ID {'?' if die is None else f'0x{die:04X}'}"
        return [bus_ok, Check("energy", False, f"found {what} at {at}; the inventory says {meter}",
                              f"set energy: {{meter: {other}}}" if other else "check address:")]
    return [bus_ok, Check("energy", True, f"{meter.upper()} at {at} (manufacturer 0x{mfr:04X}, die 0x{die:04X})")]


def _file(found: dict[str, Any], path: str) -> dict[str, Any] | None:
    v = (found.get("files") or {}).get(path)
    return v if isinstance(v, dict) else None


def _denied(found: dict[str, Any], paths: Iterable[str]) -> list[str]:
    return [p for p in paths if (_file(found, p) or {}).get("errno") in (errno.EACCES, errno.EPERM)]


def _judge_jetson(energy: EnergySpec, found: dict[str, Any], root: str) -> Check:
    wanted = str(energy.settings.get("rail") or "VDD_IN")
    files = found.get("files") or {}
    layouts = ((sysfs.HWMON_GLOB, sysfs.HWMON_LABEL_RE, "hwmon", (sysfs.HWMON_VOLTAGE, sysfs.HWMON_CURRENT)),
               (sysfs.IIO_GLOB, sysfs.IIO_LABEL_RE, "iio", (sysfs.IIO_VOLTAGE, sysfs.IIO_CURRENT, sysfs.IIO_POWER)))
    rails: list[sysfs.JetsonRail] = []
    labels_denied: list[str] = []
    label_files = 0
    for layout_glob, label_re, layout, templates in layouts:
        for path in sorted(files):
            base, folder = os.path.basename(path), os.path.dirname(path)
            m = re.fullmatch(label_re, base)
            if not m or not _matches(folder, os.path.join(root, layout_glob)):
                continue
            n = m.group(1)
            if layout == "hwmon" and int(n) == sysfs.SUM_CHANNEL_HWMON:
                continue
            label_files += 1
            got = files[path]
            if "text" not in got:
                labels_denied.append(path)
                continue
            paths = [os.path.join(folder, t.format(n=n)) for t in templates]
            if sysfs._is_rail_label(got["text"]) and os.path.join(folder, templates[1].format(n=n)) in files:
                rails.append(sysfs.JetsonRail(got["text"], layout, *paths))
    fix = sysfs.JETSON_PERMISSION_FIX
    if not label_files:
        return Check("energy", False, f"no INA3221 rails under {os.path.join(root, sysfs.HWMON_GLOB)} (JetPack 5/6) "
                                      f"or {os.path.join(root, sysfs.IIO_GLOB)} (JetPack 4)",
                     "expected a Jetson with its ina3221 driver loaded (JetPack's device tree); on another board set "
                     "energy: to its meter")
    chosen = sysfs._choose_rail(rails, wanted)
    if chosen is None:
        if labels_denied:
            return Check("energy", False, f"cannot read the INA3221 rail labels as {_who(found)}: "
                                          f"{_shown(labels_denied)} (permission denied)",
                         f"{fix}; e.g. sudo chmod o+r {' '.join(_chmod_globs(labels_denied))}")
        return Check("energy", False, f"no INA3221 rail {wanted!r} on this board; rails: "
                                      f"{', '.join(r.label for r in rails) or 'none'}",
                     f"set energy: {{meter: jetson, rail: {rails[0].label}}}" if rails else None)
    paths = [p for p in (chosen.voltage, chosen.current, chosen.power) if p is not None]
    denied = _denied(found, paths)
    if denied:
        return Check("energy", False, f"{chosen.label} ({chosen.layout}): cannot read {', '.join(denied)} as "
                                      f"{_who(found)} (permission denied)", f"{fix}; e.g. sudo chmod o+r {' '.join(denied)}")
    values: list[str] = []
    for p, unit in zip(paths, ("mV", "mA", "mW")):
        got = _file(found, p)
        if got is None or "text" not in got or not re.fullmatch(r"-?\d+", got["text"]):
            why = "missing" if got is None else (got["text"] if "text" in got else _err(got))
            return Check("energy", False, f"{chosen.label} ({chosen.layout}): {p}: {why!r}; expected an integer")
        values.append(f"{got['text']} {unit}")
    return Check("energy", True, f"{chosen.label} ({chosen.layout}, {os.path.dirname(chosen.current)}): "
                                 f"{', '.join(values)}, readable by {_who(found)}")


def _matches(path: str, pattern: str) -> bool:
    """``path`` matched by the glob ``pattern`` one path component at a time."""
    a, b = path.rstrip("/").split("/"), pattern.rstrip("/").split("/")
    return len(a) == len(b) and all(fnmatch.fnmatchcase(x, y) for x, y in zip(a, b))


def _chmod_globs(paths: list[str]) -> list[str]:
    """The folders of ``paths`` with every file the meter reads there, as globs for a chmod line."""
    dirs = sorted({os.path.dirname(p) for p in paths})
    return [f"{d}/{g}" for d in dirs for g in (
        (sysfs.IIO_LABEL_GLOB, "in_*_input") if os.path.basename(d).startswith("iio:") else
        (sysfs.HWMON_LABEL_GLOB, "*_input"))]


def _shown(paths: list[str], limit: int = 3) -> str:
    return ", ".join(paths[:limit]) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _judge_rapl(energy: EnergySpec, found: dict[str, Any], root: str) -> Check:
    zone_dir = _zone_dir(root, energy)
    zone = os.path.basename(zone_dir)
    energy_path, range_path, name_path = (os.path.join(zone_dir, n) for n in
                                          (sysfs.RAPL_ENERGY, sysfs.RAPL_RANGE, sysfs.RAPL_NAME))
    got_energy, got_range = _file(found, energy_path), _file(found, range_path)
    if got_energy is None and got_range is None:
        zones = [z for lst in (found.get("listed") or {}).values() for z in map(os.path.basename, lst) if ":" in z]
        return Check("energy", False, f"no powercap zone {zone!r} at {zone_dir}; zones found: {', '.join(zones) or 'none'}",
                     (f"set energy: {{meter: rapl, zone: {zones[0]}}}" if zones else
                      "expected an x86 board with RAPL (sudo modprobe intel_rapl_msr); on another board set "
                      "energy: to its meter"))
    fix = sysfs.RAPL_PERMISSION_FIX.format(path=energy_path)
    for path, got in ((energy_path, got_energy), (range_path, got_range)):
        if got is None:
            return Check("energy", False, f"{path}: no such file; expected a powercap zone's counter")
        if "text" not in got:
            if got.get("errno") in (errno.EACCES, errno.EPERM):
                return Check("energy", False, f"cannot read {path} as {_who(found)}: permission denied", fix)
            return Check("energy", False, f"cannot read {path}: {_err(got)}")
        if not re.fullmatch(r"\d+", got["text"]):
            return Check("energy", False, f"{path}: {got['text']!r}; expected an integer (uJ)")
    range_uj = int(got_range["text"])  # type: ignore[index]
    if range_uj <= 0:
        return Check("energy", False, f"{range_path}: {range_uj}; expected a positive wrap point in uJ")
    name = (_file(found, name_path) or {}).get("text") or zone
    return Check("energy", True, f"{zone} ({name}): {sysfs.RAPL_ENERGY} readable by {_who(found)} "
                                 f"({got_energy['text']} uJ, wraps at {range_uj / 1e6:.0f} J)")  # type: ignore[index]


def _judge_pmic(energy: EnergySpec, found: dict[str, Any]) -> Check:
    run = found.get("run") or {}
    argv = " ".join(sysfs.pmic_argv(("vcgencmd",)))
    if run.get("missing"):
        return Check("energy", False, "vcgencmd not found on the login's PATH",
                     "expected a Raspberry Pi 5 with the firmware tools: sudo apt install raspi-utils "
                     "(older images: libraspberrypi-bin)")
    if "timeout" in run:
        return Check("energy", False, f"{argv} gave no answer within {run['timeout']} s")
    if "code" not in run:
        return Check("energy", False, f"{argv} did not start: {_err(run) if run else 'no result'}")
    if run["code"] != 0:
        why = (run.get("stderr") or run.get("stdout") or "").strip().splitlines()
        return Check("energy", False, f"{argv} exited {run['code']}: {why[-1][:200] if why else 'no output'}",
                     "expected a Raspberry Pi 5 (pmic_read_adc is its firmware's); the login user needs "
                     "/dev/vcio: sudo usermod -aG video $USER")
    text = str(run.get("stdout") or "")
    rails = sysfs.parse_pmic_adc(text)
    if "current(" not in text or not rails:
        first = text.strip().splitlines()[:1]
        return Check("energy", False, f"{argv} printed no rail with a current( and a volt( line (got "
                                      f"{first[0][:80] if first else 'nothing'!r})",
                     "expected a Raspberry Pi 5: update its firmware (sudo rpi-eeprom-update; sudo apt full-upgrade)")
    wanted = re.sub(r"_[AV]$", "", str(energy.settings.get("rail") or "total"), flags=re.I)
    if wanted.lower() != "total" and wanted.upper() not in {r.upper() for r in rails}:
        return Check("energy", False, f"no PMIC rail {wanted!r} with both a voltage and a current; rails: "
                                      f"{', '.join(sorted(rails))}", "set energy: {meter: pi5-pmic, rail: total}")
    total_w = sum(v * a for v, a in rails.values())
    return Check("energy", True, f"{argv}: {len(rails)} rails ({total_w:.2f} W in all)"
                                 + ("" if wanted.lower() == "total" else f", {wanted} among them"))


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

