"""The power meters a board's kernel or firmware already offers: ``JetsonMeter`` (an INA3221
rail from sysfs), ``RaplMeter`` (an x86 powercap zone's energy counter) and ``Pi5PmicMeter``
(the Raspberry Pi 5 PMIC's ADCs through ``vcgencmd pmic_read_adc``).

Layouts read, under a ``root`` that is ``/`` on a board and a tmp dir in tests:

- JetPack 5/6 (the mainline ``ina3221`` hwmon driver):
  ``sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmon<K>/in<N>_label``, ``in<N>_input`` (mV),
  ``curr<N>_input`` (mA) for N = 1..3. Orin Nano/NX have one chip at ``1-0040`` (VDD_IN,
  VDD_CPU_GPU_CV, VDD_SOC); AGX Orin has ``1-0040`` (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0) and
  ``1-0041`` (NC, VDDQ_VDD2_1V8AO, NC). Channels labelled ``NC`` (not connected) and the
  summation channel (``in7_label`` "sum of shunt voltages", with ``curr4_input``) are no rails.
- JetPack 4 (NVIDIA's ``ina3221x`` iio driver):
  ``sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:device<K>/rail_name_<N>``,
  ``in_voltage<N>_input`` (mV), ``in_current<N>_input`` (mA), ``in_power<N>_input`` (mW) for
  N = 0..2: Nano ``6-0040`` (POM_5V_IN, POM_5V_GPU, POM_5V_CPU), Xavier NX ``7-0040`` (VDD_IN,
  VDD_CPU_GPU_CV, VDD_SOC), AGX Xavier ``1-0040``/``1-0041``. These files are root-only.
- RAPL: ``sys/class/powercap/<zone>/energy_uj``, ``max_energy_range_uj``, ``name``; ``energy_uj``
  is root-only since the PLATYPUS fix (CVE-2020-8694).

The board's input rail is ``VDD_IN`` on most Jetsons and ``POM_5V_IN`` on a Nano; each name is
accepted for the other (``INPUT_RAIL_ALIASES``). Sysfs files are opened once and re-read with one
``pread`` at offset 0, so sampling at 1 kHz costs three syscalls a reading.

The layouts' glob patterns and file names are module constants (``HWMON_GLOB``, ``IIO_VOLTAGE``...):
``testbed doctor`` builds its stdlib probe of a board from the same ones.

This module never imports ``testbed``; ``vcgencmd`` is the only process it runs.
"""
from __future__ import annotations

import glob
import math
import os
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from nodes.energy import MeterError, PowerMeter, PowerSample, now_ns
from nodes.energy.settings import max_rate_hz

__all__ = ["JetsonMeter", "RaplMeter", "Pi5PmicMeter", "JetsonRail", "INPUT_RAIL_ALIASES",
           "find_jetson_rails", "parse_pmic_adc", "pmic_argv", "unwrap_energy"]

HWMON_GLOB = "sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
HWMON_LABEL_GLOB, HWMON_LABEL_RE = "in*_label", r"in(\d+)_label"
HWMON_VOLTAGE, HWMON_CURRENT = "in{n}_input", "curr{n}_input"              # mV, mA
IIO_GLOB = "sys/bus/i2c/drivers/ina3221x/*/iio:device*"
IIO_LABEL_GLOB, IIO_LABEL_RE = "rail_name_*", r"rail_name_(\d+)"
IIO_VOLTAGE, IIO_CURRENT, IIO_POWER = "in_voltage{n}_input", "in_current{n}_input", "in_power{n}_input"
POWERCAP = "sys/class/powercap"
RAPL_ENERGY, RAPL_RANGE, RAPL_NAME = "energy_uj", "max_energy_range_uj", "name"   # in a zone's directory
INPUT_RAIL_ALIASES: Mapping[str, str] = {"VDD_IN": "POM_5V_IN", "POM_5V_IN": "VDD_IN"}
SUM_CHANNEL_HWMON = 7          # mainline ina3221: in7_* is the sum of the shunt voltages
PMIC_TIMEOUT_S = 2.0
_READ_BYTES = 64

JETSON_PERMISSION_FIX = ("run the agent as root, or make the INA3221 files readable after each boot "
                         "(sudo chmod o+r on the rail files, or a udev rule / systemd ExecStartPre that does it)")
