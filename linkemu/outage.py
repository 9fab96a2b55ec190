"""Outage processes: when a link is down, and (for traces) at what rate it runs.

Holds the three ways a profile says when its link is down, all in seconds relative to the
shaper's start:
- `Outage`: one scheduled window [start_s, start_s + duration_s);
- `OnOffProcess`: an alternating up/down renewal process with exponential or lognormal
  durations (the link starts up), drawn lazily from a seeded RNG so a run replays exactly;
- `OutageTrace`: a replayed CSV trace of `time_s,state[,rate_bps]` rows;
and `Timeline`, which combines them and answers "is it down at t", "when is it next up",
"when does it next go down" and "what is the rate at t". Parsing a trace reads text only;
`load_trace` is the one function here that opens a file. It must not import anything from
`nodes` or `testbed`.
"""
from __future__ import annotations

import bisect
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkemu.errors import ProfileError, TraceError, check_keys, choice, number, require

__all__ = ["Outage", "OnOffProcess", "TracePoint", "OutageTrace", "Timeline",
           "OUTAGE_DISTRIBUTIONS", "parse_trace", "load_trace"]

OUTAGE_DISTRIBUTIONS = ("exponential", "lognormal")


@dataclass(frozen=True)
class Outage:
    """The link is down during [start_s, start_s + duration_s), relative to the shaper's start."""

    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        number(self.start_s, key="start_s")
        number(self.duration_s, key="duration_s", strict=True, allow_inf=True)

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


# ---------------------------------------------------------------------------- on/off process


@dataclass(frozen=True)
class OnOffProcess:
    """Alternating up/down durations. `distribution` exponential: means only. lognormal:
    means plus sigma_up / sigma_down, the standard deviation of ln(duration) (so the median
    is mean * exp(-sigma^2 / 2))."""

    distribution: str
    mean_up_s: float
    mean_down_s: float
    sigma_up: float | None = None
    sigma_down: float | None = None

    _KEYS = ("distribution", "mean_up_s", "mean_down_s", "sigma_up", "sigma_down")

    def __post_init__(self) -> None:
        key = "outage_process"
        choice(self.distribution, OUTAGE_DISTRIBUTIONS, key=f"{key}.distribution")
        number(self.mean_up_s, key=f"{key}.mean_up_s", strict=True)
        number(self.mean_down_s, key=f"{key}.mean_down_s", strict=True)
        for name in ("sigma_up", "sigma_down"):
            value = getattr(self, name)
            if self.distribution == "lognormal":
                if value is None:
                    raise ProfileError("missing; expected a number > 0 for a lognormal process",
                                       key=f"{key}.{name}")
                number(value, key=f"{key}.{name}", strict=True)
            elif value is not None:
                raise ProfileError("only for a lognormal process; remove it or set "
                                   "distribution: lognormal", key=f"{key}.{name}")

    @property
    def down_fraction(self) -> float:
        """Long-run fraction of time the link is down."""
        return self.mean_down_s / (self.mean_up_s + self.mean_down_s)

    def draw(self, rng: random.Random, *, up: bool) -> float:
        """One up (or down) duration in seconds."""
        mean = self.mean_up_s if up else self.mean_down_s
        if self.distribution == "exponential":
            return rng.expovariate(1.0 / mean)
        sigma = self.sigma_up if up else self.sigma_down
        assert sigma is not None
        return rng.lognormvariate(math.log(mean) - sigma * sigma / 2.0, sigma)

    def durations(self, rng: random.Random) -> Iterator[tuple[float, float]]:
        """Endless (up_s, down_s) pairs, the link starting up."""
        while True:
            up = self.draw(rng, up=True)
            yield up, self.draw(rng, up=False)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"distribution": self.distribution, "mean_up_s": self.mean_up_s,
                             "mean_down_s": self.mean_down_s}
        if self.distribution == "lognormal":
            d.update(sigma_up=self.sigma_up, sigma_down=self.sigma_down)
        return d

    @classmethod
    def from_spec(cls, spec: Any, *, key: str = "outage_process") -> OnOffProcess:
        if not isinstance(spec, Mapping):
            raise ProfileError("expected a mapping {distribution: exponential|lognormal, "
                               f"mean_up_s, mean_down_s, ...}}, got {spec!r}", key=key)
        check_keys(spec, cls._KEYS, prefix=f"{key}.")
        require(spec, ("distribution",), prefix=f"{key}.", what="exponential or lognormal")
        require(spec, ("mean_up_s", "mean_down_s"), prefix=f"{key}.", what="a number > 0")
        try:
            return cls(**dict(spec))
        except ProfileError as exc:
            raise ProfileError(exc.detail, key=f"{key}.{exc.key.split('.', 1)[1]}") from None


