"""A board's energy as its agent uses it: the meter, the sampler, the idle baseline and the
attribution of each inference, behind one context manager.

Holds ``BoardEnergy``: ``__enter__`` opens the inventory's meter (``nodes.energy.open_meter``)
and starts its ``Sampler``; ``ready_at`` and ``begin`` bound the idle baseline (the readings
between the agent's "ready" and the run's start, at most ``BASELINE_S``, before the first trigger); ``mark`` stamps an inference window's edge; ``add`` files an inference's compute and
transmit windows with what its telemetry will carry; ``ready`` hands back those whose readings
have arrived, with their ``InferenceEnergy``; ``batch`` is the next message of raw readings for
the laptop (every reading since the last batch, with the meter's description and stats);
``credit_airtime`` tells the model meter a frame went on air. ``__exit__`` stops the sampler and
closes the meter.

Tests only, never a file a user edits: ``HBC_TESTBED_METER_ROOT`` (a directory standing for ``/``
for the sysfs meters) and ``HBC_TESTBED_METER_BUS`` (``module:callable`` returning an object with
smbus2.SMBus's interface, for the INA meters) let a simulated board read a modelled device. It
never imports ``testbed``.
"""
from __future__ import annotations

import importlib
import os
from typing import Any

from nodes.agentconfig import EnergyConfig
from nodes.energy import MeterError, PowerMeter, now_ns, open_meter
from nodes.energy.attribution import Attributor, IdleBaseline, InferenceEnergy, Mark
from nodes.energy.sampler import Sampler

__all__ = ["BoardEnergy", "ROOT_ENV", "BUS_ENV", "BASELINE_S"]

ROOT_ENV = "HBC_TESTBED_METER_ROOT"
BUS_ENV = "HBC_TESTBED_METER_BUS"
BASELINE_S = 2.0     # the idle baseline: the readings of at most this long before the first trigger


def _harness(cfg: EnergyConfig, radio: str) -> dict[str, Any]:
    """The constructor keywords the harness supplies for ``cfg.meter`` (see the module)."""
    if cfg.meter == "model":
        return {"kind": cfg.kind, "radio": radio}
    if cfg.meter in ("jetson", "rapl") and os.environ.get(ROOT_ENV):
        return {"root": os.environ[ROOT_ENV]}
    if cfg.meter.startswith("ina") and os.environ.get(BUS_ENV):
        module, _, attr = os.environ[BUS_ENV].partition(":")
        try:
            return {"smbus": getattr(importlib.import_module(module), attr)()}
        except (ImportError, AttributeError) as exc:
            raise MeterError(f"{BUS_ENV}={os.environ[BUS_ENV]!r}: {exc}") from None
    return {}


class BoardEnergy:
    """The board's meter, sampled on its own thread, and the attribution of its inferences."""

    def __init__(self, cfg: EnergyConfig, *, radio: str = "ideal") -> None:
        self.cfg = cfg
        self._radio = radio
        self.meter: PowerMeter | None = None
        self.sampler: Sampler | None = None
        self.attributor: Attributor | None = None
        self.baseline = IdleBaseline()
        self._idle_from: int | None = None
        self._started: int | None = None

    def __enter__(self) -> BoardEnergy:
        self.meter = open_meter(self.cfg.meter, self.cfg.settings, **_harness(self.cfg, self._radio))
        try:
            self.sampler = Sampler(self.meter, rate_hz=float(self.cfg.settings["rate_hz"])).start()
            counter = self.meter.energy_uj if self.meter.energy_uj() is not None else None
            self.attributor = Attributor(period_ns=self.sampler.period_ns, between=self.sampler.between,
                                         latest=self.sampler.latest_ns, counter=counter, baseline=self.baseline,
                                         modelled=self.meter.modelled,
                                         lag_ns=self.meter.content_lag_ns(self.sampler.period_ns))
        except BaseException:
            self.meter.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sampler is not None:
            self.sampler.stop()
        if self.meter is not None:
            self.meter.close()

    # -- the run -------------------------------------------------------------------------------------
    def ready_at(self, *, readings: int = 2, timeout_s: float = 5.0) -> None:
        """The agent is loaded and idle from now: the idle baseline's readings start here. Waits
        until the sampler has taken ``readings`` more (a few periods), so that a start that comes
        at once still finds an idle window to measure."""
        self._idle_from = now_ns()
        if self.sampler is not None:
            self.sampler.wait_for(self.sampler.samples + readings, timeout=timeout_s)

    def begin(self) -> None:
        """The run starts now (before its first trigger): the idle baseline's readings end here.
        It is computed at the first ``ready`` so that starting never waits for a reading."""
        self._started = now_ns()

    def _measure_baseline(self) -> None:
        if self.baseline.idle_w is not None or self._started is None or self.sampler is None:
            return
        window = int(BASELINE_S * 1e9)
        since = max(self._idle_from or 0, self._started - window)
        readings = self.sampler.between(since, self._started)
        if len(readings) < 2:   # no idle window after ready (a meter slower than the start): the last BASELINE_S
            readings = self.sampler.between(self._started - window, self._started)
        self.baseline.measure(readings)

    def mark(self) -> Mark:
        assert self.attributor is not None, "mark inside the context"
        return self.attributor.mark()

    def add(self, sample: int, *, compute: tuple[Mark, Mark], transmit: tuple[Mark, Mark] | None = None,
            payload: Any = None) -> None:
        assert self.attributor is not None, "add inside the context"
        self.attributor.add(sample, compute=compute, transmit=transmit, payload=payload)

    def ready(self, *, flush: bool = False) -> list[tuple[InferenceEnergy | None, Any]]:
        """Inferences whose readings have arrived (all with ``flush``), with their payloads."""
        if self.attributor is None:
            return []
        self._measure_baseline()
        return self.attributor.ready(flush=flush)

    def credit_airtime(self, seconds: float) -> None:
        credit = getattr(self.meter, "credit_airtime", None)
        if credit is not None:
            credit(seconds)

    def batch(self) -> dict[str, Any] | None:
        """The raw readings since the last batch, as one telemetry message's fields (None: none)."""
        assert self.sampler is not None and self.meter is not None, "batch inside the context"
        self._measure_baseline()
        rows = [s.row() for s in self.sampler.drain()]
        if not rows and self.sampler.failure is None:
            return None
        return {"meter": self.meter.describe(), "rate_hz": self.sampler.rate_hz, "idle_w": self.baseline.idle_w,
                "rows": rows, "stats": self.sampler.stats()}