RAPL_PERMISSION_FIX = ("energy_uj is root-only since the PLATYPUS fix (CVE-2020-8694): run the agent as root, "
                       "or make it readable after each boot (sudo chmod o+r {path}, or a udev rule on "
                       "SUBSYSTEM==\"powercap\" that does it)")


# -- small file helpers -------------------------------------------------------------------------

def _open_sysfs(path: str) -> int:
    """A read-only descriptor on ``path`` (the one place files are opened; tests may replace it)."""
    return os.open(path, os.O_RDONLY)


def _unreadable(path: str, exc: OSError, fix: str) -> MeterError:
    if isinstance(exc, PermissionError):
        return MeterError(f"cannot read {path}: permission denied; {fix}")
    return MeterError(f"cannot read {path}: {exc.strerror or exc}; expected a readable sysfs file")


def _open_or_fail(path: str, fix: str) -> int:
    try:
        return _open_sysfs(path)
    except OSError as exc:
        raise _unreadable(path, exc, fix) from None


def _pread_text(fd: int, path: str) -> str:
    try:
        return os.pread(fd, _READ_BYTES, 0).decode("ascii", "replace").strip()
    except OSError as exc:
        raise MeterError(f"{path} stopped answering: {exc.strerror or exc}") from None


def _pread_int(fd: int, path: str) -> int:
    text = _pread_text(fd, path)
    try:
        return int(text)
    except ValueError:
        raise MeterError(f"{path}: expected an integer; got {text!r}") from None


def _read_text_once(path: str, fix: str) -> str:
    fd = _open_or_fail(path, fix)
    try:
        return _pread_text(fd, path)
    finally:
        os.close(fd)


def _close_all(fds: list[int]) -> None:
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


# -- Jetson INA3221 ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JetsonRail:
    """One INA3221 channel: its label, the layout it came from (``hwmon``/``iio``), its files
    (``power`` only on iio, where the driver computes mW itself)."""

    label: str
    layout: str
    voltage: str
    current: str
    power: str | None = None


def _is_rail_label(label: str) -> bool:
    return bool(label) and label.upper() != "NC" and not label.lower().startswith("sum of")


def _hwmon_rails(root: Path) -> list[JetsonRail]:
    rails: list[JetsonRail] = []
    for hwmon in sorted(glob.glob(str(root / HWMON_GLOB))):
        for label_path in sorted(glob.glob(os.path.join(glob.escape(hwmon), HWMON_LABEL_GLOB))):
            match = re.fullmatch(HWMON_LABEL_RE, os.path.basename(label_path))
            if not match or int(match.group(1)) == SUM_CHANNEL_HWMON:
                continue
            n = match.group(1)
            label = _read_text_once(label_path, JETSON_PERMISSION_FIX)
            current = os.path.join(hwmon, HWMON_CURRENT.format(n=n))
            if _is_rail_label(label) and os.path.lexists(current):
                rails.append(JetsonRail(label, "hwmon", os.path.join(hwmon, HWMON_VOLTAGE.format(n=n)), current))
    return rails


def _iio_rails(root: Path) -> list[JetsonRail]:
    rails: list[JetsonRail] = []
    for dev in sorted(glob.glob(str(root / IIO_GLOB))):
        for label_path in sorted(glob.glob(os.path.join(glob.escape(dev), IIO_LABEL_GLOB))):
            match = re.fullmatch(IIO_LABEL_RE, os.path.basename(label_path))
            if not match:
                continue
            n = match.group(1)
            label = _read_text_once(label_path, JETSON_PERMISSION_FIX)
            if _is_rail_label(label):
                rails.append(JetsonRail(label, "iio", os.path.join(dev, IIO_VOLTAGE.format(n=n)),
                                        os.path.join(dev, IIO_CURRENT.format(n=n)),
                                        os.path.join(dev, IIO_POWER.format(n=n))))
    return rails


def find_jetson_rails(root: str | Path = "/") -> list[JetsonRail]:
    """Every INA3221 rail under ``root``, JetPack 5/6 hwmon first, then JetPack 4 iio; ``NC`` and
    the summation channel left out. ``MeterError`` if a label cannot be read."""
    root = Path(root)
    return _hwmon_rails(root) + _iio_rails(root)