# ---------------------------------------------------------------------------- trace


@dataclass(frozen=True)
class TracePoint:
    """From `time_s` on, the link is up or down, at `rate_bps` (None: the profile's rate)."""

    time_s: float
    up: bool
    rate_bps: float | None = None


@dataclass(frozen=True)
class OutageTrace:
    """A replayed trace: a step function of state (and optionally rate) over time. Before
    the first point the link is up at the profile's rate; the last point holds for ever."""

    points: tuple[TracePoint, ...]
    source: str = "trace"

    def __post_init__(self) -> None:
        times = [p.time_s for p in self.points]
        if times != sorted(times):
            raise ProfileError("expected points in time order", key="outage_trace")

    def down_intervals(self) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        start: float | None = None
        for point in self.points:
            if not point.up and start is None:
                start = point.time_s
            elif point.up and start is not None:
                if point.time_s > start:
                    out.append((start, point.time_s))
                start = None
        if start is not None:
            out.append((start, math.inf))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source,
                "points": [[p.time_s, "up" if p.up else "down", p.rate_bps] for p in self.points]}

    @classmethod
    def from_dict(cls, d: Any, *, key: str = "outage_trace") -> OutageTrace:
        if not isinstance(d, Mapping):
            raise ProfileError(f"expected a mapping {{source, points}}, got {d!r}", key=key)
        check_keys(d, ("source", "points"), prefix=f"{key}.")
        points = []
        for i, item in enumerate(d.get("points", ())):
            if not isinstance(item, Sequence) or isinstance(item, str) or len(item) != 3:
                raise ProfileError(f"expected [time_s, up|down, rate_bps|null], got {item!r}",
                                   key=f"{key}.points[{i}]")
            t, state, rate = item
            points.append(TracePoint(
                number(t, key=f"{key}.points[{i}]"), choice(state, ("up", "down"),
                                                             key=f"{key}.points[{i}]") == "up",
                None if rate is None else number(rate, key=f"{key}.points[{i}]", strict=True)))
        return cls(tuple(points), source=str(d.get("source", "trace")))


_STATES = {"up": True, "1": True, "down": False, "0": False}
_HEADER = ("time_s", "state", "rate_bps")


def parse_trace(text: str, *, source: str = "trace") -> OutageTrace:
    """Parse CSV rows `time_s,state[,rate_bps]` (state up|down|1|0; blank lines and `#`
    comments skipped; an optional header row `time_s,state[,rate_bps]`). Times must not
    decrease. A bad row raises TraceError naming the line and column."""
    points: list[TracePoint] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cells = [c.strip() for c in line.split(",")]
        if not points and tuple(c.lower() for c in cells) in (_HEADER, _HEADER[:2]):
            continue
        points.append(_trace_row(cells, source=source, line=lineno,
                                 last=points[-1].time_s if points else 0.0))
    return OutageTrace(tuple(points), source=source)


def _trace_row(cells: list[str], *, source: str, line: int, last: float) -> TracePoint:
    def fail(column: int, message: str) -> TraceError:
        return TraceError(message, source=source, line=line, column=column)

    if len(cells) < 2:
        raise fail(len(cells) + 1, "expected time_s,state[,rate_bps]; missing state")
    if len(cells) > 3:
        raise fail(4, f"expected at most 3 columns (time_s,state,rate_bps), got {len(cells)}")
    try:
        t = float(cells[0])
    except ValueError:
        raise fail(1, f"expected time_s, a number >= 0, got {cells[0]!r}") from None
    if not math.isfinite(t) or t < 0:
        raise fail(1, f"expected time_s, a number >= 0, got {cells[0]!r}")
    if t < last:
        raise fail(1, f"expected time_s >= {last:g} (rows in time order), got {cells[0]!r}")
    state = _STATES.get(cells[1].lower())
    if state is None:
        raise fail(2, f"expected state up, down, 1 or 0, got {cells[1]!r}")
    rate: float | None = None
    if len(cells) == 3 and cells[2]:
        try:
            rate = float(cells[2])
        except ValueError:
            raise fail(3, f"expected rate_bps, a number > 0, got {cells[2]!r}") from None
        if not rate > 0 or math.isnan(rate):
            raise fail(3, f"expected rate_bps, a number > 0, got {cells[2]!r}")
    return TracePoint(t, state, rate)


