"""The report of one run directory, and of several runs side by side.

Holds ``RunData`` (what one run's ``events.jsonl`` and ``summary.json`` say, folded through
``testbed.runstate.RunState`` so the report reads the events by the same rules as the
dashboard and the summary), ``load_run`` (refuses, in one line, a folder that is not a run or
an event log that is not one), ``is_run_dir``, ``run_report`` (a run's figures and tables:
accuracy over time with each link's outages shaded, latency and one-way CDFs, per-link
timelines, energy per inference) and ``runs_report`` (several runs: every summary figure side
by side with its differences, overlaid accuracy and CDFs).

It reads a run directory and never writes into it; figures go to the folder it is given.
Times are seconds since the run's first trigger (``sampling_start``), the run clock the fault
schedule and the dashboard use.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.report.compare import compare_rows, flatten_summary, format_rel, format_value
from testbed.report.document import FigureFile, Report, Section, Table
from testbed.report.figures import cdf, colour, legend, new_figure, no_data, save_png, shade_windows
from testbed.runstate import DROP_CAUSES, RunState, SampleResult, read_events

__all__ = ["LinkSeries", "RunData", "is_run_dir", "load_run", "load_summary", "rolling_accuracy", "run_report",
           "runs_report", "comparison_section"]

EVENTS = "events.jsonl"
SUMMARY = "summary.json"


@dataclass
class LinkSeries:
    """One link over the run: its snapshots from ``link`` events (cumulative drops by cause,
    queue depth) and the windows it was down."""

    name: str
    t: list[float] = field(default_factory=list)
    drops: dict[str, list[int]] = field(default_factory=lambda: {c: [] for c in DROP_CAUSES})
    queue_bytes: list[int] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    outage_source: str = ""          # "fault events" | "link events" | "" (never down)


@dataclass
class RunData:
    path: Path
    summary: dict[str, Any]
    summary_source: str              # "summary.json" | "events.jsonl" (no readable summary.json)
    state: RunState
    t_end: float                     # run seconds of the last event
    samples: list[tuple[float, SampleResult]]   # (trigger time, result), by trigger time
    links: dict[str, LinkSeries]
    kills: list[tuple[float, str]]
    power: dict[str, list[tuple[float, float]]]  # board -> (t, mean W of a batch of readings)

    @property
    def name(self) -> str:
        return self.path.name


def is_run_dir(path: Path) -> bool:
    """A folder a run wrote: it holds ``events.jsonl``."""
    return path.is_dir() and (path / EVENTS).is_file()


def _require_run_dir(path: Path) -> None:
    if not is_run_dir(path):
        raise ConfigError(f"not a run directory (no {EVENTS}); expected a folder `testbed run` wrote",
                          file=str(path))


def _events(path: Path) -> list[dict[str, Any]]:
    """The run's events; ConfigError (one line) when ``path`` is not a run or its log is not a run's."""
    _require_run_dir(path)
    events = list(read_events(path / EVENTS))
    if not any(ev.get("type") == "run_start" for ev in events):
        raise ConfigError(f"{EVENTS} is not a run's event log (no run_start event among {len(events)} readable "
                          f"events); expected the log `testbed run` writes", file=str(path))
    return events


def load_summary(path: Path) -> dict[str, Any]:
    """A run's summary: its summary.json, else what its events give (ConfigError as ``load_run``)."""
    path = Path(path)
    _require_run_dir(path)
    try:
        doc = json.loads((path / SUMMARY).read_text())
        if isinstance(doc, dict):
            return doc
    except (OSError, ValueError):
        pass
    return RunState().apply_all(_events(path)).summary()


def load_run(path: Path) -> RunData:
    """Read a run directory; ConfigError (one line) when it is not one or its log is not a run's."""
    path = Path(path)
    events = _events(path)
    state, t_end, links, kills, power, triggers = _fold(events)
    summary, source = _summary(path, state)
    samples = sorted(((triggers.get(sid, t_end), r) for sid, r in state.results.items()),
                     key=lambda tr: (tr[0], tr[1].sample))
    return RunData(path=path, summary=summary, summary_source=source, state=state, t_end=t_end, samples=samples,
                   links=links, kills=kills, power=power)


