"""The terminal dashboard: a rich rendering of a RunState, live (4 Hz) or replayed.

Holds ``render`` (RunState -> one rich renderable: header with progress, boards table, links
table, accuracy/latency panel, notes), ``LiveDashboard`` (rich Live refreshing at 4 Hz while
a run goes on, as a context manager) and ``replay`` (feed a finished events.jsonl through a
RunState, optionally paced, and render it). It reads state only; it never drives a run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from testbed.runstate import BoardState, RunState, drop_causes, percentile, read_events

_STATUS_STYLE = {"ready": "green", "running": "green", "starting": "yellow", "stopped": "dim",
                 "offline": "bold red", "error": "bold red"}


def _fmt(v: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "–" if v is None else f"{v:{spec}}{unit}"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _header(st: RunState) -> Table:
    c = st.counts()
    grid = Table.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(justify="right")
    title = Text.assemble(("hbc-testbed ", "bold cyan"), (st.run_id or "(no run)", "bold"),
                          (f"  {st.dataset}" if st.dataset else "", "dim"))
    state = st.run_state
    t_run = st.t - st.started_at_t if st.started_at_t is not None else 0.0
    right = Text(state, style="bold red" if state in ("interrupted", "aborted") else "")
    right.append(f"  t={t_run:6.1f}s  broker={st.broker.get('kind', '?')}")
    if st.broker.get("auth") == "anonymous":   # anyone who reaches it may publish on the run's topics
        right.append(" (anonymous)", style="bold yellow")
    grid.add_row(title, right)
    bar = ProgressBar(total=max(1, st.samples), completed=c["resolved"], width=None)
    grid.add_row(bar, Text(f"{c['resolved']}/{st.samples} resolved, {st.triggered} triggered"))
    return grid


def _boards(st: RunState) -> Table:
    t = Table(title="boards", expand=True, title_justify="left")
    for col, just in (("board", "left"), ("role", "left"), ("status", "left"), ("samples", "right"),
                      ("compute p50", "right"), ("sent", "right"), ("dropped", "right"), ("clock", "right"),
                      ("power", "right"), ("mJ/inf p50", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for b in st.boards.values():
        style = _STATUS_STYLE.get(b.status, "")
        power, per_inference = _energy_cells(b)
        t.add_row(b.name, b.role, Text(b.status, style=style), str(b.samples),
                  _fmt(percentile(b.compute_ms, 50), ".2f", " ms") if b.role == "wearable" else "–",
                  _bytes(b.bytes_sent) if b.role == "wearable" else "–", str(b.dropped),
                  "–" if b.clock_uncertainty_ms is None
                  else f"{b.clock_offset_ms:+.2f} ±{b.clock_uncertainty_ms:.2f} ms", power, per_inference)
    return t


def _energy_cells(b: BoardState) -> tuple[Text, Text]:
    """Watts now and mJ per inference (p50), each marked when the figure is modelled, not measured."""
    if b.meter is None:
        return Text("–"), Text("–")
    modelled = bool(b.meter.get("modelled"))
    mark = Text(" modelled", style="dim italic") if modelled else Text("")
    power = Text(_fmt(b.power_w, ".2f", " W")) + mark
    per = Text(_fmt(percentile(b.mj_per_inference, 50), ".2f", " mJ")) + mark
    return power, per


def _links(st: RunState) -> Table:
    t = Table(title="links", expand=True, title_justify="left")
    for col, just in (("link", "left"), ("transport", "left"), ("rate", "right"), ("bytes", "right"),
                      ("frames", "right"), ("drops", "right"), ("queue", "right"), ("one-way p50", "right"),
                      ("now", "left")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for lk in st.links.values():
        rate = "∞" if lk.rate_bps is None else f"{lk.rate_bps / 1000:.1f} kbit/s"
        now = Text("OUTAGE", style="bold red") if lk.in_outage else Text("up", style="green")
        causes = drop_causes(lk.drops())
        drops = f"{lk.dropped}" + (f" ({causes})" if causes else "")
        t.add_row(lk.name, f"{lk.transport} ({lk.shaper})", rate, _bytes(lk.bytes), str(lk.frames), drops,
                  _bytes(lk.queue_bytes), _fmt(percentile(lk.transit_ms, 50), ".2f", " ms"), now)
    return t


def _figures(st: RunState) -> Table:
    s = st.summary()
    t = Table.grid(padding=(0, 3))
    for _ in range(4):
        t.add_column()

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f} %"

    c = st.counts()
    running = c["correct"] / c["resolved"] if c["resolved"] else None
    label = "accuracy" if st.ended else f"accuracy ({c['resolved']})"
    t.add_row(Text(label, style="bold"), pct(s["accuracy"] if st.ended else running),
              Text("latency p50", style="bold"), _fmt(s["latency_ms"]["p50"], ".1f", " ms"))
    t.add_row("all parts", pct(s["accuracy_all_parts"]), Text("latency p95", style="bold"),
              _fmt(s["latency_ms"]["p95"], ".1f", " ms"))
    t.add_row("partial", f"{pct(s['accuracy_partial'])} of {s['partial']}", "timed out", str(s["timed_out"]))
    t.add_row("during outage", f"{pct(s['accuracy_during_outage'])} of {s['samples_during_outage']}",
              "complete", str(s["complete"]))
    bench_mj, modelled = _bench_energy(st)
    if bench_mj is not None:
        t.add_row(Text("energy / inference", style="bold"),
                  Text(f"{bench_mj:.2f} mJ") + (Text(" modelled", style="dim italic") if modelled else Text("")),
                  "", "")
    return t


def _bench_energy(st: RunState) -> tuple[float | None, bool]:
    """The whole bench's energy per inference: the sum over boards of each board's p50 (None
    before any), and whether any of it is modelled."""
    metered = [b for b in st.boards.values() if b.meter is not None and b.mj_per_inference]
    if not metered:
        return None, False
    return (sum(percentile(b.mj_per_inference, 50) or 0.0 for b in metered),
            any(bool(b.meter and b.meter.get("modelled")) for b in metered))


def render(st: RunState) -> Group:
    """The whole dashboard for the current state."""
    with st.lock:
        parts: list[Any] = [_header(st), _boards(st), _links(st),
                            Panel(_figures(st), title="figures", title_align="left")]
        if st.notes:
            parts.append(Text("\n".join(st.notes[-6:]), style="dim"))
        return Group(*parts)


class LiveDashboard:
    """``with LiveDashboard(state): run()`` shows the state at 4 Hz on the terminal."""

    def __init__(self, state: RunState, *, console: Console | None = None, refresh_hz: float = 4.0) -> None:
        self.state = state
        self._live = Live(get_renderable=lambda: render(state), console=console or Console(),
                          refresh_per_second=refresh_hz, transient=False, redirect_stderr=False)

    def __enter__(self) -> LiveDashboard:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.refresh()
        self._live.__exit__(None, None, None)


def replay(path: Path, *, console: Console | None = None, speed: float = 0.0) -> RunState:
    """Render a recorded run. ``speed`` 0 shows the final state; >0 paces events (1 = real time)."""
    console = console or Console()
    st = RunState()
    events = list(read_events(path))
    if speed <= 0 or not console.is_terminal:
        st.apply_all(events)
        console.print(render(st))
        return st
    with Live(get_renderable=lambda: render(st), console=console, refresh_per_second=4):
        start = time.monotonic()
        for ev in events:
            due = start + float(ev.get("t", 0.0)) / speed
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            st.apply(ev)
    return st
