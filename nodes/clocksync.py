"""Clock offset estimation between a board and the orchestrator (NTP-style, four timestamps).

Holds the pure arithmetic (``ClockSample``, ``estimate`` with a minimum-round-trip filter) and
``ClockSyncClient``, which runs the exchange over the control plane: the board publishes
``{"id", "t1"}`` on ``tb/<bench>/time/<board>``; the orchestrator answers on the board's ``ctl``
topic with ``{"cmd": "time", "id", "t1", "t2", "t3"}``; the board stamps ``t4`` on arrival.
``offset`` is orchestrator time minus board time (orchestrator ≈ board + offset); the uncertainty
of the chosen sample is half its round-trip delay, a hard bound on the offset error when the
path is asymmetric. All times are wall-clock nanoseconds (time.time_ns()).
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ClockSample:
    t1: int  # board sends request
    t2: int  # orchestrator receives it
    t3: int  # orchestrator sends reply
    t4: int  # board receives reply

    @property
    def offset_ns(self) -> float:
        return ((self.t2 - self.t1) + (self.t3 - self.t4)) / 2.0

    @property
    def delay_ns(self) -> int:
        return (self.t4 - self.t1) - (self.t3 - self.t2)


@dataclass(frozen=True)
class ClockEstimate:
    offset_ns: float
    uncertainty_ns: float
    rtt_ns: int
    samples: int

    def as_dict(self) -> dict[str, float | int]:
        return {"offset_ms": round(self.offset_ns / 1e6, 4), "uncertainty_ms": round(self.uncertainty_ns / 1e6, 4),
                "rtt_ms": round(self.rtt_ns / 1e6, 4), "samples": self.samples}


def estimate(samples: Iterable[ClockSample]) -> ClockEstimate | None:
    """The offset of the sample with the smallest round trip (its queueing is the least)."""
    valid = [s for s in samples if s.delay_ns >= 0]
    if not valid:
        return None
    best = min(valid, key=lambda s: s.delay_ns)
    return ClockEstimate(offset_ns=best.offset_ns, uncertainty_ns=best.delay_ns / 2.0, rtt_ns=best.delay_ns,
                         samples=len(valid))


def reply(request: bytes, *, received_ns: int, now: Callable[[], int] = time.time_ns) -> bytes | None:
    """The orchestrator's answer to one request payload (None for garbage)."""
    try:
        msg = json.loads(request)
        ident, t1 = int(msg["id"]), int(msg["t1"])
    except (ValueError, KeyError, TypeError):
        return None
    return json.dumps({"cmd": "time", "id": ident, "t1": t1, "t2": received_ns, "t3": now()}).encode()


class ClockSyncClient:
    """Board side. ``publish(topic, payload)`` sends; feed replies to ``on_reply``."""

    def __init__(self, publish: Callable[[bytes], object]) -> None:
        self._publish = publish
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiting: dict[int, int] = {}
        self._samples: list[ClockSample] = []
        self._arrived = threading.Condition(self._lock)

    def on_reply(self, msg: dict[str, object], *, t4: int) -> None:
        try:
            ident, t2, t3 = int(msg["id"]), int(msg["t2"]), int(msg["t3"])  # type: ignore[call-overload]
        except (KeyError, TypeError, ValueError, OverflowError):   # garbage: not a reply of ours
            return
        with self._arrived:
            t1 = self._waiting.pop(ident, None)
            if t1 is not None:
                self._samples.append(ClockSample(t1=t1, t2=t2, t3=t3, t4=t4))
                self._arrived.notify_all()

    def run(self, *, probes: int = 8, timeout_s: float = 1.0, gap_s: float = 0.02) -> ClockEstimate | None:
        """Send ``probes`` requests one after another; None if the orchestrator never answered."""
        for _ in range(probes):
            ident = next(self._ids)
            with self._arrived:
                t1 = time.time_ns()
                self._waiting[ident] = t1
            self._publish(json.dumps({"id": ident, "t1": t1}).encode())
            deadline = time.monotonic() + timeout_s
            with self._arrived:
                while ident in self._waiting and time.monotonic() < deadline:
                    self._arrived.wait(deadline - time.monotonic())
                self._waiting.pop(ident, None)
            time.sleep(gap_s)
        with self._lock:
            return estimate(self._samples)