def _fold(events: list[dict[str, Any]]) -> tuple[RunState, float, dict[str, LinkSeries], list[tuple[float, str]],
                                                dict[str, list[tuple[float, float]]], dict[int, float]]:
    """Apply every event to a RunState, keeping the time series the state only holds the latest of."""
    state = RunState()
    links: dict[str, LinkSeries] = {}
    fault_edges: dict[str, list[tuple[float, str]]] = {}
    flags: dict[str, list[tuple[float, bool]]] = {}
    kills: list[tuple[float, str]] = []
    power: dict[str, list[tuple[float, float]]] = {}
    triggers: dict[int, float] = {}
    t0 = 0.0
    for ev in events:
        bad = state.bad_events
        state.apply(ev)
        if state.bad_events != bad:
            continue
        kind = ev.get("type")
        if kind == "sampling_start":
            t0 = float(ev["t"])
        t = float(ev.get("t", 0.0)) - t0
        if kind == "trigger":
            triggers[int(ev["sample"])] = t
        elif kind == "result":   # a result whose trigger is not in the log: its arrival less its latency
            lat = ev.get("latency_ms")
            triggers.setdefault(int(ev["sample"]), t - (float(lat) / 1e3 if isinstance(lat, (int, float)) else 0.0))
        elif kind == "link" and ev.get("link") in state.links:
            lk = state.links[ev["link"]]
            series = links.setdefault(lk.name, LinkSeries(name=lk.name))
            series.t.append(t)
            for cause, n in lk.drops().items():
                series.drops[cause].append(n)
            series.queue_bytes.append(lk.queue_bytes)
            flags.setdefault(lk.name, []).append((t, lk.in_outage))
        elif kind == "fault" and ev.get("kind") == "outage" and ev.get("link"):
            fault_edges.setdefault(str(ev["link"]), []).append((t, str(ev.get("phase", ""))))
        elif kind == "fault" and ev.get("kind") == "kill":
            kills.append((t, str(ev.get("board", "?"))))
        elif kind == "power" and ev.get("mean_w") is not None and ev.get("board") in state.boards:
            power.setdefault(str(ev["board"]), []).append((t, float(ev["mean_w"])))
    if state.started_at_t is None:
        t0 = 0.0
    t_end = max(0.0, state.t - t0)
    for name in state.links:
        series = links.setdefault(name, LinkSeries(name=name))
        if fault_edges.get(name):
            series.outages, series.outage_source = _windows_from_edges(fault_edges[name], t_end), "fault events"
        else:
            series.outages = _windows_from_flags(flags.get(name, []), t_end)
            series.outage_source = "link events" if series.outages else ""
    return state, t_end, links, kills, power, triggers


def _windows_from_edges(edges: list[tuple[float, str]], t_end: float) -> list[tuple[float, float]]:
    """Outage windows from a link's ``fault`` start/end events; an unended one lasts to the end."""
    windows, start = [], None
    for t, phase in sorted(edges):
        if phase == "start" and start is None:
            start = t
        elif phase == "end" and start is not None:
            windows.append((start, t))
            start = None
    if start is not None:
        windows.append((start, max(t_end, start)))
    return windows


def _windows_from_flags(flags: list[tuple[float, bool]], t_end: float) -> list[tuple[float, float]]:
    """Outage windows from the ``in_outage`` flag of a link's periodic snapshots (to their resolution)."""
    windows, start = [], None
    for t, down in flags:
        if down and start is None:
            start = t
        elif not down and start is not None:
            windows.append((start, t))
            start = None
    if start is not None:
        windows.append((start, max(t_end, start)))
    return windows


def _summary(path: Path, state: RunState) -> tuple[dict[str, Any], str]:
    """The run's summary.json, or the summary its events give when that is missing or unreadable."""
    try:
        doc = json.loads((path / SUMMARY).read_text())
        if isinstance(doc, dict):
            return doc, SUMMARY
    except (OSError, ValueError):
        pass
    return state.summary(), EVENTS


# -- figures --------------------------------------------------------------------------------

def rolling_accuracy(samples: list[tuple[float, SampleResult]], *, window: int) -> tuple[list[float], list[float]]:
    """Accuracy of the last ``window`` resolved samples at each sample's trigger time (a timed-out
    sample counts as wrong)."""
    xs, ys, correct = [], [], []
    for t, r in samples:
        correct.append(1 if r.correct else 0)
        recent = correct[-window:]
        xs.append(t)
        ys.append(sum(recent) / len(recent))
    return xs, ys


def _window(run: RunData) -> int:
    rate = run.state.rate_hz or 0.0
    return max(5, round(rate)) if rate else 10   # about one second of samples


