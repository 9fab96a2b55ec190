"""User-space link shaping on a sender's egress: one engine for every transport.

Holds `Shaper`, pure arithmetic (the caller passes `now`), and `ShapedSender`, a worker
thread that applies a Shaper in front of any `send(frame, tag)` callable (MQTT publish, a
serial write, a BLE notification), releasing each frame at its absolute delivery time with
the tag it was submitted with, so a caller attributes each delivery to its own frame even
when the profile reorders.

Semantics (docs/linkemu.md has the long form):
- A frame is cut into PSDUs (`LinkProfile.framing`); each PSDU starts when the link is free
  (and, with connection events, when the event clock allows) and takes
  phy_time_s + (payload + overhead_bytes) * 8 / rate. A frame is delivered `delay_s` (plus
  uniform jitter in [-jitter_s, +jitter_s], never before its last PSDU ends) after its last
  PSDU; delivery order is kept unless `reorder`.
- Outages (schedule, on/off process, trace) are known in advance, so verdicts are decided
  at offer time. outage_mode drop: a frame offered while the link is down, or whose PSDU
  would be on air when it goes down, is dropped ("outage"), and the link is free again at
  the instant of the outage. hold: a PSDU waits until the link is up; one cut by an outage
  is sent again, whole, afterwards.
- A frame that would push the bytes accepted but not yet serialised over
  `queue_limit_bytes` is dropped ("queue").
- Loss is drawn per PSDU (one step of the loss chain each); a frame with a lost PSDU is
  dropped ("loss") but still occupies the link for its airtime (the sender sent it).
- Every random draw comes from RNGs seeded by the profile's seed (one stream each for
  loss, jitter and outages), so a seed replays the same verdicts for the same offers.
- `Shaper` counts a frame delivered when its verdict schedules it. `ShapedSender` counts a
  frame delivered only once its `send` took it: a send that returns False or raises is a
  drop of the link ("send"), and its snapshot reports what the shaper scheduled as
  ``frames_scheduled``; every offered frame ends delivered, dropped by one cause (outage,
  queue, loss, send, close) or still pending.

This module must not import anything from `nodes` or `testbed`, and the worker must never
sleep relative per frame: it waits for absolute deadlines, so timer error never accumulates.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

from linkemu.framing import EventClock
from linkemu.loss import LossChain
from linkemu.profile import LinkProfile

__all__ = ["Verdict", "ShaperCounters", "Shaper", "ShapedSender", "DROP_OUTAGE", "DROP_QUEUE",
           "DROP_LOSS", "DROP_SEND", "DROP_CLOSE"]

DROP_OUTAGE = "outage"
DROP_QUEUE = "queue"
DROP_LOSS = "loss"
DROP_SEND = "send"    # the sender's send returned False or raised (ShapedSender only)
DROP_CLOSE = "close"  # still pending when the sender closed (ShapedSender only)
FIT_EPS_S = 1e-9  # a PSDU ending within 1 ns of an outage start still fits

T = TypeVar("T")


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
    """A `Shaper`'s verdicts: ``frames_delivered`` counts frames it scheduled for delivery."""

    frames_offered: int = 0
    bytes_offered: int = 0
    frames_delivered: int = 0
    bytes_delivered: int = 0
    dropped_outage: int = 0
    dropped_queue: int = 0
    dropped_loss: int = 0
    psdus_sent: int = 0
    psdus_lost: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _new_seed() -> int:
    return random.SystemRandom().randrange(2**63)


