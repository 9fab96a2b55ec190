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
        connection event when the profile has events)."""
        sizes = self.fragments(nbytes)
        if self.frames_per_event is None:
            if len(sizes) == 1:
                return self.frame_time_s(sizes[0])
            return ((len(sizes) - 1) * self.frame_time_s(sizes[0])
                    + self.frame_time_s(sizes[-1]))
        clock, t = EventClock(self), 0.0
        for payload in sizes:
            d = self.frame_time_s(payload)
            t = clock.start_at(t, d) + d
            clock.commit(t)
        return t

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
        """When a PSDU of `duration`, ready at t, may start."""
        if (self._anchor is not None and t <= self._end and self._used < self.limit
                and t + duration <= self._anchor + self.interval):
            return t
        anchor = self._next_anchor(t)
        self._anchor, self._used = anchor, 0
        return anchor

    def commit(self, end: float) -> None:
        """A PSDU started at the last `start_at` and ends at `end`."""
        self._used += 1
        self._end = end
