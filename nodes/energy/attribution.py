"""Energy per inference from a board's power readings, on the board's own monotonic clock.

Holds the one rule for turning readings into energy over a window, and the bookkeeping of one
board's inferences:

- ``window_energy``: energy over ``[start_ns, end_ns]``. Each reading is taken as the mean power
  since the reading before it (what an averaging ADC's conversion, RAPL's counter delta and the
  model meter all report), so readings tile time as steps; the window's energy is the overlap of
  those steps with it (exact for a window made of whole reading intervals). The issue's
  "trapezoidal integration" of point samples is the same integral of the readings' step
  function, without its half-step lag. A window shorter than ``MIN_PERIODS`` reading periods gets
  the mean power over the surrounding ``MIN_PERIODS`` periods on each side times its duration,
  and is ``flagged``. A meter with an energy counter (RAPL, the model) is read at the window's
  edges instead (``counter``), exact to the counter's resolution.
- ``IdleBaseline``: the mean power before the first trigger; ``active`` energy is the window's
  total minus ``idle_w`` x its duration (never below 0).
- ``Attributor``: an inference's compute and transmit windows go in; once readings cover a window
  (the newest reading is past its end), ``ready`` hands out its ``InferenceEnergy``. A meter whose
  readings report an older conversion (an INA chip's registers hold its last completed cycle) has
  its ``content_lag_ns``: the window's readings are looked for that much later.

It is pure arithmetic over readings (numpy only) and never imports ``testbed``.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nodes.energy import PowerSample

__all__ = ["MIN_PERIODS", "WindowEnergy", "window_energy", "IdleBaseline", "InferenceEnergy", "Attributor", "Mark"]

Mark = tuple[int, "float | None"]   # a window's edge: now_ns() and, for a counter meter, its reading in uJ
MIN_PERIODS = 3   # a window shorter than this many reading periods gets the surrounding mean power


@dataclass(frozen=True)
class WindowEnergy:
    """Energy over one window: ``mj`` in total, the window's ``mean_w``, ``flagged`` when it was
    shorter than ``MIN_PERIODS`` periods, and the ``method`` used."""

    mj: float
    mean_w: float
    flagged: bool
    method: str   # "steps" | "surrounding" | "counter"


def _step_integral_mj(t_ns: np.ndarray, mw: np.ndarray, start_ns: int, end_ns: int, first_span_ns: int) -> float:
    """Integral of the readings' steps over [start, end]: reading i holds mw[i] over (t[i-1], t[i]]
    (reading 0 over the ``first_span_ns`` before it); time outside every step counts at the nearest
    reading's power."""
    if end_ns <= start_ns:
        return 0.0
    left = np.empty_like(t_ns)
    left[0] = t_ns[0] - first_span_ns
    left[1:] = t_ns[:-1]
    lo = np.maximum(left, start_ns)
    hi = np.minimum(t_ns, end_ns)
    total = float(np.sum(np.clip(hi - lo, 0, None) * mw))
    if start_ns < left[0]:                          # before the first step: its power
        total += (min(left[0], end_ns) - start_ns) * float(mw[0])
    if end_ns > t_ns[-1]:                           # after the last reading: its power
        total += (end_ns - max(t_ns[-1], start_ns)) * float(mw[-1])
    return total / 1e9   # mW x ns -> mJ


def window_energy(samples: Sequence[PowerSample], start_ns: int, end_ns: int, *, period_ns: int,
                  min_periods: int = MIN_PERIODS) -> WindowEnergy:
    """Energy over ``[start_ns, end_ns]`` from ``samples`` (oldest first, taken every ``period_ns``)."""
    if not samples:
        raise ValueError("no power readings around the window")
    t = np.fromiter((s.t_ns for s in samples), dtype=np.int64, count=len(samples))
    mw = np.fromiter((s.mw for s in samples), dtype=np.float64, count=len(samples))
    duration = max(end_ns - start_ns, 0)
    if duration >= min_periods * period_ns:
        mj = _step_integral_mj(t, mw, start_ns, end_ns, period_ns)
        return WindowEnergy(mj=mj, mean_w=mj / (duration / 1e9) / 1e3 if duration else 0.0, flagged=False,
                            method="steps")
    pad = min_periods * period_ns
    a, b = start_ns - pad, end_ns + pad
    mean_mw = _step_integral_mj(t, mw, a, b, period_ns) / ((b - a) / 1e9)
    return WindowEnergy(mj=mean_mw * duration / 1e9, mean_w=mean_mw / 1e3, flagged=True, method="surrounding")


