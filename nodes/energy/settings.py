"""Which settings each power-meter backend takes, their checks and defaults, and the one rule
for how fast each can be read.

Holds, per backend of ``nodes.energy.METERS``, every setting a board's ``energy:`` mapping in
inventory.yaml may write (a file writes ``energy: {meter: ina226, address: 0x41, ...}``, or only
the name: ``energy: model``), what each must be and its default; ``HARNESS_KEYS`` that only the
harness fills in (a test's fake bus or sysfs root, the model's board kind). ``check_meter_settings``
is the one check: the inventory reader on the laptop turns its ``MeterSettingError`` into a
file:line:key error (``key`` and ``detail``), and the agent applies it again to what its config
carries. ``max_rate_hz`` is the one rule for how fast a configured meter yields fresh readings
(the INA chips' conversion time x averaging over their two channels; the Pi 5 PMIC's ~10 Hz);
a ``rate_hz`` above it is refused with the figure.

Conversion times and averaging counts are the datasheets': INA219 (SBOS448G, table 5: ADC
resolution/averaging, 532 us .. 68.10 ms), INA226 (SBOS547A, 7.6.1: CT 140 us .. 8.244 ms, AVG
1 .. 1024) and INA260 (SBOS656C, same tables). It is pure: no I/O, no smbus2, never ``testbed``.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from nodes.errors import NodeError

__all__ = ["MeterSettingError", "SCHEMAS", "HARNESS_KEYS", "INA_CONVERSION_US", "INA_AVERAGING",
           "INA219_ADC_SAMPLES", "INA219_CONVERSION_US", "check_meter_settings", "max_rate_hz", "conversion_cycle_us",
           "DEFAULT_RATE_HZ", "MAX_RATE_HZ"]

INA_CONVERSION_US = (140, 204, 332, 588, 1100, 2116, 4156, 8244)   # INA226/INA260 CT field, codes 0..7
INA_AVERAGING = (1, 4, 16, 64, 128, 256, 512, 1024)                # INA226/INA260 AVG field, codes 0..7
INA219_ADC_SAMPLES = (1, 2, 4, 8, 16, 32, 64, 128)                 # 12-bit, averaged over N
INA219_CONVERSION_US = (532, 1060, 2130, 4260, 8510, 17020, 34050, 68100)
PI5_PMIC_RATE_HZ = 10.0       # one `vcgencmd pmic_read_adc` takes ~0.1 s (it reads every ADC channel)
DEFAULT_RATE_HZ = 100.0
MAX_RATE_HZ = 2000.0          # the sampler's own ceiling, whatever the device


class MeterSettingError(NodeError):
    """A meter setting that is not what it must be: ``key`` (None: the mapping as a whole) and
    ``detail`` (what was expected, in the words of a file error). Configuration: exit 2."""

    exit_code = 2

    def __init__(self, meter: str, key: str | None, detail: str) -> None:
        super().__init__(f"energy meter {meter}: " + (f"{key}: " if key else "") + detail)
        self.meter, self.key, self.detail = meter, key, detail


class _Invalid(Exception):
    pass


Check = Callable[[Any], Any]


@dataclass(frozen=True)
class Setting:
    """One setting: its check (returns the value, raises ``_Invalid``), what it must be, its default."""

    check: Check
    expected: str
    default: Any = None


def _number(expected: str, *, lo: float, hi: float = math.inf, lo_open: bool = True) -> Check:
    def check(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise _Invalid(expected)
        if (v <= lo if lo_open else v < lo) or v > hi:
            raise _Invalid(expected)
        return float(v)
    return check


def _int(expected: str, *, lo: int, hi: int) -> Check:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Invalid(expected)
        return v
    return check


def _one_of(options: tuple[Any, ...], expected: str) -> Check:
    def check(v: Any) -> Any:
        if isinstance(v, bool) or v not in options:
            raise _Invalid(expected)
        return v
    return check


def _text(expected: str) -> Check:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not v.strip() or any(c in v for c in "\n\x00"):
            raise _Invalid(expected)
        return v
    return check


def _rate(default: float) -> Setting:
    return Setting(_number(f"samples per second, > 0 and <= {MAX_RATE_HZ:g}", lo=0, hi=MAX_RATE_HZ),
                   f"samples per second, > 0 and <= {MAX_RATE_HZ:g}", default)


def _listed(values: tuple[int, ...]) -> str:
    return "one of " + ", ".join(str(v) for v in values)


_BUS = Setting(_int("an I2C bus number, 0 to 255 (/dev/i2c-N)", lo=0, hi=255), "an I2C bus number", 1)
_ADDRESS = Setting(_int("a 7-bit I2C address from 0x40 to 0x4F (A0/A1 strapping)", lo=0x40, hi=0x4F),
                   "an I2C address from 0x40 to 0x4F", 0x40)
_SHUNT = Setting(_number("the shunt resistor in ohms, > 0 and <= 10", lo=0, hi=10), "ohms > 0", 0.1)
# Unset, the conversion time and averaging (INA219: adc_samples) are fitted to rate_hz (_fit_conversion).
_CT = Setting(_one_of(INA_CONVERSION_US, "a conversion time in us: " + _listed(INA_CONVERSION_US)),
              "a conversion time in us", None)
_AVG = Setting(_one_of(INA_AVERAGING, "an averaging count: " + _listed(INA_AVERAGING)), "an averaging count", None)
_RAIL = Setting(_text("a rail label"), "a rail label", None)
_WATTS = "watts, >= 0 and <= 1000"


def _watts(default: float | None) -> Setting:
    return Setting(_number(_WATTS, lo=0, hi=1000, lo_open=False), _WATTS, default)


SCHEMAS: Mapping[str, Mapping[str, Setting]] = MappingProxyType({
    "ina219": MappingProxyType({
        "bus": _BUS, "address": _ADDRESS, "shunt_ohms": _SHUNT,
        "max_current_a": Setting(_number("the largest current expected, in A, > 0 and <= 100", lo=0, hi=100),
                                 "amperes > 0", 3.2),
        "bus_range_v": Setting(_one_of((16, 32), "16 or 32 (the bus voltage range)"), "16 or 32", 32),
        "adc_samples": Setting(_one_of(INA219_ADC_SAMPLES, "12-bit samples averaged per conversion: "
                                       + _listed(INA219_ADC_SAMPLES)), "an ADC sample count", None),
        "rail": _RAIL, "rate_hz": _rate(DEFAULT_RATE_HZ)}),
    "ina226": MappingProxyType({
        "bus": _BUS, "address": _ADDRESS, "shunt_ohms": _SHUNT,
        "max_current_a": Setting(_number("the largest current expected, in A, > 0 and <= 100", lo=0, hi=100),
                                 "amperes > 0", 0.8),
        "conversion_us": _CT, "averaging": _AVG, "rail": _RAIL, "rate_hz": _rate(DEFAULT_RATE_HZ)}),
    "ina260": MappingProxyType({
        "bus": _BUS, "address": _ADDRESS, "conversion_us": _CT, "averaging": _AVG, "rail": _RAIL,
        "rate_hz": _rate(DEFAULT_RATE_HZ)}),
    "jetson": MappingProxyType({
        "rail": Setting(_text("an INA3221 rail label such as VDD_IN"), "a rail label", "VDD_IN"),
        "rate_hz": _rate(DEFAULT_RATE_HZ)}),
    "rapl": MappingProxyType({
        "zone": Setting(_text("a powercap zone such as intel-rapl:0"), "a powercap zone", "intel-rapl:0"),
        "rate_hz": _rate(DEFAULT_RATE_HZ)}),
    "pi5-pmic": MappingProxyType({
        "rail": Setting(_text("a PMIC rail such as VDD_CORE, or total (the sum of every rail)"), "a rail", "total"),
        "rate_hz": _rate(PI5_PMIC_RATE_HZ)}),
    "model": MappingProxyType({
        "active_w": _watts(None), "idle_w": _watts(None), "radio_w": _watts(None),
        "rate_hz": _rate(50.0)}),
})

# Given to a backend's constructor by the harness as keywords, never by a file: a test's fake bus
# or sysfs root, the vcgencmd to run, the model's board kind, link profile and clocks.
HARNESS_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "ina219": ("smbus",), "ina226": ("smbus",), "ina260": ("smbus",), "jetson": ("root",), "rapl": ("root",),
    "pi5-pmic": ("vcgencmd",), "model": ("kind", "radio"),
})


def check_meter_settings(meter: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` checked against ``meter``'s schema, defaults filled in; ``MeterSettingError``
    names the first key that is unknown or wrong."""
    if meter not in SCHEMAS:
        raise MeterSettingError(meter, None, f"unknown meter; expected one of {', '.join(sorted(SCHEMAS))}")
    schema = SCHEMAS[meter]
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key not in schema:
            raise MeterSettingError(meter, str(key), f"unknown setting; expected one of {', '.join(schema)}")
        if value is None and schema[key].default is None:   # unset: the backend decides (the model's table)
            out[key] = None
            continue
        try:
            out[key] = schema[key].check(value)
        except _Invalid as exc:
            raise MeterSettingError(meter, key, f"expected {exc}; got {value!r}") from None
    _fit_conversion(meter, out, rate_hz=float(out.get("rate_hz") or schema["rate_hz"].default))
    for key, s in schema.items():
        out.setdefault(key, s.default)
    top = max_rate_hz(meter, out)
    if out["rate_hz"] > top:
        raise MeterSettingError(meter, "rate_hz", f"expected at most {top:g} (this meter's fresh readings per "
                                                  f"second as configured); got {out['rate_hz']:g}")
    return out


