"""Power meters on a board: one facade (``PowerMeter``), its backends by name, and what they yield.

Holds ``PowerSample`` (one reading: the board's ``time.monotonic_ns()``, rail, mV, mA, mW),
``PowerMeter`` (the ABC every backend implements: ``open`` identifies the device and fails in one
line when it is not there, ``read`` takes one reading, ``close`` undoes ``open``; a context
manager), ``MeterError`` and ``METERS``, the registry that maps an inventory's ``energy:`` backend
name to its class, imported lazily so a board loads only the driver it uses (smbus2 only for the
INA chips). ``open_meter`` builds and opens one from its checked settings
(``nodes.energy.settings``).

Every reading is stamped with the same monotonic clock the agent stamps inferences with, so a
board's energy needs no cross-board alignment. Backends:

- ``ina219``, ``ina226``, ``ina260``: the TI current/power monitors over I2C (``nodes.energy.ina``);
- ``jetson``: an INA3221 rail from the kernel's hwmon (JetPack 5/6) or iio (JetPack 4) files,
  ``rapl``: an x86 package's ``energy_uj`` counter, ``pi5-pmic``: the Raspberry Pi 5 PMIC's ADCs
  through ``vcgencmd`` (``nodes.energy.sysfs``);
- ``model``: no meter, the process's own CPU time and the link's airtime times a power table
  (``nodes.energy.model``); everything it yields says ``modelled``.

A meter that integrates in hardware (RAPL's counter, the model) also offers ``energy_uj()``, a
cumulative counter the attribution reads at an inference's edges instead of integrating samples.
This module never imports ``testbed`` and does no I/O itself.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from nodes.errors import NodeError
from nodes.registry import Registry

__all__ = ["PowerSample", "PowerMeter", "MeterError", "METERS", "METER_NAMES", "open_meter", "now_ns"]


class MeterError(NodeError):
    """A power meter is absent, is not the chip or files named, or cannot be read; the message says
    which device or file and what was expected (configuration: exit 2)."""

    exit_code = 2


def now_ns() -> int:
    """The clock every reading and every inference window on a board is stamped with."""
    return time.monotonic_ns()


@dataclass(frozen=True, slots=True)
class PowerSample:
    """One reading of one rail: ``t_ns`` on the board's monotonic clock (``now_ns``), volts in mV,
    current in mA, power in mW (the meter's own power figure where it has one, else mV x mA)."""

    t_ns: int
    rail: str
    mv: float
    ma: float
    mw: float

    def row(self) -> tuple[int, str, float, float, float]:
        """The CSV row: ``t_ns, rail, mV, mA, mW``."""
        return (self.t_ns, self.rail, round(self.mv, 3), round(self.ma, 3), round(self.mw, 3))


class PowerMeter(ABC):
    """One power meter on one board. ``settings`` are the backend's checked settings
    (``nodes.energy.settings.check_meter_settings``); ``open`` before ``read``.

    ``name`` is the backend's registry name; ``modelled`` is True only for the model, and every
    figure made from it says so; ``max_rate_hz`` is the fastest the device gives a new reading
    (a faster sampler only repeats readings); ``rail`` names what is measured.
    """

    name: ClassVar[str]
    modelled: ClassVar[bool] = False

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)
        self.rail: str = str(self.settings.get("rail") or self.name)

    @property
    @abstractmethod
    def max_rate_hz(self) -> float:
        """The fastest this meter yields fresh readings, as configured."""

    @abstractmethod
    def open(self) -> None:
        """Find and identify the device (configure it where it has registers); ``MeterError`` if
        it is absent or not what the settings name."""

    @abstractmethod
    def read(self) -> PowerSample:
        """One reading now, stamped with ``now_ns()``; ``MeterError`` if the device stops answering."""

    def close(self) -> None:
        """Undo ``open`` (release the bus or files)."""

    def content_lag_ns(self, period_ns: int) -> int:
        """How much earlier than the attribution's rule assumes a reading's content lies, for a
        sampler reading every ``period_ns`` (the rule takes a reading stamped t as the mean power
        over (t - period, t]). 0 unless the device reports an older conversion (the INA chips)."""
        return 0

    def energy_uj(self) -> float | None:
        """A cumulative energy counter in uJ where the meter has one (None: integrate samples)."""
        return None

    def describe(self) -> dict[str, Any]:
        """What every energy figure from this meter says about where it came from."""
        return {"meter": self.name, "rail": self.rail, "modelled": self.modelled,
                "max_rate_hz": round(self.max_rate_hz, 3)}

    def __enter__(self) -> PowerMeter:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


METERS: Registry[PowerMeter] = Registry("power meter", error=MeterError)
for _name, _target in (("ina219", "nodes.energy.ina:Ina219"), ("ina226", "nodes.energy.ina:Ina226"),
                       ("ina260", "nodes.energy.ina:Ina260"), ("jetson", "nodes.energy.sysfs:JetsonMeter"),
                       ("rapl", "nodes.energy.sysfs:RaplMeter"), ("pi5-pmic", "nodes.energy.sysfs:Pi5PmicMeter"),
                       ("model", "nodes.energy.model:ModelMeter")):
    METERS.register_lazy(_name, _target)
METER_NAMES: tuple[str, ...] = tuple(METERS.names())


def open_meter(name: str, settings: Mapping[str, Any], **harness: Any) -> PowerMeter:
    """Build backend ``name`` with ``settings`` (plus what the harness supplies: a test's bus or
    sysfs root, the model's CPU and airtime sources) and open it."""
    meter = METERS.get(name)(settings, **harness)
    meter.open()
    return meter
