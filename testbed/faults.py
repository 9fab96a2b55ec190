"""A run's fault schedule and its clock: when each link is down and when a board is killed.

Holds ``RunClock`` (the run's time zero, on the orchestrator's monotonic clock and as a wall
time that every board maps onto its own clock with its clock-sync offset) and
``FaultSchedule``, built once per run from the inventory and the experiment: each link's
effective profile (the experiment's ``outage`` faults added to the profile's static
schedule, and a seed fixed when the profile leaves it open, so every reader draws the same
on/off process), every outage window of every kind (static schedule, on/off process, trace)
read from linkemu's own timeline (``LinkProfile.timeline``), and the ``kill`` faults. The
orchestrator (fault events, the ``during_outage`` label), the kernel shaper and the agents'
user-space shapers all read this one schedule, on the one run clock.

Pure: it starts, stops and writes nothing; the orchestrator acts on what it says.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from linkemu.outage import Outage, Timeline
from linkemu.profile import LinkProfile
from testbed.config import Experiment, Inventory
from testbed.errors import ConfigError

__all__ = ["RunClock", "FaultEvent", "FaultSchedule", "TooManyWindows", "MAX_PROCESS_WINDOWS", "link_seed"]


@dataclass(frozen=True)
class RunClock:
    """The run's time zero: ``t0`` on this machine's monotonic clock, ``t0_ns`` the wall time
    (``time.time_ns()``) of the same instant, which boards receive in their ``start`` command."""

    t0: float
    t0_ns: int

    @classmethod
    def start(cls, *, monotonic: Callable[[], float] = time.monotonic,
              wall_ns: Callable[[], int] = time.time_ns) -> RunClock:
        return cls(t0=monotonic(), t0_ns=wall_ns())

    def offset(self, at: float) -> float:
        """Seconds since time zero of a monotonic time ``at``."""
        return at - self.t0

    def at(self, offset_s: float) -> float:
        """The monotonic time ``offset_s`` seconds after time zero."""
        return self.t0 + offset_s


@dataclass(frozen=True)
class FaultEvent:
    """One edge of the schedule: an outage of ``link`` starts or ends, or ``board`` is killed."""

    at_s: float
    kind: str            # "outage" | "kill"
    phase: str           # "start" | "end"
    link: str | None = None
    board: str | None = None

    def fields(self) -> dict[str, Any]:
        """The fields of this event's ``fault`` record in events.jsonl."""
        target = {"link": self.link} if self.kind == "outage" else {"board": self.board}
        return {"kind": self.kind, **target, "phase": self.phase}


