"""The ``model`` meter: a board's power from its own measured CPU time and its link's airtime.

Holds ``POWER_W``, the one documented table of per-kind board powers (idle and active, in watts)
and per-link-kind radio powers, which the inventory may override per board (``active_w``,
``idle_w``, ``radio_w``) and the layer-split planner reads too; and ``ModelMeter``, the backend
for simulated boards and boards without a meter. Its power at any moment is

    idle_w + (active_w - idle_w) x (the process's CPU seconds per wall second, at most 1)
           + radio_w x (the link's airtime per wall second)

so an inference's energy counts the CPU time it really took (``time.process_time``, not its wall
time) and a frame's energy its airtime on the emulated link (credited by the agent with
``credit_airtime`` as it sends the frame). It is an energy counter (``energy_uj``), read at an
inference's edges, and a sampled meter (``read``: the mean power since the previous reading) for
the power CSV and the dashboard. Everything it yields is ``modelled``.

Table values are ASSUMPTIONS from datasheets and published measurements, not measurements of
this bench: Raspberry Pi 4 ~2.7 W idle and ~5-6.4 W with all cores busy (Pi 4 power-supply
notes and published bench tests), Pi 5 ~2.7 W idle, ~7 W loaded; Pi 3 ~1.4 W / 3.7 W; Pi Zero 2 W
~0.6 W / 2 W; Jetson Nano 5 W mode ~2 W / 7.5 W, Xavier NX ~4.5 W / 12 W, Orin Nano ~4 W / 10 W;
radios: an HBC transceiver ~10 mW, a BLE SoC at 0 dBm ~20 mW, a UART line driver ~50 mW. It
never imports ``testbed``.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from nodes.energy import MeterError, PowerMeter, PowerSample, now_ns

__all__ = ["POWER_W", "RADIO_W", "ModelMeter", "board_power", "radio_power"]

# board kind -> (idle W, active W: the whole board while one core computes flat out)
POWER_W: Mapping[str, tuple[float, float]] = MappingProxyType({
    "sim": (2.7, 5.0), "rpi5": (2.7, 7.0), "rpi4": (2.7, 5.0), "rpi3": (1.4, 3.7), "rpi-zero2w": (0.6, 2.0),
    "jetson-nano": (2.0, 7.5), "jetson-xavier-nx": (4.5, 12.0), "jetson-orin-nano": (4.0, 10.0),
})
# link kind (a profile's name, or the part before its first "-") -> the sender's radio while on air, W
RADIO_W: Mapping[str, float] = MappingProxyType({"hbc": 0.01, "ble": 0.02, "uart": 0.05, "ideal": 0.0})


def board_power(kind: str) -> tuple[float, float]:
    """(idle W, active W) of board ``kind``; ``MeterError`` naming the known kinds otherwise."""
    try:
        return POWER_W[kind]
    except KeyError:
        raise MeterError(f"model meter: no power figures for board kind {kind!r}; expected one of "
                         f"{', '.join(POWER_W)}, or give idle_w and active_w under energy:") from None


def radio_power(link: str) -> float:
    """The radio power of link profile ``link`` (its name, else the part before its first "-"); 0
    for a profile of no known kind (an unnamed inline profile)."""
    return RADIO_W.get(link, RADIO_W.get(link.split("-")[0], 0.0))


class ModelMeter(PowerMeter):
    """Power modelled from this process's CPU time and the link's airtime (see the module).

    ``kind`` (the board's) picks the table row unless ``idle_w``/``active_w`` are set; ``radio``
    names the link profile for ``radio_w``'s default. ``cpu_s`` and ``clock`` are the CPU-time
    and monotonic sources (a test may drive them)."""

    name = "model"
    modelled = True

    def __init__(self, settings: Mapping[str, Any], *, kind: str = "sim", radio: str = "ideal",
                 cpu_s: Callable[[], float] = time.process_time, clock: Callable[[], int] = now_ns) -> None:
        super().__init__(settings)
        idle, active = (None, None)
        if self.settings.get("idle_w") is None or self.settings.get("active_w") is None:
            idle, active = board_power(kind)
        self.idle_w = float(self.settings["idle_w"] if self.settings.get("idle_w") is not None else idle)
        self.active_w = float(self.settings["active_w"] if self.settings.get("active_w") is not None else active)
        if self.active_w < self.idle_w:
            raise MeterError(f"model meter: active_w {self.active_w:g} is below idle_w {self.idle_w:g}; expected "
                             "active_w >= idle_w")
        rw = self.settings.get("radio_w")
        self.radio_w = float(rw) if rw is not None else radio_power(radio)
        self.rail = "model"
        self._cpu_s, self._clock = cpu_s, clock
        self._lock = threading.Lock()
        self._air_s = 0.0
        self._t0_ns = 0
        self._cpu0 = 0.0
        self._last: tuple[int, float] | None = None   # (t_ns, energy uJ) at the previous read

    @property
    def max_rate_hz(self) -> float:
        from nodes.energy.settings import max_rate_hz
        return max_rate_hz(self.name, self.settings)

    def open(self) -> None:
        self._t0_ns, self._cpu0 = self._clock(), self._cpu_s()
        self._last = (self._t0_ns, 0.0)

    def credit_airtime(self, seconds: float) -> None:
        """A frame of ``seconds`` on air was sent now (the agent calls it in the transmit window)."""
        if seconds > 0:
            with self._lock:
                self._air_s += seconds

    def energy_uj(self) -> float:
        """Modelled energy since ``open``, in uJ (monotonic)."""
        with self._lock:
            return self._energy_uj(self._clock())

    def _energy_uj(self, t_ns: int) -> float:
        wall = (t_ns - self._t0_ns) / 1e9
        cpu = min(max(self._cpu_s() - self._cpu0, 0.0), wall)
        joules = self.idle_w * wall + (self.active_w - self.idle_w) * cpu + self.radio_w * self._air_s
        return joules * 1e6

    def read(self) -> PowerSample:
        """The mean modelled power since the previous reading (mV and mA are not modelled: 0)."""
        with self._lock:
            t = self._clock()
            e = self._energy_uj(t)
            assert self._last is not None, "read before open"
            t_prev, e_prev = self._last
            self._last = (t, e)
        dt = (t - t_prev) / 1e9
        mw = (e - e_prev) / 1e3 / dt if dt > 0 else self.idle_w * 1e3
        return PowerSample(t_ns=t, rail=self.rail, mv=0.0, ma=0.0, mw=mw)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "idle_w": self.idle_w, "active_w": self.active_w, "radio_w": self.radio_w}