def _choose_rail(rails: Sequence[JetsonRail], wanted: str) -> JetsonRail | None:
    by_name = {r.label.upper(): r for r in rails}
    for name in (wanted, INPUT_RAIL_ALIASES.get(wanted.upper(), "")):
        if name and name.upper() in by_name:
            return by_name[name.upper()]
    return None


class JetsonMeter(PowerMeter):
    """One INA3221 rail of a Jetson, from the kernel's files (either layout).

    ``settings["rail"]`` names the rail (default ``VDD_IN``, the module's input; ``POM_5V_IN`` on
    a Nano is taken for it and back). After ``open``, ``rail`` is the label the board uses.
    mW is the iio driver's own figure on JetPack 4 and mV x mA / 1000 on hwmon.
    """

    name: ClassVar[str] = "jetson"

    def __init__(self, settings: Mapping[str, Any], *, root: str | Path = "/") -> None:
        super().__init__(settings)
        self.root = Path(root)
        self.wanted = str(self.settings.get("rail") or "VDD_IN")
        self.source: JetsonRail | None = None
        self._fds: list[int] = []

    @property
    def max_rate_hz(self) -> float:
        return max_rate_hz(self.name, self.settings)

    def open(self) -> None:
        rails = find_jetson_rails(self.root)
        if not rails:
            raise MeterError(f"no INA3221 rails under {self.root / HWMON_GLOB} (JetPack 5/6) or "
                             f"{self.root / IIO_GLOB} (JetPack 4); expected a Jetson with its ina3221 driver loaded")
        chosen = _choose_rail(rails, self.wanted)
        if chosen is None:
            found = ", ".join(r.label for r in rails)
            raise MeterError(f"no INA3221 rail {self.wanted!r} on this board; expected one of {found} "
                             f"(set energy: {{meter: jetson, rail: ...}})")
        self.close()
        try:
            for path in (chosen.voltage, chosen.current, chosen.power):
                if path is not None:
                    self._fds.append(_open_or_fail(path, JETSON_PERMISSION_FIX))
            self.source, self.rail = chosen, chosen.label
            self.read()        # a file that opens but does not read fails here, not mid-run
        except BaseException:
            self.close()
            raise

    def read(self) -> PowerSample:
        src = self.source
        if src is None or not self._fds:
            raise MeterError("jetson meter read before open; expected open() first")
        t = now_ns()
        mv = float(_pread_int(self._fds[0], src.voltage))
        ma = float(_pread_int(self._fds[1], src.current))
        mw = float(_pread_int(self._fds[2], src.power)) if src.power else mv * ma / 1000.0
        return PowerSample(t_ns=t, rail=src.label, mv=mv, ma=ma, mw=mw)

    def close(self) -> None:
        _close_all(self._fds)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.source is not None:
            out.update(layout=self.source.layout, source=os.path.dirname(self.source.current))
        return out


# -- RAPL ----------------------------------------------------------------------------------------

def unwrap_energy(last_raw: int, raw: int, range_uj: int) -> int:
    """uJ spent between two raw ``energy_uj`` values; a smaller value means the counter wrapped
    at ``range_uj`` once (more than one wrap between two reads cannot be seen)."""
    return raw - last_raw if raw >= last_raw else raw + range_uj - last_raw


def _zones(root: Path) -> list[str]:
    return sorted(os.path.basename(p) for p in glob.glob(str(root / POWERCAP / "*")))


