"""User-space link shaping on a sender's egress.

Holds `Shaper`, pure netem-like arithmetic (the caller passes `now`), and `ShapedSender`,
a worker thread that applies a Shaper in front of any `send(bytes)` callable, releasing
each frame at its absolute delivery time, in order.

Semantics: a frame's serialisation starts at max(now, link_free_at) and takes
`profile.tx_time_s(nbytes)`; it is delivered `delay_s` after its serialisation ends.
A frame offered during an outage is dropped ("outage"); a frame that would push the
bytes not yet serialised over `queue_limit_bytes` is dropped ("queue"). Frames already
accepted when an outage begins are still delivered (first cut).

This module must not import anything from `nodes` or `testbed`, and must not sleep
relative per frame (the worker waits for absolute deadlines so it never drifts).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from linkemu.profile import LinkProfile

__all__ = ["Verdict", "ShaperCounters", "Shaper", "ShapedSender"]

DROP_OUTAGE = "outage"
DROP_QUEUE = "queue"


@dataclass(frozen=True)
class Verdict:
    """What happens to an offered frame: delivered at `deliver_at`, or dropped for `reason`."""

    deliver_at: float | None
    reason: str | None = None

    @property
    def accepted(self) -> bool:
        return self.deliver_at is not None


@dataclass
class ShaperCounters:
    frames_offered: int = 0
    bytes_offered: int = 0
    frames_delivered: int = 0
    bytes_delivered: int = 0
    dropped_outage: int = 0
    dropped_queue: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class Shaper:
    """Pure shaping arithmetic. `now` is seconds on any monotonic base; it never goes back
    (an earlier `now` than one already seen is treated as the latest seen)."""

    def __init__(self, profile: LinkProfile, *, start: float) -> None:
        self.profile = profile
        self.start = start
        self.counters = ShaperCounters()
        self._link_free_at = -math.inf
        self._now = -math.inf
        self._in_flight: deque[tuple[float, int]] = deque()  # (tx end, nbytes), FIFO
        self._in_flight_bytes = 0

    def in_outage(self, now: float) -> bool:
        t = now - self.start
        return any(o.start_s <= t < o.end_s for o in self.profile.outages)

    def queue_bytes(self, now: float) -> int:
        """Bytes accepted but not yet fully serialised at `now`."""
        self._advance(now)
        return self._in_flight_bytes

    def offer(self, nbytes: int, now: float) -> Verdict:
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        now = self._advance(now)
        self.counters.frames_offered += 1
        self.counters.bytes_offered += nbytes
        if self.in_outage(now):
            self.counters.dropped_outage += 1
            return Verdict(None, DROP_OUTAGE)
        limit = self.profile.queue_limit_bytes
        if limit is not None and self._in_flight_bytes + nbytes > limit:
            self.counters.dropped_queue += 1
            return Verdict(None, DROP_QUEUE)
        return Verdict(self._accept(nbytes, now))

    def _accept(self, nbytes: int, now: float) -> float:
        tx_start = max(now, self._link_free_at)
        self._link_free_at = tx_start + self.profile.tx_time_s(nbytes)
        if self._link_free_at > now:
            self._in_flight.append((self._link_free_at, nbytes))
            self._in_flight_bytes += nbytes
        self.counters.frames_delivered += 1
        self.counters.bytes_delivered += nbytes
        return self._link_free_at + self.profile.delay_s

    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        while self._in_flight and self._in_flight[0][0] <= self._now:
            self._in_flight_bytes -= self._in_flight.popleft()[1]
        return self._now


class ShapedSender:
    """Threaded egress: `submit` shapes a frame; a worker calls `send` at its delivery time.

    Use as a context manager (enter starts it if needed, exit closes it) or call
    `start()` / `close()`. Exceptions from `send` are counted, never fatal to the worker.
    """

    CLOSE_GRACE_S = 5.0

    def __init__(self, send: Callable[[bytes], None], profile: LinkProfile, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.profile = profile
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: deque[tuple[float, bytes]] = deque()
        self._shaper: Shaper | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._abort = False
        self.send_errors = 0
        self.last_send_error: str | None = None
        self.frames_sent = 0
        self.dropped_close = 0

    # -- lifecycle

    def start(self, *, t0: float | None = None) -> None:
        """Start the worker; the outage schedule is relative to `t0` (default: now)."""
        with self._cond:
            if self._thread is not None:
                raise RuntimeError("ShapedSender already started")
            self._shaper = Shaper(self.profile, start=self._clock() if t0 is None else t0)
            self._thread = threading.Thread(target=self._run, name=f"shaper-{self.profile.name}",
                                            daemon=True)
            self._thread.start()

    def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Send what is queued (unless drain=False), then join the worker.

        Waits at most `timeout` seconds (default: until the last queued frame is due plus
        CLOSE_GRACE_S); frames still pending then are discarded and counted as dropped_close.
        Never hangs forever, even if `send` blocks.
        """
        with self._cond:
            if self._closing and self._thread is None:
                return
            self._closing = True
            self._abort = self._abort or not drain
            if timeout is None:
                last_due = self._pending[-1][0] if self._pending else self._clock()
                timeout = max(0.0, last_due - self._clock()) + self.CLOSE_GRACE_S
            self._cond.notify_all()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            with self._cond:
                self._abort = True
                self._cond.notify_all()
            thread.join(1.0)
        with self._cond:
            self.dropped_close += len(self._pending)
            self._pending.clear()
            self._thread = None

    def __enter__(self) -> ShapedSender:
        if self._thread is None and not self._closing:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- data path

    def submit(self, frame: bytes) -> Verdict:
        """Shape one frame without blocking; accepted frames are sent in order at deliver_at."""
        with self._cond:
            if self._shaper is None or self._closing:
                raise RuntimeError("ShapedSender is not running; call start() and not close()")
            verdict = self._shaper.offer(len(frame), self._clock())
            if verdict.deliver_at is not None:
                self._pending.append((verdict.deliver_at, bytes(frame)))
                self._cond.notify_all()
            return verdict

    def snapshot(self) -> dict[str, Any]:
        """Counters, queue and outage state, for telemetry (JSON-able)."""
        with self._cond:
            shaper = self._shaper
            now = self._clock()
            counters = (shaper.counters if shaper else ShaperCounters()).as_dict()
            return {
                **counters,
                "queue_bytes": shaper.queue_bytes(now) if shaper else 0,
                "in_outage": shaper.in_outage(now) if shaper else False,
                "pending_frames": len(self._pending),
                "frames_sent": self.frames_sent,
                "send_errors": self.send_errors,
                "last_send_error": self.last_send_error,
                "dropped_close": self.dropped_close,
            }

    # -- worker

    def _next_due(self) -> bytes | None:
        """Block until the head frame is due (absolute deadline) and pop it; None = stop."""
        with self._cond:
            while True:
                if self._abort or (self._closing and not self._pending):
                    return None
                if not self._pending:
                    self._cond.wait()
                    continue
                wait = self._pending[0][0] - self._clock()
                if wait <= 0:
                    return self._pending.popleft()[1]
                self._cond.wait(timeout=wait)

    def _run(self) -> None:
        while (frame := self._next_due()) is not None:
            try:
                self._send(frame)
                self.frames_sent += 1
            except Exception as exc:  # noqa: BLE001 - a failing send must not kill the link
                self.send_errors += 1
                self.last_send_error = f"{type(exc).__name__}: {exc}"