def load_trace(path: str | Path, *, base_dir: str | Path | None = None) -> OutageTrace:
    """Read and parse a trace file (relative paths are relative to `base_dir` if given)."""
    p = Path(path).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = Path(base_dir) / p
    try:
        text = p.read_text()
    except OSError as exc:
        raise ProfileError(f"cannot read trace file {str(p)!r}: {exc.strerror or exc}",
                           key="outage_trace") from None
    return parse_trace(text, source=str(path))


# ---------------------------------------------------------------------------- timeline


class _Intervals:
    """Sorted, merged, half-open down intervals; optionally extended lazily by a generator."""

    def __init__(self, intervals: Iterable[tuple[float, float]] = (),
                 more: Iterator[tuple[float, float]] | None = None) -> None:
        self._starts: list[float] = []
        self._ends: list[float] = []
        for s, e in sorted(intervals):
            self._add(s, e)
        self._more = more

    def _add(self, s: float, e: float) -> None:
        if self._ends and s <= self._ends[-1]:
            self._ends[-1] = max(self._ends[-1], e)
        else:
            self._starts.append(s)
            self._ends.append(e)

    def _ensure(self, t: float) -> None:
        """Generate until an interval starts after t (all state up to then is known)."""
        while self._more is not None and (not self._starts or self._starts[-1] <= t) \
                and (not self._ends or self._ends[-1] < math.inf):
            self._add(*next(self._more))

    def _index(self, t: float) -> int:
        self._ensure(t)
        return bisect.bisect_right(self._starts, t) - 1

    def is_down(self, t: float) -> bool:
        i = self._index(t)
        return i >= 0 and t < self._ends[i]

    def up_at(self, t: float) -> float:
        """The first time >= t at which this source is up."""
        i = self._index(t)
        return self._ends[i] if i >= 0 and t < self._ends[i] else t

    def next_down(self, t: float) -> float:
        """The first time > t at which this source goes down (inf if never); t is up."""
        i = self._index(t)
        return self._starts[i + 1] if i + 1 < len(self._starts) else math.inf


def _process_intervals(process: OnOffProcess,
                       rng: random.Random) -> Iterator[tuple[float, float]]:
    t = 0.0
    for up, down in process.durations(rng):
        t += up
        yield t, t + down
        t += down


class Timeline:
    """The combined link state of a schedule, an on/off process and a trace (relative time).
    The link is down when any of them says so; the rate is the trace's where it gives one."""

    def __init__(self, *, schedule: Iterable[Outage] = (), process: OnOffProcess | None = None,
                 trace: OutageTrace | None = None, rng: random.Random | None = None) -> None:
        self._sources: list[_Intervals] = []
        schedule = tuple(schedule)
        if schedule:
            self._sources.append(_Intervals((o.start_s, o.end_s) for o in schedule))
        if process is not None:
            self._sources.append(_Intervals(more=_process_intervals(
                process, rng if rng is not None else random.Random())))
        self._rate_times: list[float] = []
        self._rates: list[float | None] = []
        if trace is not None:
            self._sources.append(_Intervals(trace.down_intervals()))
            for p in trace.points:
                self._rate_times.append(p.time_s)
                self._rates.append(p.rate_bps)

    @property
    def static(self) -> bool:
        """True when the link is always up at the profile's rate."""
        return not self._sources and not any(r is not None for r in self._rates)

    def is_down(self, t: float) -> bool:
        return any(s.is_down(t) for s in self._sources)

    def next_up(self, t: float) -> float:
        """The first time >= t when every source is up (inf if never)."""
        moved = True
        while moved and t < math.inf:
            moved = False
            for source in self._sources:
                up = source.up_at(t)
                if up > t:
                    t, moved = up, True
        return t

    def next_down(self, t: float) -> float:
        """The first time > t when some source goes down (t must be up; inf if never)."""
        return min((s.next_down(t) for s in self._sources), default=math.inf)

    def rate_at(self, t: float) -> float | None:
        """The trace's rate in force at t, or None for the profile's rate."""
        i = bisect.bisect_right(self._rate_times, t) - 1
        return self._rates[i] if i >= 0 else None