def link_seed(experiment_seed: int, link: str) -> int:
    """The seed of a link whose profile sets none: fixed by the experiment's seed and the
    link's name, so a run replays and every reader of the run draws the same process."""
    digest = hashlib.sha256(f"{experiment_seed}/{link}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1   # < 2**63, as a profile seed must be


MAX_PROCESS_WINDOWS = 100_000   # per link and run: beyond, an on/off process is a mistake, not an experiment


class TooManyWindows(ValueError):
    """An on/off process would put more than MAX_PROCESS_WINDOWS outages into one run."""

    def __init__(self, link: str, horizon_s: float) -> None:
        self.link = link
        super().__init__(f"more than {MAX_PROCESS_WINDOWS:,} outages in the run's {horizon_s:g} s; expected "
                         "mean_up_s and mean_down_s that give fewer (each outage is an event in the run's log)")


def _windows(line: Timeline, until: float, *, limit: int | None = None) -> list[tuple[float, float]]:
    """The down windows of ``line`` that start at or before ``until`` (relative seconds);
    OverflowError past ``limit`` of them."""
    out: list[tuple[float, float]] = []
    t = 0.0
    while t <= until:
        if limit is not None and len(out) > limit:
            raise OverflowError(limit)
        if line.is_down(t):
            end = line.next_up(t)
            out.append((t, end))
            if math.isinf(end):
                break
            t = end
        else:
            t = line.next_down(t)
    return out


def _merged(windows: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The union of half-open windows, as sorted disjoint windows (touching ones joined)."""
    out: list[tuple[float, float]] = []
    for s, e in sorted(windows):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def _link_windows(name: str, profile: LinkProfile, *, seed: int,
                  horizon_s: float) -> tuple[tuple[float, float], ...]:
    """A link's down windows: all of its static schedule and trace (finite lists, however late),
    and its on/off process up to ``horizon_s`` only (a process never ends); TooManyWindows when
    the process has more than MAX_PROCESS_WINDOWS there."""
    static = profile.replace(outage_process=None).timeline(seed=seed)
    windows = _windows(static, _static_end(profile))
    if profile.outage_process is not None:
        process = profile.replace(outages=(), outage_trace=None).timeline(seed=seed)   # the same draws
        try:
            windows += _windows(process, horizon_s, limit=MAX_PROCESS_WINDOWS)
        except OverflowError:
            raise TooManyWindows(name, horizon_s) from None
    return tuple(_merged(windows))


def _static_end(profile: LinkProfile) -> float:
    """The last finite time the profile's schedule or trace changes state (0 if none)."""
    times = [o.start_s for o in profile.outages] + [o.end_s for o in profile.outages]
    if profile.outage_trace is not None:
        times += [p.time_s for p in profile.outage_trace.points]
    return max((t for t in times if math.isfinite(t)), default=0.0)


class FaultSchedule:
    """Every fault of one run, in seconds from the run clock's time zero.

    ``horizon_s`` is when the run's last sample may still be pending (the last trigger plus
    the timeout): on/off processes are listed up to it; static outages, traces and kills are
    listed whenever they fall, so a fault after the last sample still has its event. Whether a
    link is down at a given time is answered for any time, from the link's whole timeline."""

    def __init__(self, profiles: Mapping[str, LinkProfile], *, kills: Sequence[tuple[str, float]] = (),
                 horizon_s: float) -> None:
        unseeded = [name for name, p in profiles.items() if p.seed is None]
        if unseeded:
            raise ValueError(f"profiles without a seed: {', '.join(unseeded)}; every reader must draw "
                             "the same process (FaultSchedule.build fixes them)")
        self.profiles: dict[str, LinkProfile] = dict(profiles)
        self.kills: tuple[tuple[str, float], ...] = tuple(kills)   # (board, at_s)
        self.horizon_s = float(horizon_s)
        self._lines = {name: p.timeline(seed=int(p.seed)) for name, p in self.profiles.items()}  # type: ignore[arg-type]
        self._windows = {name: _link_windows(name, p, seed=int(p.seed), horizon_s=self.horizon_s)  # type: ignore[arg-type]
                         for name, p in self.profiles.items()}

    @classmethod
    def build(cls, inventory: Inventory, experiment: Experiment, *, horizon_s: float | None = None) -> FaultSchedule:
        """The schedule of running ``experiment`` on ``inventory``; the horizon defaults to the
        experiment's last trigger plus its timeout."""
        profiles = {}
        for link in inventory.links:
            extra = tuple(Outage(start_s=f.at_s, duration_s=float(f.duration_s or 0.0))
                          for f in experiment.faults if f.kind == "outage" and f.link == link.name)
            p = link.profile.with_outages(tuple(link.profile.outages) + extra)
            profiles[link.name] = p if p.seed is not None else p.replace(seed=link_seed(experiment.seed, link.name))
        kills = [(f.board, f.at_s) for f in experiment.faults if f.kind == "kill" and f.board is not None]
        if horizon_s is None:
            run = experiment.run
            horizon_s = (run.samples - 1) / run.rate_hz + run.timeout_ms / 1000.0
        try:
            return cls(profiles, kills=kills, horizon_s=horizon_s)
        except TooManyWindows as exc:
            i = next(i for i, lk in enumerate(inventory.links) if lk.name == exc.link)
            key = f"links[{i}].profile.outage_process"
            raise ConfigError(str(exc), file=str(inventory.path), line=inventory.line_of(key), key=key) from None

    # -- questions ---------------------------------------------------------------------------
    def is_down(self, link: str, offset_s: float) -> bool:
        """Whether ``link`` is down ``offset_s`` seconds into the run."""
        return self._lines[link].is_down(offset_s)

    def links_down(self, offset_s: float) -> list[str]:
        return [name for name, line in self._lines.items() if line.is_down(offset_s)]

    def during_outage(self, offset_s: float) -> bool:
        """Whether any link is down ``offset_s`` seconds into the run (a sample's label)."""
        return any(line.is_down(offset_s) for line in self._lines.values())

    def windows(self, link: str) -> tuple[tuple[float, float], ...]:
        """``link``'s down windows [start, end) in run seconds (end inf: for ever)."""
        return self._windows[link]

    def events(self) -> list[FaultEvent]:
        """Every fault edge in time order (outage ends of windows that never end are omitted)."""
        out = [FaultEvent(at_s=t, kind="outage", phase=phase, link=name)
               for name, windows in self._windows.items() for s, e in windows
               for t, phase in ((s, "start"), (e, "end")) if math.isfinite(t)]
        out += [FaultEvent(at_s=at, kind="kill", phase="start", board=board) for board, at in self.kills]
        return sorted(out, key=lambda ev: (ev.at_s, ev.phase == "start"))

    def as_dict(self) -> dict[str, Any]:
        """JSON-able: each link's seed and windows (inf as None), and the kills."""
        return {"horizon_s": self.horizon_s,
                "links": {name: {"seed": self.profiles[name].seed,
                                 "windows": [[s, None if math.isinf(e) else e] for s, e in windows]}
                          for name, windows in self._windows.items()},
                "kills": [{"board": board, "at_s": at} for board, at in self.kills]}