@dataclass
class IdleBaseline:
    """The mean power before the first trigger (None until measured)."""

    idle_w: float | None = None

    def measure(self, samples: Sequence[PowerSample]) -> float | None:
        """Set the baseline from the readings taken before the first trigger (their time-weighted mean)."""
        if len(samples) >= 2:
            t0, t1 = samples[0].t_ns, samples[-1].t_ns
            mj = window_energy(samples, t0, t1, period_ns=max((t1 - t0) // (len(samples) - 1), 1), min_periods=0).mj
            self.idle_w = mj / ((t1 - t0) / 1e9) / 1e3
        elif samples:
            self.idle_w = samples[0].mw / 1e3
        return self.idle_w


@dataclass(frozen=True)
class InferenceEnergy:
    """One inference's energy on one board: its compute and transmit windows' total, the active
    part (total minus the idle baseline over the same time) and whether a window was flagged."""

    sample: int
    compute_mj: float
    transmit_mj: float
    active_mj: float
    total_mj: float
    flagged: bool
    method: str
    modelled: bool = False

    def fields(self) -> dict[str, Any]:
        """What a ``sample`` or ``energy`` telemetry carries (``energy_modelled``: from the model meter)."""
        return {"energy_mj": round(self.total_mj, 4), "active_mj": round(self.active_mj, 4),
                "compute_mj": round(self.compute_mj, 4), "transmit_mj": round(self.transmit_mj, 4),
                "energy_flagged": self.flagged, "energy_modelled": self.modelled}


@dataclass
class _Pending:
    sample: int
    windows: list[tuple[int, int]] = field(default_factory=list)
    counter: list[float] = field(default_factory=list)   # counter meters: the energy read at each edge


class Attributor:
    """Per-inference energy on one board. ``between(a, b)`` and ``latest()`` read the sampler's
    readings; ``counter()`` (None for sampled meters) reads an energy counter in uJ."""

    def __init__(self, *, period_ns: int, between: Callable[[int, int], list[PowerSample]],
                 latest: Callable[[], int | None], counter: Callable[[], float | None] | None = None,
                 baseline: IdleBaseline | None = None, modelled: bool = False, lag_ns: int = 0) -> None:
        self.period_ns = period_ns
        self._between, self._latest, self._counter = between, latest, counter
        self.baseline = baseline or IdleBaseline()
        self.modelled = modelled
        self.lag_ns = lag_ns   # the meter's content lag: a window's readings are looked for this much later
        self._pending: dict[int, _Pending] = {}
        self._payloads: dict[int, Any] = {}
        self._token = 0
        self._lock = threading.Lock()   # add() runs on the agent's worker and the shaper's sender

    def mark(self) -> Mark:
        """A window's edge now: the time and, for a counter meter, the counter's reading."""
        from nodes.energy import now_ns
        return now_ns(), (self._counter() if self._counter is not None else None)

    def add(self, sample: int, *, compute: tuple[Mark, Mark], transmit: tuple[Mark, Mark] | None = None,
            payload: Any = None) -> None:
        """Inference ``sample``'s compute window (and transmit window, if it sent), each as two
        ``mark()``s; ``payload`` comes back with its energy from ``ready``."""
        p = _Pending(sample)
        for w in (compute, transmit):
            if w is None:
                p.windows.append((0, 0))
                p.counter.extend((0.0, 0.0))
                continue
            (a, ea), (b, eb) = w
            p.windows.append((a, b))
            p.counter.extend((ea or 0.0, eb or 0.0))
        with self._lock:
            self._token += 1
            self._pending[self._token] = p
            self._payloads[self._token] = payload

    def ready(self, *, flush: bool = False) -> list[tuple[InferenceEnergy | None, Any]]:
        """Inferences whose windows the readings now cover (all of them with ``flush``), each with
        the payload given to ``add``; the energy is None where no reading came near a window."""
        latest = self._latest()
        due = []
        with self._lock:
            for token, p in list(self._pending.items()):
                end = max(b for _a, b in p.windows)
                if self._counter is None and not flush and \
                        (latest is None or latest < end + self.lag_ns + self.period_ns):
                    continue
                due.append((self._pending.pop(token), self._payloads.pop(token)))
        return [(self._energy(p), payload) for p, payload in due]

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def _energy(self, p: _Pending) -> InferenceEnergy | None:
        parts: list[WindowEnergy] = []
        for i, (a, b) in enumerate(p.windows):
            if b <= a:
                parts.append(WindowEnergy(0.0, 0.0, False, "none"))
            elif self._counter is not None:
                mj = (p.counter[2 * i + 1] - p.counter[2 * i]) / 1e3
                parts.append(WindowEnergy(mj, mj / ((b - a) / 1e9) / 1e3, False, "counter"))
            else:   # the readings whose content is the window's: ``lag_ns`` later than it
                a2, b2, pad = a + self.lag_ns, b + self.lag_ns, (MIN_PERIODS + 1) * self.period_ns
                readings = self._between(a2 - pad, b2 + pad)
                if not readings:
                    return None
                parts.append(window_energy(readings, a2, b2, period_ns=self.period_ns))
        total = sum(w.mj for w in parts)
        busy_s = sum(max(b - a, 0) for a, b in p.windows) / 1e9
        idle_w = self.baseline.idle_w or 0.0
        methods = sorted({w.method for w in parts if w.method != "none"})
        return InferenceEnergy(sample=p.sample, compute_mj=parts[0].mj, transmit_mj=parts[1].mj,
                               active_mj=max(total - idle_w * busy_s * 1e3, 0.0), total_mj=total,
                               flagged=any(w.flagged for w in parts), method="+".join(methods) or "none",
                               modelled=self.modelled)