class Shaper:
    """Pure shaping arithmetic. `now` is seconds on any monotonic base; it never goes back
    (an earlier `now` than one already seen is treated as the latest seen). Outage times
    are relative to `start`."""

    def __init__(self, profile: LinkProfile, *, start: float) -> None:
        self.profile = profile
        self.start = start
        self.seed = profile.seed if profile.seed is not None else _new_seed()
        self.counters = ShaperCounters()
        self._timeline = profile.timeline(seed=self.seed)   # the one timeline every reader of the run builds
        self._loss: LossChain | None = (profile.loss.chain(random.Random(f"{self.seed}/loss"))
                                        if profile.loss is not None else None)
        self._jitter_rng = random.Random(f"{self.seed}/jitter")
        self._events = (EventClock(profile.framing, origin=0.0)
                        if profile.frames_per_event is not None else None)
        self._link_free_at = -math.inf
        self._last_deliver = -math.inf
        self._now = -math.inf
        self._in_flight: deque[tuple[float, int]] = deque()  # (tx end, nbytes), FIFO
        self._in_flight_bytes = 0

    # -- state

    def in_outage(self, now: float) -> bool:
        return self._timeline.is_down(now - self.start)

    def rate_at(self, now: float) -> float:
        rate = self._timeline.rate_at(now - self.start)
        return self.profile.rate_bps if rate is None else rate

    def queue_bytes(self, now: float) -> int:
        """Bytes accepted but not yet fully serialised at `now`."""
        self._advance(now)
        return self._in_flight_bytes

    def queue_frames(self, now: float) -> int:
        self._advance(now)
        return len(self._in_flight)

    # -- offering

    def offer(self, nbytes: int, now: float) -> Verdict:
        if nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, got {nbytes}")
        now = self._advance(now)
        self.counters.frames_offered += 1
        self.counters.bytes_offered += nbytes
        if self.profile.outage_mode == "drop" and self.in_outage(now):
            self.counters.dropped_outage += 1
            return Verdict(None, DROP_OUTAGE)
        limit = self.profile.queue_limit_bytes
        if limit is not None and self._in_flight_bytes + nbytes > limit:
            self.counters.dropped_queue += 1
            return Verdict(None, DROP_QUEUE)
        tx_end = self._serialise(nbytes, max(now, self._link_free_at))
        if tx_end is None:
            self.counters.dropped_outage += 1
            return Verdict(None, DROP_OUTAGE)
        self._link_free_at = tx_end
        self._in_flight.append((tx_end, nbytes))
        self._in_flight_bytes += nbytes
        if self._lost(nbytes):
            self.counters.dropped_loss += 1
            return Verdict(None, DROP_LOSS)
        self.counters.frames_delivered += 1
        self.counters.bytes_delivered += nbytes
        return Verdict(self._deliver_at(tx_end))

    def _serialise(self, nbytes: int, t: float) -> float | None:
        """When the frame's last PSDU ends, starting no earlier than t; None if an outage
        drops it (then the link is free at the outage's start)."""
        if self._timeline.static and self._events is None:
            return t + self.profile.airtime_s(nbytes)
        rel: float | None = t - self.start   # placement runs on the timeline's own clock
        for payload in self.profile.framing.fragments(nbytes):
            rel = self._place_psdu(payload, rel)
            if rel is None or math.isinf(rel):
                break
        if rel is None:
            return None
        return rel + self.start

    def _place_psdu(self, payload: int, t: float) -> float | None:
        """End time (relative to start) of one PSDU ready at t (outage- and event-aware)."""
        framing, line = self.profile.framing, self._timeline
        hold = self.profile.outage_mode == "hold"
        while True:
            if line.is_down(t):
                if not hold:
                    self._link_free_at = t + self.start
                    return None
                t = line.next_up(t)
                if math.isinf(t):
                    return t
                continue
            duration = framing.frame_time_s(payload, rate_bps=self._rate_rel(t))
            if self._events is not None:
                start = self._events.start_at(t, duration)
                if start != t:
                    t = start
                    continue  # the anchor may fall in an outage
            down_at = line.next_down(t)
            if t + duration <= down_at + FIT_EPS_S:  # float round-off of relative times
                if self._events is not None:
                    self._events.commit(t + duration)
                return t + duration
            if not hold:
                self._link_free_at = down_at + self.start
                return None
            t = down_at  # cut by the outage: send it again, whole, once the link is up

    def _rate_rel(self, rel: float) -> float:
        rate = self._timeline.rate_at(rel)
        return self.profile.rate_bps if rate is None else rate

    def _lost(self, nbytes: int) -> bool:
        count = self.profile.framing.fragment_count(nbytes)
        self.counters.psdus_sent += count
        if self._loss is None:
            return False
        lost = sum(self._loss.step() for _ in range(count))
        self.counters.psdus_lost += lost
        return lost > 0

    def _deliver_at(self, tx_end: float) -> float:
        p = self.profile
        at = tx_end + p.delay_s
        if p.jitter_s > 0:
            at = max(tx_end, at + self._jitter_rng.uniform(-p.jitter_s, p.jitter_s))
        if not p.reorder:
            at = max(at, self._last_deliver)
            self._last_deliver = at
        return at

    def _advance(self, now: float) -> float:
        self._now = max(self._now, now)
        while self._in_flight and self._in_flight[0][0] <= self._now:
            self._in_flight_bytes -= self._in_flight.popleft()[1]
        return self._now

    def snapshot(self, now: float) -> dict[str, Any]:
        """Counters and link state at `now` (JSON-able)."""
        down = self.in_outage(now)
        return {**self.counters.as_dict(),
                "queue_bytes": self.queue_bytes(now), "queue_frames": self.queue_frames(now),
                "in_outage": down, "link_state": "down" if down else "up",
                "rate_bps": None if math.isinf(self.rate_at(now)) else self.rate_at(now),
                "seed": self.seed}


