"""PHY framing arithmetic: how many link frames an activation needs and how long they take.

Holds `Framing` (rate, per-frame header bytes, max PSDU bytes, per-frame PHY time and an
optional connection-event model) and `EventClock` (when the next frame may start when the
link only carries frames in periodic connection events, as BLE does). A frame of `n` bytes
is cut into PSDUs of at most `max_psdu_bytes - overhead_bytes` payload bytes; each PSDU
costs `phy_time_s + (payload + overhead_bytes) * 8 / rate`. Pure arithmetic: no clock, no
I/O, and it must not import anything from `nodes` or `testbed`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Framing", "EventClock"]


@dataclass(frozen=True)
class Framing:
    """The framing numbers of a profile (validated by `LinkProfile`)."""

    rate_bps: float
    overhead_bytes: int = 0
    max_psdu_bytes: int | None = None
    phy_time_s: float = 0.0
    frames_per_event: int | None = None
    event_interval_s: float = 0.0

    @property
    def max_payload(self) -> int | None:
        """Payload bytes per PSDU (None: frames are never fragmented)."""
        return None if self.max_psdu_bytes is None else self.max_psdu_bytes - self.overhead_bytes

    def fragment_count(self, nbytes: int) -> int:
        cap = self.max_payload
        return 1 if cap is None or nbytes <= cap else -(-nbytes // cap)

    def fragments(self, nbytes: int) -> list[int]:
        """Payload bytes of each PSDU of an `nbytes` frame (an empty frame is one PSDU)."""
        cap = self.max_payload
        if cap is None or nbytes <= cap:
            return [nbytes]
        full, rest = divmod(nbytes, cap)
        return [cap] * full + ([rest] if rest else [])

    def frame_time_s(self, payload: int, *, rate_bps: float | None = None) -> float:
        """Airtime of one PSDU carrying `payload` bytes (at `rate_bps`, default the profile's)."""
        rate = self.rate_bps if rate_bps is None else rate_bps
        bits = 0.0 if math.isinf(rate) else (payload + self.overhead_bytes) * 8 / rate
        return self.phy_time_s + bits

    def airtime_s(self, nbytes: int) -> float:
        """Seconds to carry an `nbytes` frame on an idle, always-up link (starting at a
        connection event when the profile has events). Cost: O(1) without connection events;
        with them, O(PSDUs of one event), however large the frame (whole events of full PSDUs
        repeat with one period and are skipped in one step)."""
        cap = self.max_payload
        if cap is None or nbytes <= cap:
            full, last = 0, nbytes
        else:
            full, rest = divmod(nbytes, cap)
            full, last = (full - 1, cap) if rest == 0 else (full, rest)
        # `full` PSDUs of `cap` bytes, then one of `last` bytes (the fragments() of the frame)
        if self.frames_per_event is None:
            return full * self.frame_time_s(cap) + self.frame_time_s(last) if full else self.frame_time_s(last)
        clock, t = EventClock(self), 0.0
        d = self.frame_time_s(cap) if full else 0.0
        if full > _SIMULATED_PSDUS:
            per_event, period = self._event_pattern(d)
            skipped = (full - _SIMULATED_PSDUS) // per_event
            full -= skipped * per_event
            t = skipped * period
            clock = EventClock(self, origin=t)   # the same anchors, without the float drift of t / interval
        for _ in range(full):
            t = clock.start_at(t, d) + d
            clock.commit(t)
        d = self.frame_time_s(last)
        t = clock.start_at(t, d) + d
        clock.commit(t)
        return t

    def _event_pattern(self, d: float) -> tuple[int, float]:
        """(PSDUs of duration `d` per connection event, seconds from one event's anchor to the
        next's) for a stream of equal PSDUs starting at an anchor."""
        if d <= 0:   # no airtime: every PSDU goes at the first anchor
            return self.frames_per_event or 1, 0.0
        clock, t, count = EventClock(self), 0.0, 0
        while True:   # at most frames_per_event + 1 turns
            t = clock.start_at(t, d)
            if clock.anchor != 0.0:
                return count, clock.anchor
            t += d
            clock.commit(t)
            count += 1

    def goodput_bps(self, nbytes: int) -> float:
        """Effective goodput n * 8 / airtime(n) (inf for an unlimited link)."""
        airtime = self.airtime_s(nbytes)
        return math.inf if airtime == 0 else nbytes * 8 / airtime

    @property
    def asymptotic_goodput_bps(self) -> float:
        """The goodput of a long stream of full PSDUs (what a token bucket should be set to)."""
        cap = self.max_payload
        if math.isinf(self.rate_bps) and self.phy_time_s == 0:
            return math.inf
        if cap is None:
            return self.rate_bps
        d = self.frame_time_s(cap)
        if self.frames_per_event is None:
            return cap * 8 / d
        fit = max(1, min(self.frames_per_event, int(self.event_interval_s // d)))
        ci = self.event_interval_s
        period = ci if fit * d <= ci else ci * math.ceil(d / ci)
        return fit * cap * 8 / period


_SIMULATED_PSDUS = 4096   # frames of more full PSDUs than this skip whole connection events


class EventClock:
    """Connection events every `event_interval_s` from t = 0, each carrying at most
    `frames_per_event` PSDUs back to back, none of them running past the next anchor.
    A PSDU that cannot continue the current event waits for the next anchor."""

    def __init__(self, framing: Framing, *, origin: float = 0.0) -> None:
        self.interval = framing.event_interval_s
        self.limit = framing.frames_per_event or 1
        self.origin = origin
        self._anchor: float | None = None
        self._used = 0
        self._end = -math.inf

    def _next_anchor(self, t: float) -> float:
        k = math.ceil((t - self.origin) / self.interval)
        return self.origin + max(k, 0) * self.interval

    def start_at(self, t: float, duration: float) -> float:
        """When a PSDU of `duration`, ready at t, may start. Asking again at the anchor it
        returned is answered with that anchor (t / interval is not exact in floats, so working
        the anchor out again could skip a whole event)."""
        if (self._anchor is not None and (t <= self._end or t == self._anchor) and self._used < self.limit
                and t + duration <= self._anchor + self.interval):
            return t
        anchor = self._next_anchor(t)
        self._anchor, self._used = anchor, 0
        return anchor

    @property
    def anchor(self) -> float | None:
        """The anchor of the current connection event (None before the first PSDU)."""
        return self._anchor

    def commit(self, end: float) -> None:
        """A PSDU started at the last `start_at` and ends at `end`."""
        self._used += 1
        self._end = end
