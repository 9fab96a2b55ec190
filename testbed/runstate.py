"""The state of one run, rebuilt from its event stream.

Holds ``EventLog`` (appends one JSON event per line to ``events.jsonl``, flushed as written)
and ``RunState`` (folds events into boards, links, per-sample results and running figures).
The live dashboard, ``testbed monitor --replay`` and ``summary.json`` all read a RunState, so
what the screen shows and what the summary says cannot disagree. No I/O besides EventLog.
"""
from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _r(v: float | None, nd: int = 3) -> float | None:
    return None if v is None else round(v, nd)


class EventLog:
    """``events.jsonl`` writer; every event gets ``t`` = seconds since the log opened."""

    def __init__(self, path: Path, *, clock: Any = time.monotonic) -> None:
        self.path = path
        self._clock = clock
        self._t0 = clock()
        self._fh: TextIO | None = None
        self._lock = threading.Lock()
        self._listeners: list[Any] = []

    def __enter__(self) -> EventLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def subscribe(self, listener: Any) -> None:
        self._listeners.append(listener)

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def write(self, event_type: str, /, **fields: Any) -> dict[str, Any]:
        event = {**fields, "t": round(self.elapsed(), 4), "type": event_type}   # the receiver's, never a field's
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")
                self._fh.flush()
        for listener in self._listeners:
            listener(event)
        return event


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Events of a finished (or running) run; a torn or garbage line is skipped."""
    with open(path, encoding="utf-8", errors="replace") as fh:   # a torn or foreign byte is a skipped line
        for line in fh:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and "type" in event:
                yield event


@dataclass
class BoardState:
    name: str
    role: str
    kind: str = ""
    status: str = "unknown"
    samples: int = 0
    bytes_sent: int = 0
    compute_ms: list[float] = field(default_factory=list)
    dropped: int = 0
    errors: int = 0
    clock_offset_ms: float = 0.0
    clock_uncertainty_ms: float | None = None
    error: str = ""
    meter: dict[str, Any] | None = None    # the board's power meter (meter, rail, modelled, ...); None: none
    power_w: float | None = None           # the mean power of its latest batch of readings
    idle_w: float | None = None
    energy_mj: float = 0.0                 # over every reading so far
    energy_span_s: float = 0.0
    mj_per_inference: list[float] = field(default_factory=list)
    active_mj_per_inference: list[float] = field(default_factory=list)
    energy_flagged: int = 0                # inferences shorter than a few reading periods
    meter_rate_hz: float | None = None

    def energy_summary(self) -> dict[str, Any] | None:
        """The board's ``summary.json`` energy entry (None without a meter)."""
        if self.meter is None:
            return None
        mj = self.mj_per_inference
        return {"meter": self.meter.get("meter"), "rail": self.meter.get("rail"),
                "modelled": bool(self.meter.get("modelled")), "rate_hz": self.meter_rate_hz,
                "joules": _r(self.energy_mj / 1e3, 4),
                "mean_w": _r(self.energy_mj / 1e3 / self.energy_span_s, 4) if self.energy_span_s else None,
                "idle_w": _r(self.idle_w, 4), "inferences": len(mj), "flagged": self.energy_flagged,
                "mj_per_inference": {"p50": _r(percentile(mj, 50), 4), "p95": _r(percentile(mj, 95), 4)},
                "active_mj_per_inference": {"p50": _r(percentile(self.active_mj_per_inference, 50), 4),
                                            "p95": _r(percentile(self.active_mj_per_inference, 95), 4)}}


@dataclass
class LinkState:
    name: str
    src: str
    dst: str
    transport: str
    rate_bps: float | None
    shaper: str = "user"             # "user" (linkemu shaper in the agent) or "kernel:<backend>"
    bytes: int = 0
    frames: int = 0
    dropped: int = 0                 # every cause below, summed
    dropped_outage: int = 0
    dropped_queue: int = 0
    dropped_loss: int = 0
    dropped_send: int = 0            # the transport refused or failed the send (a cut wire)
    dropped_close: int = 0           # still queued when the sender closed
    queue_bytes: int = 0
    in_outage: bool = False
    transit_ms: list[float] = field(default_factory=list)
    transit_uncertainty_ms: list[float] = field(default_factory=list)

    def drops(self) -> dict[str, int]:
        """The link's drops by cause (``DROP_CAUSES`` order), zeros included."""
        return {cause: getattr(self, f"dropped_{cause}") for cause in DROP_CAUSES}


DROP_CAUSES = ("outage", "queue", "loss", "send", "close")   # LinkState.dropped_<cause>
_DROP_LABEL = {"send": "send failed", "close": "at close"}   # the rest read as they are named