def accuracy_figure(runs: list[RunData], out: Path) -> FigureFile:
    """Rolling accuracy over trigger time, each link's outages shaded (per run when several)."""
    fig, axes = new_figure(height_in=4.2)
    ax = axes[0][0]
    single = len(runs) == 1
    link_names = sorted({n for run in runs for n in run.links})
    for i, run in enumerate(runs):
        xs, ys = rolling_accuracy(run.samples, window=_window(run))
        ax.plot(xs, ys, color="black" if single else colour(i), lw=1.6,
                label="accuracy" if single else run.name)
        for name, series in run.links.items():
            label = f"{name} down" if single else f"{run.name}: {name} down"
            shade = colour(link_names.index(name) + 1) if single else colour(i)   # several runs: the run's colour
            shade_windows(ax, series.outages, color=shade, label=label)
        for t, board in run.kills:
            ax.axvline(t, color="#444", ls=":", lw=1)
            ax.annotate(f"kill {board}", (t, 0.02), fontsize=8, rotation=90, color="#444")
        if single:
            _rug(ax, run)
    if not any(run.samples for run in runs):
        no_data(ax, "no sample was resolved")
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("trigger time (s since the first trigger)")
    ax.set_ylabel(f"accuracy (last {_window(runs[0])} samples)")
    ax.grid(alpha=0.3)
    legend(ax, loc="lower left")
    ax.set_title("Accuracy over time" + ("" if single else ", runs overlaid"))
    caption = ("Rolling accuracy by trigger time; shaded: each link's outages"
               + ("; ticks at the bottom: partial (orange) and timed-out (red) samples" if single else ""))
    return save_png(fig, out / "accuracy.png", caption=caption)


def _rug(ax: Any, run: RunData) -> None:
    for status, col in (("partial", "#ff7f0e"), ("timed_out", "#d62728")):
        ts = [t for t, r in run.samples if r.status == status]
        if ts:
            ax.plot(ts, [-0.015] * len(ts), "|", color=col, ms=8)


def latency_figure(runs: list[RunData], out: Path) -> FigureFile:
    """End-to-end latency CDF (left) and each link's one-way time CDF (right)."""
    fig, axes = new_figure(width_in=11.0, height_in=4.2, cols=2)
    single = len(runs) == 1
    left, right = axes[0][0], axes[0][1]
    for i, run in enumerate(runs):
        lat = [r.latency_ms for _, r in run.samples if r.latency_ms is not None and r.status != "timed_out"]
        if lat:
            xs, ys = cdf(lat)
            left.step(xs, ys, where="post", color="black" if single else colour(i),
                      label=f"{run.name} (n={len(lat)})" if not single else f"n={len(lat)}")
        for j, (name, lk) in enumerate(run.state.links.items()):
            if lk.transit_ms:
                xs, ys = cdf(lk.transit_ms)
                right.step(xs, ys, where="post", color=colour(j), ls="-" if single else ("-", "--", ":", "-.")[i % 4],
                           label=name if single else f"{run.name}: {name}")
    for ax, title, xlabel in ((left, "End-to-end latency", "latency (ms), trigger to result"),
                              (right, "One-way time per link", "one-way time (ms), send to edge arrival")):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("fraction of samples")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        legend(ax, loc="lower right", empty="no measurement")
    fig.tight_layout()
    return save_png(fig, out / "latency.png",
                    caption="CDFs of end-to-end latency (resolved samples) and of each link's one-way time "
                            "(clock-sync corrected)")


def links_figure(run: RunData, out: Path) -> FigureFile:
    """One panel per link: down windows shaded, cumulative drops by cause, queue depth if any."""
    names = list(run.state.links) or ["(no links)"]
    fig, axes = new_figure(height_in=1.0 + 1.8 * len(names), rows=len(names), sharex=True)
    for i, name in enumerate(names):
        ax = axes[i][0]
        series = run.links.get(name)
        if series is None:
            no_data(ax, "no link")
            continue
        shade_windows(ax, series.outages, color="#d62728", label="down")
        for j, cause in enumerate(DROP_CAUSES):
            if any(series.drops[cause]):
                ax.step(series.t, series.drops[cause], where="post", color=colour(j + 1), label=f"dropped: {cause}")
        ax.set_ylabel("frames dropped")
        ax.set_title(f"{name}" + (f" (outages from {series.outage_source})" if series.outage_source else ""),
                     fontsize=9, loc="left")
        if not series.outages and not any(any(v) for v in series.drops.values()):
            no_data(ax, "never down, nothing dropped")
        if any(series.queue_bytes):
            twin = ax.twinx()
            twin.plot(series.t, series.queue_bytes, color="#7f7f7f", lw=1, label="queue (bytes)")
            twin.set_ylabel("queue (bytes)")
        ax.grid(alpha=0.3)
        legend(ax, loc="upper left")
    axes[-1][0].set_xlabel("time (s since the first trigger)")
    first = min([0.0, *(s.t[0] for s in run.links.values() if s.t)])
    axes[-1][0].set_xlim(left=first, right=max(run.t_end, first + 1e-3))
    fig.tight_layout()
    return save_png(fig, out / "links.png",
                    caption="Per link: when it was down (shaded), frames dropped by cause (cumulative) and the "
                            "shaper's queue depth when it held any")