def _fit_conversion(meter: str, out: dict[str, Any], *, rate_hz: float) -> None:
    """Where a file leaves an INA chip's conversion time or averaging unset, choose them so that
    one conversion cycle fills as much of the reading period (1/rate_hz) as fits: a reading is then
    the mean of nearly its whole period, not of its last few hundred microseconds (a chip that
    converts faster than it is read leaves most of each period unmeasured)."""
    period_us = 1e6 / rate_hz
    if meter == "ina219" and out.get("adc_samples") is None:
        fits = [n for n, c in zip(INA219_ADC_SAMPLES, INA219_CONVERSION_US) if 2 * c <= period_us]
        out["adc_samples"] = fits[-1] if fits else INA219_ADC_SAMPLES[0]
    elif meter in ("ina226", "ina260") and (out.get("conversion_us") is None or out.get("averaging") is None):
        cts = [out["conversion_us"]] if out.get("conversion_us") is not None else list(INA_CONVERSION_US)
        avgs = [out["averaging"]] if out.get("averaging") is not None else list(INA_AVERAGING)
        pairs = [(2 * ct * avg, ct, avg) for ct in cts for avg in avgs]
        fitting = [p for p in pairs if p[0] <= period_us] or [min(pairs)]
        _cycle, out["conversion_us"], out["averaging"] = max(fitting)


def conversion_cycle_us(meter: str, settings: Mapping[str, Any]) -> float | None:
    """One full conversion cycle of an INA chip as ``settings`` configure it: shunt and bus, each
    ``averaging`` times (None for a meter without one)."""
    if meter in ("ina226", "ina260"):
        return 2.0 * int(settings.get("conversion_us", 1100)) * int(settings.get("averaging", 1))
    if meter == "ina219":
        return 2.0 * INA219_CONVERSION_US[INA219_ADC_SAMPLES.index(int(settings.get("adc_samples", 1)))]
    return None


def max_rate_hz(meter: str, settings: Mapping[str, Any]) -> float:
    """Fresh readings per second of ``meter`` as ``settings`` configure it (one per conversion
    cycle of an INA chip, averaging included)."""
    cycle = conversion_cycle_us(meter, settings)
    if cycle is not None:
        return min(MAX_RATE_HZ, 1e6 / cycle)
    if meter == "pi5-pmic":
        return PI5_PMIC_RATE_HZ
    return MAX_RATE_HZ