def drop_causes(counts: Mapping[str, Any]) -> str:
    """A link's non-zero drops by cause, as the dashboard and the run's last lines show them
    (``1 outage, 2 send failed``); ``counts`` holds ``dropped_<cause>`` keys or bare causes."""
    parts = []
    for cause in DROP_CAUSES:
        n = counts.get(f"dropped_{cause}", counts.get(cause, 0)) or 0
        if n:
            parts.append(f"{n} {_DROP_LABEL.get(cause, cause)}")
    return ", ".join(parts)


@dataclass
class SampleResult:
    sample: int
    status: str                      # complete | partial | timed_out
    correct: bool
    latency_ms: float | None
    missing: tuple[str, ...] = ()
    during_outage: bool = False


class RunState:
    """Folds events; thread-safe (``lock`` guards reads from a render thread)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.run_id = ""
        self.run_dir = ""
        self.samples = 0
        self.rate_hz = 0.0
        self.broker: dict[str, Any] = {}
        self.dataset = ""
        self.boards: dict[str, BoardState] = {}
        self.links: dict[str, LinkState] = {}
        self.results: dict[int, SampleResult] = {}
        self.triggered = 0
        self.t = 0.0
        self.started_at_t: float | None = None
        self.ended = False
        self.faults: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.edge_stats: dict[str, Any] = {}
        self.late_results = 0
        self.malformed: dict[str, dict[str, int]] = {}   # board -> reason -> messages dropped
        self.stopped: dict[str, Any] | None = None        # why a run ended early (interrupted, aborted)
        self.bad_events = 0                                # events skipped: not what their type carries
        self._link_of_board: dict[str, str] = {}

    # -- folding ---------------------------------------------------------------------------
    def apply(self, ev: dict[str, Any]) -> None:
        """Fold one event. An event whose fields are not what its type carries (a hand-edited or
        foreign events.jsonl given to ``monitor --replay``) is counted in ``bad_events`` and skipped."""
        with self.lock:
            try:
                self.t = max(self.t, float(ev.get("t", 0.0)))
                handler = getattr(self, "_on_" + str(ev.get("type")), None)
                if handler is not None:
                    handler(ev)
            except (ValueError, TypeError, KeyError, AttributeError, OverflowError):
                self.bad_events += 1

    def apply_all(self, events: Iterable[dict[str, Any]]) -> RunState:
        for ev in events:
            self.apply(ev)
        return self

    def _on_run_start(self, ev: dict[str, Any]) -> None:
        self.run_id, self.run_dir = ev.get("run", ""), ev.get("run_dir", "")
        self.samples, self.rate_hz = int(ev.get("samples", 0)), float(ev.get("rate_hz", 0.0))
        self.broker, self.dataset = ev.get("broker", {}), ev.get("dataset", "")
        self.faults = list(ev.get("faults", []))
        for b in ev.get("boards", []):
            self.boards[b["name"]] = BoardState(name=b["name"], role=b["role"], kind=b.get("kind", ""))
        for lk in ev.get("links", []):
            self.links[lk["name"]] = LinkState(name=lk["name"], src=lk["src"], dst=lk["dst"],
                                               transport=lk.get("transport", ""), rate_bps=lk.get("rate_bps"),
                                               shaper=lk.get("shaper", "user"))
            self._link_of_board[lk["src"]] = lk["name"]
        if self.broker.get("fallback_reason"):
            self.notes.append(f"broker: {self.broker.get('kind')} ({self.broker['fallback_reason']})")

    def _on_sampling_start(self, ev: dict[str, Any]) -> None:
        self.started_at_t = float(ev["t"])

    def _on_status(self, ev: dict[str, Any]) -> None:
        b = self.boards.get(ev.get("board", ""))
        if b is not None:
            b.status = str(ev.get("state", "?"))
            if ev.get("error"):
                b.error = str(ev["error"])
            if isinstance(ev.get("energy"), dict):
                b.meter = ev["energy"]
            clock = ev.get("clock")
            if isinstance(clock, dict):
                b.clock_offset_ms = float(clock.get("offset_ms", 0.0))
                b.clock_uncertainty_ms = clock.get("uncertainty_ms")

    def _on_trigger(self, ev: dict[str, Any]) -> None:
        self.triggered = max(self.triggered, int(ev["sample"]) + 1)

    def _on_sample(self, ev: dict[str, Any]) -> None:
        b = self.boards.get(ev.get("board", ""))
        if b is None:
            return
        if ev.get("verdict") == "sent":
            b.samples += 1
            b.bytes_sent += int(ev.get("bytes", 0))
        else:
            b.dropped += 1
        if ev.get("compute_ms") is not None:
            b.compute_ms.append(float(ev["compute_ms"]))
        self._on_energy(ev)

    def _on_energy(self, ev: dict[str, Any]) -> None:
        """An inference's energy on its board (a wearable's ``sample``, the edge's ``energy``)."""
        b = self.boards.get(ev.get("board", ""))
        mj = ev.get("energy_mj")
        if b is None or isinstance(mj, bool) or not isinstance(mj, (int, float)) or not math.isfinite(mj):
            return
        b.mj_per_inference.append(float(mj))
        active = ev.get("active_mj")
        if isinstance(active, (int, float)) and not isinstance(active, bool) and math.isfinite(active):
            b.active_mj_per_inference.append(float(active))
        b.energy_flagged += bool(ev.get("energy_flagged"))

    def _on_power(self, ev: dict[str, Any]) -> None:
        b = self.boards.get(ev.get("board", ""))
        if b is None:
            return
        if isinstance(ev.get("meter"), dict) and ev["meter"]:
            b.meter = ev["meter"]
        b.energy_mj += float(ev.get("mj") or 0.0)
        b.energy_span_s += float(ev.get("span_s") or 0.0)
        if ev.get("mean_w") is not None:
            b.power_w = float(ev["mean_w"])
        if ev.get("idle_w") is not None:
            b.idle_w = float(ev["idle_w"])
        if ev.get("rate_hz") is not None:
            b.meter_rate_hz = float(ev["rate_hz"])

    def _on_link(self, ev: dict[str, Any]) -> None:
        lk = self.links.get(ev.get("link", ""))
        if lk is None:
            return
        # frames/bytes delivered: what the wearable's transport took (a failed send is dropped_send);
        # every offered frame is delivered, dropped by one cause, or still pending
        lk.bytes = int(ev.get("bytes_delivered", lk.bytes))
        lk.frames = int(ev.get("frames_delivered", lk.frames))
        for cause in DROP_CAUSES:
            setattr(lk, f"dropped_{cause}", int(ev.get(f"dropped_{cause}", 0)))
        lk.dropped = sum(lk.drops().values())
        lk.queue_bytes = int(ev.get("queue_bytes", 0))
        lk.in_outage = bool(ev.get("in_outage", False))

    def _on_edge(self, ev: dict[str, Any]) -> None:
        self.edge_stats = {"decode": ev.get("decode", {}), "merge": ev.get("merge", {})}

    def _on_result(self, ev: dict[str, Any]) -> None:
        sid = int(ev["sample"])
        during = bool(ev.get("during_outage", False))
        self.results[sid] = SampleResult(sample=sid, status=ev["status"], correct=bool(ev.get("correct", False)),
                                         latency_ms=ev.get("latency_ms"), missing=tuple(ev.get("missing", ())),
                                         during_outage=during)
        unc = ev.get("transit_uncertainty_ms") or {}
        for board, ms in (ev.get("transit_ms") or {}).items():
            lk = self.links.get(self._link_of_board.get(board, ""))
            if lk is not None:
                lk.transit_ms.append(float(ms))
                if board in unc:
                    lk.transit_uncertainty_ms.append(float(unc[board]))
        edge = next((b for b in self.boards.values() if b.role == "edge"), None)
        if edge is not None and ev["status"] != "timed_out":
            edge.samples += 1

    def _on_late_result(self, ev: dict[str, Any]) -> None:
        self.late_results += 1

    def _on_fault(self, ev: dict[str, Any]) -> None:
        target = ev.get("link") or ev.get("board") or "?"
        t_run = float(ev["t"]) - (self.started_at_t or 0.0)
        self.notes.append(f"t={t_run:.1f}s {ev.get('kind')} {target} {ev.get('phase', '')}".rstrip())
        lk = self.links.get(ev.get("link", ""))
        if lk is not None and ev.get("kind") == "outage":
            lk.in_outage = ev.get("phase") != "end"

    def _on_malformed(self, ev: dict[str, Any]) -> None:
        board, reason = str(ev.get("board", "?")), str(ev.get("reason", "?"))
        per = self.malformed.setdefault(board, {})
        if reason not in per:
            self.notes.append(f"dropped a malformed message from {board}: {reason}")
        per[reason] = max(per.get(reason, 0), int(ev.get("count", 1)))

    def _on_fault_skipped(self, ev: dict[str, Any]) -> None:
        target = ev.get("link") or ev.get("board") or "?"
        self.notes.append(f"skipped: {ev.get('kind')} {target} ({ev.get('reason', '')})")

    def _on_error(self, ev: dict[str, Any]) -> None:
        b = self.boards.get(ev.get("board", ""))
        if b is not None:
            b.errors += 1
        self.notes.append(f"error {ev.get('board', '')}: {ev.get('error', '')}")

    def _on_run_end(self, ev: dict[str, Any]) -> None:
        self.ended = True

    def _on_interrupted(self, ev: dict[str, Any]) -> None:
        self.stopped = {"state": "interrupted", "reason": str(ev.get("reason", "")), "t": float(ev.get("t", 0.0))}
        self.notes.append(f"interrupted at t={self._run_time(ev):.1f}s: {self.stopped['reason']}")

    def _on_aborted(self, ev: dict[str, Any]) -> None:
        self.stopped = {"state": "aborted", "reason": str(ev.get("reason", "")), "t": float(ev.get("t", 0.0))}
        self.notes.append(f"aborted at t={self._run_time(ev):.1f}s: {self.stopped['reason']}")

    def _run_time(self, ev: dict[str, Any]) -> float:
        return float(ev.get("t", 0.0)) - (self.started_at_t or 0.0)

    @property
    def run_state(self) -> str:
        """finished | interrupted | aborted (once the run has ended), sampling or starting."""
        if self.stopped is not None:
            return self.stopped["state"]
        if self.ended:
            return "finished"
        return "sampling" if self.started_at_t is not None else "starting"

    # -- figures ---------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        with self.lock:
            res = list(self.results.values())
        complete = sum(r.status == "complete" for r in res)
        partial = sum(r.status == "partial" for r in res)
        timed_out = sum(r.status == "timed_out" for r in res)
        return {"resolved": len(res), "complete": complete, "partial": partial, "completed": complete + partial,
                "timed_out": timed_out, "correct": sum(r.correct for r in res)}

    @staticmethod
    def _acc(rs: list[SampleResult]) -> float | None:
        return _r(sum(r.correct for r in rs) / len(rs), 4) if rs else None

    def summary(self) -> dict[str, Any]:
        """The figures of ``summary.json`` (and the demo's ``--json`` line)."""
        with self.lock:
            res = sorted(self.results.values(), key=lambda r: r.sample)
            c = self.counts()
            lat = [r.latency_ms for r in res if r.latency_ms is not None and r.status != "timed_out"]
            n = self.samples or len(res)
            boards = [{"name": b.name, "role": b.role, "status": b.status, "samples": b.samples,
                       "compute_ms_p50": _r(percentile(b.compute_ms, 50)), "bytes_sent": b.bytes_sent,
                       "dropped": b.dropped, "clock_offset_ms": b.clock_offset_ms,
                       "clock_uncertainty_ms": b.clock_uncertainty_ms} for b in self.boards.values()]
            links = [{"name": lk.name, "from": lk.src, "to": lk.dst, "transport": lk.transport,
                      "shaper": lk.shaper, "rate_bps": lk.rate_bps, "bytes": lk.bytes, "frames": lk.frames, "dropped": lk.dropped,
                      **{f"dropped_{cause}": n for cause, n in lk.drops().items()},
                      "one_way_ms_p50": _r(percentile(lk.transit_ms, 50)),
                      "one_way_ms_p95": _r(percentile(lk.transit_ms, 95)),
                      "clock_uncertainty_ms_p50": _r(percentile(lk.transit_uncertainty_ms, 50))}
                     for lk in self.links.values()]
            triggered = max(self.triggered, c["resolved"])
            asked = n if self.stopped is None else triggered   # a run stopped early: the samples it triggered
            return {
                "run_id": self.run_id, "run_dir": self.run_dir, "dataset": self.dataset,
                "state": self.run_state, "stopped": dict(self.stopped) if self.stopped else None,
                "samples": n, "triggered": triggered, "not_triggered": max(n - triggered, 0),
                "completed": c["completed"], "complete": c["complete"], "partial": c["partial"],
                "timed_out": c["timed_out"], "unresolved": triggered - c["resolved"],
                "accuracy": _r(c["correct"] / asked, 4) if asked else None,
                "accuracy_all_parts": self._acc([r for r in res if r.status == "complete"]),
                "accuracy_partial": self._acc([r for r in res if r.status == "partial"]),
                "accuracy_during_outage": self._acc([r for r in res if r.during_outage]),
                "samples_during_outage": sum(r.during_outage for r in res),
                "latency_ms": {"p50": _r(percentile(lat, 50)), "p95": _r(percentile(lat, 95)),
                               "max": _r(max(lat)) if lat else None},
                "late_results": self.late_results,
                "malformed": {b: dict(per) for b, per in self.malformed.items()},
                "boards": boards, "links": links,
                "energy": {b.name: e for b in self.boards.values() if (e := b.energy_summary()) is not None},
                "broker": self.broker.get("kind"), "broker_auth": self.broker.get("auth"), "edge": self.edge_stats,
                "duration_s": _r(self.t, 2),
            }