class RaplMeter(PowerMeter):
    """An x86 powercap zone (``settings["zone"]``, default ``intel-rapl:0``, the package) as a meter.

    ``energy_uj()`` is the kernel counter made monotonic: it starts at the raw value seen at
    ``open`` and adds every increase, unwrapping one wrap at ``max_energy_range_uj`` per interval
    between two calls (read it at least once per wrap period: hours at package power).
    ``read()`` gives the mean power since the previous ``read`` (the first: since ``open``) as
    energy delta / time delta on ``clock``; the counter has no voltage or current, so ``mv`` and
    ``ma`` are 0.0 (not NaN, which CSV readers mishandle). ``rail`` is the zone's ``name``
    (``package-0``, ``core``, ``dram``...). Two reads within one clock tick repeat the last power.
    """

    name: ClassVar[str] = "rapl"

    def __init__(self, settings: Mapping[str, Any], *, root: str | Path = "/",
                 clock: Callable[[], int] = now_ns) -> None:
        super().__init__(settings)
        self.root = Path(root)
        self.zone = str(self.settings.get("zone") or "intel-rapl:0")
        self.clock = clock
        self.range_uj = 0
        self.energy_path = ""
        self._fd: int | None = None
        self._last_raw = 0
        self._total_uj = 0
        self._last_t = 0
        self._last_total = 0
        self._last_mw = 0.0

    @property
    def max_rate_hz(self) -> float:
        return max_rate_hz(self.name, self.settings)

    def open(self) -> None:
        zone_dir = self.root / POWERCAP / self.zone
        if not zone_dir.is_dir():
            found = ", ".join(_zones(self.root)) or "none"
            raise MeterError(f"no powercap zone {self.zone!r} at {zone_dir}; zones found: {found} "
                             "(expected an x86 board with the intel_rapl_msr module loaded)")
        self.energy_path = str(zone_dir / RAPL_ENERGY)
        fix = RAPL_PERMISSION_FIX.format(path=self.energy_path)
        range_path = str(zone_dir / RAPL_RANGE)
        try:
            self.range_uj = int(_read_text_once(range_path, fix))
        except ValueError:
            self.range_uj = 0
        if self.range_uj <= 0:
            raise MeterError(f"{range_path}: expected a positive integer range in uJ (the counter's wrap point)")
        zone_name = zone_dir / RAPL_NAME
        self.rail = _read_text_once(str(zone_name), fix) if zone_name.exists() else self.zone
        self.close()
        self._fd = _open_or_fail(self.energy_path, fix)
        try:
            self._last_raw = self._total_uj = self._raw()
        except BaseException:
            self.close()
            raise
        self._last_t, self._last_total, self._last_mw = self.clock(), self._total_uj, 0.0

    def _raw(self) -> int:
        if self._fd is None:
            raise MeterError("rapl meter read before open; expected open() first")
        return _pread_int(self._fd, self.energy_path)

    def energy_uj(self) -> float:
        raw = self._raw()
        self._total_uj += unwrap_energy(self._last_raw, raw, self.range_uj)
        self._last_raw = raw
        return float(self._total_uj)

    def read(self) -> PowerSample:
        total = int(self.energy_uj())
        t = self.clock()
        dt = t - self._last_t
        if dt > 0:
            # uJ / ns = 1e3 W = 1e6 mW
            self._last_mw = (total - self._last_total) * 1e6 / dt
            self._last_t, self._last_total = t, total
        return PowerSample(t_ns=t, rail=self.rail, mv=0.0, ma=0.0, mw=self._last_mw)

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            _close_all([fd])

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(zone=self.zone, counter="energy_uj")
        return out


# -- Raspberry Pi 5 PMIC -------------------------------------------------------------------------

_PMIC_LINE = re.compile(r"^\s*(?P<rail>\S+?)_(?P<kind>[AV])\s+(?:current|volt)\(\d+\)="
                        r"(?P<value>[-+0-9.eEnaNinf]+)(?P<unit>[AV])\s*$")


def pmic_argv(vcgencmd: Sequence[str]) -> list[str]:
    """The command that prints every PMIC ADC channel."""
    return [*vcgencmd, "pmic_read_adc"]


def parse_pmic_adc(text: str) -> dict[str, tuple[float, float]]:
    """``{rail: (volts, amps)}`` for every rail of ``vcgencmd pmic_read_adc`` output that has both
    a ``<rail>_V volt(i)=...V`` and a ``<rail>_A current(j)=...A`` line (paired by name: the
    indices differ). Rails with only one (``EXT5V_V``, ``BATT_V``) and non-finite values are left out."""
    volts: dict[str, float] = {}
    amps: dict[str, float] = {}
    for line in text.splitlines():
        m = _PMIC_LINE.match(line)
        if not m or m["kind"] != m["unit"]:
            continue
        try:
            value = float(m["value"])
        except ValueError:
            continue
        if math.isfinite(value):
            (amps if m["kind"] == "A" else volts)[m["rail"]] = value
    return {rail: (volts[rail], amps[rail]) for rail in volts if rail in amps}


