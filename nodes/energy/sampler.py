"""The board's power sampler: one thread reading one meter at its configured rate.

Holds ``Sampler``, a context manager that opens nothing itself (it is given an open
``PowerMeter``) and runs a daemon thread that reads the meter on an absolute schedule (no drift:
reading k is due at start + k/rate, and a late reading is taken at once without a burst to catch
up). Readings go to two places: ``drain()`` hands the new ones out in batches (the agent sends
each batch to the laptop in one MQTT message, never one message per reading), and a rolling
history of the last ``keep_s`` seconds serves ``between()`` for per-inference attribution.
A reading that fails is counted (``errors``) and skipped; after ``MAX_CONSECUTIVE_ERRORS`` in a
row the thread stops and ``failure`` says why. Stats say what rate was achieved. It never
imports ``testbed``.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from nodes.energy import MeterError, PowerMeter, PowerSample, now_ns

__all__ = ["Sampler", "MAX_CONSECUTIVE_ERRORS"]

MAX_CONSECUTIVE_ERRORS = 50
SHORT_PERIOD_S = 0.02      # at or below this period the sampler sleeps instead of waiting on an event
MAX_PENDING = 200_000        # readings waiting for drain(); older ones are counted as lost beyond it


class Sampler:
    """Reads ``meter`` every ``1/rate_hz`` s on its own thread; ``drain`` and ``between`` read
    what it took. Use as a context manager (start, then stop and join)."""

    def __init__(self, meter: PowerMeter, *, rate_hz: float, keep_s: float = 30.0) -> None:
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0; got {rate_hz!r}")
        self.meter = meter
        self.rate_hz = float(rate_hz)
        self.period_ns = int(round(1e9 / self.rate_hz))
        self._keep_ns = int(keep_s * 1e9)
        self._lock = threading.Lock()
        self._taken = threading.Condition(self._lock)
        self._pending: list[PowerSample] = []
        self._history: deque[PowerSample] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"sampler-{meter.name}", daemon=True)
        self.samples = 0
        self.errors = 0
        self.lost = 0
        self.failure: str | None = None
        self._first_ns: int | None = None
        self._last_ns: int | None = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        due = now_ns()
        failed_in_a_row = 0
        while not self._stop.is_set():
            try:
                sample = self.meter.read()
            except (MeterError, OSError, ValueError) as exc:
                self.errors += 1
                failed_in_a_row += 1
                if failed_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    self.failure = f"{self.meter.name}: {failed_in_a_row} readings failed in a row; last: {exc}"
                    return
            else:
                failed_in_a_row = 0
                self._keep(sample)
            due += self.period_ns
            now = now_ns()
            if due < now:            # late (a stalled thread): the next reading now, no burst
                due = now
            self._pause((due - now) / 1e9)

    def _pause(self, seconds: float) -> None:
        """Wait until the next reading: a plain sleep for short periods (a timed Event.wait costs
        more CPU per wake: docs/results/energy.md), an interruptible wait for long ones; either way
        ``stop`` is seen within one period or SHORT_PERIOD_S."""
        if self.period_ns <= SHORT_PERIOD_S * 1e9:
            time.sleep(seconds)
        else:
            self._stop.wait(seconds)

    def _keep(self, sample: PowerSample) -> None:
        with self._lock:
            self.samples += 1
            if self._first_ns is None:
                self._first_ns = sample.t_ns
            self._last_ns = sample.t_ns
            if len(self._pending) >= MAX_PENDING:
                self._pending.pop(0)
                self.lost += 1
            self._pending.append(sample)
            self._history.append(sample)
            horizon = sample.t_ns - self._keep_ns
            while self._history and self._history[0].t_ns < horizon:
                self._history.popleft()
            self._taken.notify_all()

    def wait_for(self, count: int, *, timeout: float) -> bool:
        """Block until ``count`` readings in all were taken (False at ``timeout`` or if the thread ended)."""
        with self._taken:
            return self._taken.wait_for(lambda: self.samples >= count or not self._thread.is_alive(),
                                        timeout=timeout) and self.samples >= count

    # -- readers -----------------------------------------------------------------------------------
    def drain(self) -> list[PowerSample]:
        """Every reading taken since the last drain, oldest first."""
        with self._lock:
            out, self._pending = self._pending, []
        return out

    def between(self, start_ns: int, end_ns: int) -> list[PowerSample]:
        """The kept readings with ``start_ns <= t_ns <= end_ns``, oldest first."""
        with self._lock:
            return [s for s in self._history if start_ns <= s.t_ns <= end_ns]

    def latest_ns(self) -> int | None:
        """When the newest reading was taken (None: none yet)."""
        with self._lock:
            return self._last_ns

    def stats(self) -> dict[str, Any]:
        """Readings, failures, lost (beyond ``MAX_PENDING`` undrained) and the rate achieved."""
        with self._lock:
            span = (self._last_ns - self._first_ns) / 1e9 if self._first_ns is not None and self._last_ns else 0.0
            achieved = (self.samples - 1) / span if span > 0 else 0.0
            return {"samples": self.samples, "errors": self.errors, "lost": self.lost, "rate_hz": self.rate_hz,
                    "achieved_hz": round(achieved, 2), "failure": self.failure}