class ShapedSender(Generic[T]):
    """Threaded egress: `submit(frame, tag=...)` shapes a frame; a worker calls
    `send(frame, tag)` at its delivery time, with the tag given to `submit` (None if none).

    Use as a context manager (enter starts it if needed, exit closes it) or call
    `start()` / `close()`. A `send` that returns False (exactly False: None or any other value
    is success) or raises did not carry the frame: it is counted as ``dropped_send`` (a raise
    also in ``send_errors``), never fatal to the worker, and not in ``frames_delivered``,
    which counts only frames `send` took.
    Frames leave in delivery-time order (submission order unless the profile reorders), so
    a caller that needs to know which frame a delivery is tells it by the tag, never by order.
    Frames dropped by the shaper (see `submit`'s verdict) or discarded at close never reach
    `send`, nor do their tags.
    """

    CLOSE_GRACE_S = 5.0
    SPIN_S = 0.0005  # the last half millisecond before a deadline is waited in short steps

    def __init__(self, send: Callable[[bytes, T | None], object], profile: LinkProfile, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._send = send
        self.profile = profile
        self._clock = clock
        self._cond = threading.Condition()
        self._pending: list[tuple[float, int, bytes, T | None]] = []  # heap of (deliver_at, seq, frame, tag)
        self._seq = itertools.count()
        self._shaper: Shaper | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        self._abort = False
        self.send_errors = 0
        self.last_send_error: str | None = None
        self.frames_sent = 0     # frames `send` took (frames_delivered in the snapshot)
        self.bytes_sent = 0
        self.dropped_send = 0    # frames `send` refused (returned False) or raised on
        self._sending = 0        # a frame popped and in `send` now (pending in the snapshot)
        self.dropped_close = 0
        self.late_s_max = 0.0

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
        CLOSE_GRACE_S; frames held for ever by an endless outage are not waited for);
        frames still pending then are discarded and counted as dropped_close. Never hangs
        forever, even if `send` blocks.
        """
        with self._cond:
            if self._closing and self._thread is None:
                return
            self._closing = True
            self._abort = self._abort or not drain
            if timeout is None:
                due = [entry[0] for entry in self._pending if math.isfinite(entry[0])]
                timeout = max(0.0, max(due, default=0.0) - self._clock()) + self.CLOSE_GRACE_S
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

    def __enter__(self) -> ShapedSender[T]:
        if self._thread is None and not self._closing:
            self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- data path

    def submit(self, frame: bytes, *, tag: T | None = None) -> Verdict:
        """Shape one frame without blocking; an accepted frame is handed to `send(frame, tag)`
        at deliver_at. A dropped one (the verdict says why) never is."""
        with self._cond:
            if self._shaper is None or self._closing:
                raise RuntimeError("ShapedSender is not running; call start() and not close()")
            verdict = self._shaper.offer(len(frame), self._clock())
            if verdict.deliver_at is not None:
                heapq.heappush(self._pending, (verdict.deliver_at, next(self._seq), bytes(frame), tag))
                self._cond.notify_all()
            return verdict

    def snapshot(self) -> dict[str, Any]:
        """Counters, queue and link state, for telemetry (JSON-able)."""
        with self._cond:
            shaper = self._shaper
            now = self._clock()
            base = (shaper.snapshot(now) if shaper else
                    {**ShaperCounters().as_dict(), "queue_bytes": 0, "queue_frames": 0,
                     "in_outage": False, "link_state": "up", "rate_bps": None, "seed": None})
            return {
                **base,
                # the shaper scheduled these; delivered are those `send` took
                "frames_scheduled": base["frames_delivered"], "bytes_scheduled": base["bytes_delivered"],
                "frames_delivered": self.frames_sent, "bytes_delivered": self.bytes_sent,
                "dropped_send": self.dropped_send,
                "pending_frames": len(self._pending) + self._sending,
                "frames_sent": self.frames_sent,
                "send_errors": self.send_errors,
                "last_send_error": self.last_send_error,
                "dropped_close": self.dropped_close,
                "late_ms_max": round(self.late_s_max * 1000.0, 3),
            }

    # -- worker

    def _next_due(self) -> tuple[bytes, T | None] | None:
        """Block until the head frame is due (absolute deadline) and pop it with its tag; None = stop."""
        with self._cond:
            while True:
                if self._abort or (self._closing and not self._pending):
                    return None
                if not self._pending or math.isinf(self._pending[0][0]):
                    if self._closing:
                        return None  # only frames held for ever are left
                    self._cond.wait()
                    continue
                due = self._pending[0][0]
                wait = due - self._clock()
                if wait <= 0:
                    self.late_s_max = max(self.late_s_max, -wait)
                    _, _, frame, tag = heapq.heappop(self._pending)
                    self._sending = 1
                    return frame, tag
                self._cond.wait(timeout=wait - self.SPIN_S if wait > 2 * self.SPIN_S
                                else wait / 4)

    def _run(self) -> None:
        while (due := self._next_due()) is not None:
            raised: str | None = None
            try:
                took = self._send(*due) is not False
            except Exception as exc:  # noqa: BLE001 - a failing send must not kill the link
                took, raised = False, f"{type(exc).__name__}: {exc}"
            with self._cond:
                self._sending = 0
                if took:
                    self.frames_sent += 1
                    self.bytes_sent += len(due[0])
                    continue
                self.dropped_send += 1
                self.send_errors += raised is not None
                self.last_send_error = raised or "send refused the frame (returned False)"