def has_energy(run: RunData) -> bool:
    return any(b.mj_per_inference for b in run.state.boards.values()) or bool(run.summary.get("energy"))


def energy_figure(run: RunData, out: Path) -> FigureFile:
    """Energy per inference per board (box plots) and each board's mean power over time."""
    fig, axes = new_figure(width_in=11.0, height_in=4.2, cols=2)
    left, right = axes[0][0], axes[0][1]
    boards = [b for b in run.state.boards.values() if b.mj_per_inference]
    if boards:
        left.boxplot([b.mj_per_inference for b in boards], showfliers=False)
        left.set_xticks(range(1, len(boards) + 1), [b.name for b in boards])
        active = [b for b in boards if b.active_mj_per_inference]
        if active:
            pos = [boards.index(b) + 1 for b in active]
            left.plot(pos, [sorted(b.active_mj_per_inference)[len(b.active_mj_per_inference) // 2] for b in active],
                      "D", color="#ff7f0e", label="active (above idle), median")
            left.legend(fontsize=8)
    else:
        no_data(left, "no per-inference energy")
    left.set_ylabel("mJ per inference")
    left.set_title("Energy per inference" + _energy_kind(run))
    for i, (board, pts) in enumerate(sorted(run.power.items())):
        right.plot([p[0] for p in pts], [p[1] for p in pts], color=colour(i), lw=1, label=board)
    if run.power:
        right.legend(fontsize=8)
    else:
        no_data(right, "no power readings")
    right.set_xlabel("time (s since the first trigger)")
    right.set_ylabel("mean power (W)")
    right.set_title("Board power")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return save_png(fig, out / "energy.png",
                    caption="Energy per inference per board (box: quartiles, whiskers 1.5 IQR) and mean power "
                            "per batch of readings" + _energy_kind(run))


def _energy_kind(run: RunData) -> str:
    meters = [m for m in (run.summary.get("energy") or {}).values() if isinstance(m, dict)]
    if not meters:
        return ""
    if all(m.get("modelled") for m in meters):
        return " (modelled)"
    return " (measured)" if not any(m.get("modelled") for m in meters) else " (some modelled)"


# -- tables ---------------------------------------------------------------------------------

def _fmt(v: Any) -> str:
    return format_value(v)


def _pct(v: Any) -> str:
    return "–" if not isinstance(v, (int, float)) else f"{100 * v:.1f} %"


def headline_table(run: RunData) -> Table:
    s = run.summary
    lat = s.get("latency_ms") or {}
    rows = [["state", _fmt(s.get("state"))], ["samples", _fmt(s.get("samples"))],
            ["triggered", _fmt(s.get("triggered"))], ["complete", _fmt(s.get("complete"))],
            ["partial", _fmt(s.get("partial"))], ["timed out", _fmt(s.get("timed_out"))],
            ["accuracy", _pct(s.get("accuracy"))], ["accuracy, all parts", _pct(s.get("accuracy_all_parts"))],
            ["accuracy, partial", _pct(s.get("accuracy_partial"))],
            ["accuracy during outage", _pct(s.get("accuracy_during_outage"))],
            ["samples during outage", _fmt(s.get("samples_during_outage"))],
            ["latency p50 (ms)", _fmt(lat.get("p50"))], ["latency p95 (ms)", _fmt(lat.get("p95"))],
            ["latency max (ms)", _fmt(lat.get("max"))], ["duration (s)", _fmt(s.get("duration_s"))]]
    return Table(columns=["figure", "value"], rows=rows, title="Summary")


def links_table(run: RunData) -> Table:
    rows = []
    for lk in run.summary.get("links") or []:
        if not isinstance(lk, dict):
            continue
        rows.append([str(lk.get("name")), str(lk.get("transport", "")), _fmt(lk.get("rate_bps")),
                     _fmt(lk.get("frames")), _fmt(lk.get("dropped")),
                     *(_fmt(lk.get(f"dropped_{c}")) for c in DROP_CAUSES),
                     _fmt(lk.get("one_way_ms_p50")), _fmt(lk.get("one_way_ms_p95")),
                     _fmt(len(run.links[lk["name"]].outages) if lk.get("name") in run.links else None)])
    return Table(columns=["link", "transport", "rate (bit/s)", "frames", "dropped",
                          *(f"dropped: {c}" for c in DROP_CAUSES), "one-way p50 (ms)", "one-way p95 (ms)", "outages"],
                 rows=rows, title="Links", align="ll" + "r" * 11)


def energy_table(run: RunData) -> Table:
    rows = []
    for board, e in (run.summary.get("energy") or {}).items():
        if not isinstance(e, dict):
            continue
        mj, act = e.get("mj_per_inference") or {}, e.get("active_mj_per_inference") or {}
        rows.append([board, f"{e.get('meter')}/{e.get('rail')}" + (" (modelled)" if e.get("modelled") else ""),
                     _fmt(e.get("inferences")), _fmt(mj.get("p50")), _fmt(mj.get("p95")), _fmt(act.get("p50")),
                     _fmt(e.get("mean_w")), _fmt(e.get("idle_w")), _fmt(e.get("joules"))])
    return Table(columns=["board", "meter", "inferences", "mJ/inf p50", "mJ/inf p95", "active mJ/inf p50",
                          "mean W", "idle W", "J"], rows=rows, title="Energy", align="ll" + "r" * 7)


def all_figures_table(run: RunData) -> Table:
    flat = flatten_summary(run.summary)
    return Table(columns=["figure", "value"], rows=[[k, _fmt(v)] for k, v in flat.items()],
                 title=f"Every summary figure ({len(flat)})", collapsed=True)


def run_report(run: RunData, *, out: Path) -> Report:
    """The report of one run; its figures are written into ``out``."""
    figures = [accuracy_figure([run], out), latency_figure([run], out), links_figure(run, out)]
    if has_energy(run):
        figures.append(energy_figure(run, out))
    lines = [f"Run directory: {run.path}", f"Dataset: {run.summary.get('dataset') or '?'}; state: "
             f"{run.summary.get('state', '?')}; figures from {run.summary_source}"]
    if run.summary_source != SUMMARY:
        lines.append("summary.json is missing or unreadable: the figures were recomputed from events.jsonl")
    if run.state.bad_events:
        lines.append(f"{run.state.bad_events} events were skipped: their fields are not what their type carries")
    lines += [f"note: {n}" for n in run.state.notes[:20]]
    tables = [headline_table(run), links_table(run)]
    if run.summary.get("energy"):
        tables.append(energy_table(run))
    tables.append(all_figures_table(run))
    return Report(title=f"Run {run.summary.get('run_id') or run.name}", lines=lines,
                  sections=[Section(heading="Figures", figures=figures), Section(heading="Tables", tables=tables)])


# -- several runs ---------------------------------------------------------------------------

def comparison_section(runs: list[RunData]) -> Section:
    """Every summary figure of ``runs`` side by side, each against the first: the figures that
    differ, then every figure (folded)."""
    rows = compare_rows([flatten_summary(r.summary) for r in runs])
    letters = _letters(len(runs))
    columns = ["figure", *letters]
    for i in range(1, len(runs)):
        columns += [f"{letters[i]}−A", f"{letters[i]}/A−1"]

    def cells(row: Any) -> list[str]:
        out = [row.figure, *(_fmt(v) for v in row.values)]
        for i in range(1, len(runs)):
            out += [format_value(row.diff(i), signed=True), format_rel(row.rel(i))]
        return out

    differ = [cells(r) for r in rows if r.differs]
    every = Table(columns=columns, rows=[cells(r) for r in rows], title=f"Every summary figure ({len(rows)})",
                  collapsed=True)
    if not differ:
        return Section(heading="Differences", lines=["No summary figure differs."], tables=[every])
    return Section(heading="Differences", tables=[
        Table(columns=columns, rows=differ, title=f"Figures that differ ({len(differ)} of {len(rows)})"), every])


def _letters(n: int) -> list[str]:
    return [chr(ord("A") + i) if i < 26 else str(i) for i in range(n)]


def runs_report(runs: list[RunData], *, out: Path) -> Report:
    """Several runs side by side: their differences, overlaid accuracy and CDFs."""
    letters = _letters(len(runs))
    lines = [f"{letter}: {run.path} ({run.summary.get('state', '?')}, figures from {run.summary_source})"
             for letter, run in zip(letters, runs)]
    figures = [accuracy_figure(runs, out), latency_figure(runs, out)]
    return Report(title=" vs ".join(r.name for r in runs), lines=lines,
                  sections=[comparison_section(runs),
                            Section(heading="Figures, overlaid", figures=figures)])