def _run(argv: Sequence[str], timeout_s: float) -> str:
    """The one runner: ``argv``'s stdout, or ``MeterError`` saying why there is none."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise MeterError(f"{argv[0]} not found (ran {' '.join(argv)}); expected a Raspberry Pi 5 with the "
                         "firmware tools (raspi-utils / libraspberrypi-bin) installed") from None
    except PermissionError:
        raise MeterError(f"{argv[0]} is not executable (ran {' '.join(argv)})") from None
    except subprocess.TimeoutExpired:
        raise MeterError(f"{' '.join(argv)} gave no answer within {timeout_s:g} s") from None
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise MeterError(f"{' '.join(argv)} exited {done.returncode}: {why[-1] if why else 'no output'} "
                         "(expected a Raspberry Pi 5; the user needs access to /dev/vcio, e.g. the video group)")
    return done.stdout


class Pi5PmicMeter(PowerMeter):
    """The Raspberry Pi 5 PMIC's rails through ``vcgencmd pmic_read_adc`` (slow: one call reads
    every ADC channel, ~10 Hz at most).

    ``settings["rail"]``: ``total`` (default) is the sum of V x I over every rail that has both a
    voltage and a current; it has no one voltage, so its ``mv`` and ``ma`` are 0.0. It is what
    the PMIC's rails deliver, not the 5 V input: USB peripherals and regulator losses are not in
    it. A named rail (``VDD_CORE``, ``DDR_VDD2``..., with or without ``_A``/``_V``) gives that
    rail's V, I and V x I. ``EXT5V`` has a voltage but no current, so it cannot be a power rail.
    """

    name: ClassVar[str] = "pi5-pmic"

    def __init__(self, settings: Mapping[str, Any], *, vcgencmd: Sequence[str] = ("vcgencmd",),
                 timeout_s: float = PMIC_TIMEOUT_S) -> None:
        super().__init__(settings)
        self.vcgencmd = tuple(vcgencmd)
        self.timeout_s = timeout_s
        self.wanted = re.sub(r"_[AV]$", "", str(self.settings.get("rail") or "total"), flags=re.I)
        self.rail = "total" if self.wanted.lower() == "total" else self.wanted
        self._opened = False

    @property
    def max_rate_hz(self) -> float:
        return max_rate_hz(self.name, self.settings)

    def _rails(self) -> dict[str, tuple[float, float]]:
        argv = pmic_argv(self.vcgencmd)
        text = _run(argv, self.timeout_s)
        rails = parse_pmic_adc(text)
        if not rails:
            first = text.strip().splitlines()[:1]
            raise MeterError(f"{' '.join(argv)} printed no rail with both a volt and a current line "
                             f"(got {first[0][:80] if first else 'nothing'!r}); expected lines like "
                             "'VDD_CORE_A current(7)=0.75A' and 'VDD_CORE_V volt(15)=0.72V'")
        return rails

    def _match(self, rails: Mapping[str, tuple[float, float]]) -> str | None:
        by_name = {r.upper(): r for r in rails}
        return by_name.get(self.wanted.upper())

    def open(self) -> None:
        rails = self._rails()
        if self.rail != "total":
            found = self._match(rails)
            if found is None:
                raise MeterError(f"no PMIC rail {self.wanted!r} with both a voltage and a current; expected "
                                 f"total or one of {', '.join(sorted(rails))}")
            self.rail = found
        self._opened = True

    def read(self) -> PowerSample:
        if not self._opened:
            raise MeterError("pi5-pmic meter read before open; expected open() first")
        t = now_ns()
        rails = self._rails()
        if self.rail == "total":
            mw = sum(v * a for v, a in rails.values()) * 1000.0
            return PowerSample(t_ns=t, rail="total", mv=0.0, ma=0.0, mw=mw)
        if self.rail not in rails:
            raise MeterError(f"PMIC rail {self.rail!r} vanished from {' '.join(pmic_argv(self.vcgencmd))}")
        v, a = rails[self.rail]
        return PowerSample(t_ns=t, rail=self.rail, mv=v * 1000.0, ma=a * 1000.0, mw=v * a * 1000.0)

    def close(self) -> None:
        self._opened = False

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["note"] = ("slow: each reading runs vcgencmd pmic_read_adc (~10 Hz at most); "
                       + ("the sum of the PMIC's rails, not the 5 V input" if self.rail == "total"
                          else f"the PMIC's {self.rail} rail"))
        return out
