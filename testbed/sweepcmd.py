"""The ``testbed sweep`` command: its options, its progress display and its last JSON line.

Holds ``add_sweep_commands`` (the subparser), ``sweep_command`` and the two displays: plain
lines on stderr (``--headless`` or no terminal) and, on a terminal, a progress bar over the
points with an ETA above the live dashboard of the running point (read from its events.jsonl
as the run writes it). The sweep itself is testbed.report.sweep's; this module only wires it.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError

__all__ = ["add_sweep_commands", "sweep_command"]


def add_sweep_commands(sub: Any, *, threads_option: Callable[[argparse.ArgumentParser], None]) -> None:
    """Register ``sweep``; ``threads_option`` adds the CLI's one ``--threads`` option (as on run)."""
    p = sub.add_parser("sweep", help="run a grid of experiments (resumable); one run directory per point")
    p.add_argument("sweep", help="the sweep YAML file (base experiment, benches, grid)")
    p.add_argument("--inventory", help="run on this bench instead of the sweep file's benches")
    p.add_argument("--bench", action="append", help="a bench inventory (repeatable: benches run points in "
                                                    "parallel, one run each at a time); replaces the file's")
    p.add_argument("--out", help="the sweep folder (default sweeps/<name>); rerunning resumes it")
    p.add_argument("--cache", help="model cache folder (default $HBC_TESTBED_CACHE or ~/.cache/hbc-testbed)")
    threads_option(p)
    p.add_argument("--headless", action="store_true", help="progress lines on stderr, no live dashboard")
    p.add_argument("--dry-run", action="store_true", help="list the points and their keys, run nothing")
    p.add_argument("--json", action="store_true", help='print {"sweep_dir", "points", "done", "skipped", "failed"} '
                                                       "as one JSON line last on stdout")
    p.set_defaults(func=lambda a: sweep_command(
        Path(a.sweep), inventory=a.inventory, benches=a.bench, out=a.out, cache=a.cache, threads=a.threads,
        headless=a.headless, dry_run=a.dry_run, as_json=a.json))


def sweep_command(path: Path, *, inventory: str | None, benches: list[str] | None, out: str | None,
                  cache: str | None, threads: int | None, headless: bool, dry_run: bool, as_json: bool) -> int:
    from testbed.orchestrator import default_cache_dir
    from testbed.report.grid import expand, load_sweep
    from testbed.report.sweep import SweepInterrupted, run_sweep

    spec = load_sweep(path)
    if inventory and benches:
        raise ConfigError("expected either --inventory or --bench, not both", file="--inventory")
    bench_paths = [Path(b) for b in (benches or ([inventory] if inventory else []))] or list(spec.benches)
    sweep_dir = Path(out) if out else Path("sweeps") / spec.name
    cache_dir = Path(cache) if cache else default_cache_dir()
    if dry_run:
        return _dry_run(expand(spec, bench_paths), bench_paths, as_json=as_json)
    # Ctrl-C must reach this process even when it was started as a background job (SIGINT ignored),
    # and the runs it starts then inherit SIGINT at its default, so a forwarded one stops them.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    display = _Display(live=not headless and sys.stderr.isatty())
    code = 0
    try:
        with display:
            result = run_sweep(spec, benches=bench_paths, sweep_dir=sweep_dir, cache_dir=cache_dir, threads=threads,
                               on_event=display.event)
    except SweepInterrupted as stop:
        result, code = stop.result, 130
    if code == 0 and result.failed:
        code = 1
    print(f"sweep {spec.name}: {counted(result.points, 'point')}, {result.done} done, {result.skipped} skipped (done "
          f"before), {result.failed} failed, {result.interrupted} interrupted, {result.pending} not run"
          f"\nsweep folder: {result.sweep_dir} (points.csv, sweep.json; testbed report {result.sweep_dir})",
          file=sys.stderr)
    if as_json:
        sys.stdout.write(json.dumps(result.as_json(), separators=(",", ":")) + "\n")
        sys.stdout.flush()
    return code


def counted(n: int, one: str, many: str | None = None) -> str:
    """``n`` and the noun, plural unless n is 1: "1 point", "3 benches"."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def _dry_run(points: list[Any], benches: list[Path], *, as_json: bool) -> int:
    for p in points:
        where = ", ".join(str(benches[i]) for i in p.benches)
        print(f"{p.key}  {p.label}  [{where}]", file=sys.stderr if as_json else sys.stdout)
    if as_json:
        doc = {"points": [{"key": p.key, "label": p.label, "values": dict(p.values), "benches":
                           [str(benches[i]) for i in p.benches], "set": p.set_args()} for p in points]}
        sys.stdout.write(json.dumps(doc, separators=(",", ":"), default=str) + "\n")
    return 0


class _Display:
    """Plain progress lines on stderr, or (``live``) a bar over the points above the running
    point's dashboard."""

    def __init__(self, *, live: bool) -> None:
        self.live = live
        self.t0 = time.monotonic()
        self.total = 0
        self.finished = 0
        self.seconds: list[float] = []
        self.benches = 1
        self._say_lock = threading.Lock()
        self._live: Any = None
        self._tail: _Tail | None = None

    def __enter__(self) -> _Display:
        # A copy of stderr taken now: a bundle build in this process sends fd 2 to its build log
        # (testbed.partition.build), and the other benches' lines must still reach the terminal.
        try:
            self.stream: Any = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1, encoding="utf-8",
                                         errors="replace")
            self._own = True
        except (AttributeError, OSError, ValueError):   # stderr without a descriptor (captured)
            self.stream, self._own = sys.stderr, False
        if self.live:
            from rich.console import Console, Group
            from rich.live import Live
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            from testbed.dashboard import render
            self.console = Console(file=self.stream)
            self.bar = Progress(TextColumn("sweep {task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total} points"), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task("", total=None)

            def renderable() -> Any:
                tail = self._tail
                return Group(self.bar, render(tail.state)) if tail is not None else self.bar
            self._live = Live(get_renderable=renderable, console=self.console, refresh_per_second=4)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tail is not None:
            self._tail.close()
        if self._live is not None:
            self._live.__exit__(None, None, None)
        if self._own:
            self.stream.close()

    def say(self, line: str) -> None:
        with self._say_lock:   # benches report from their own threads: one whole line at a time
            if self._live is not None:
                self._live.console.print(line, markup=False, highlight=False)
            else:
                self.stream.write(line + "\n")
                self.stream.flush()

    def event(self, kind: str, point: Any, details: Mapping[str, Any]) -> None:
        if kind == "plan":
            self.benches = max(1, int(details["benches"]))
            self.set_total(int(details["todo"]))
            self.say(f"{counted(details['points'], 'point')}, {details['todo']} to run on "
                     f"{counted(details['benches'], 'bench', 'benches')}")
        elif kind == "prepare":
            self.say(f"bundle for {point.label}")
        elif kind == "say":
            self.say(str(details["line"]))
        elif kind == "skip":
            self.say(f"skip {point.label}: finished before")
        elif kind == "start":
            self.say(f"run  {point.label} on {details['bench']}")
            if self._live is not None:
                if self._tail is not None:
                    self._tail.close()
                self._tail = _Tail(Path(details["runs_dir"]), set(details["before"]))
        elif kind == "end":
            self.finished += 1
            self.seconds.append(float(details.get("seconds") or 0.0))
            s = details.get("summary") or {}
            acc = s.get("accuracy")
            if details["state"] == "interrupted":
                what = f"stopped after {s.get('triggered', 0)} of {s.get('samples', '?')} samples; reruns next time"
            elif isinstance(acc, (int, float)):
                what = (f"accuracy {acc:.3f}, {s.get('complete')} complete, {s.get('partial')} partial, "
                        f"{s.get('timed_out')} timed out")
            else:
                what = details.get("error") or f"exit {details.get('exit')}"
            self.say(f"[{self.finished}/{self.total}] {details['state']} {point.label} in {details.get('seconds')} s: "
                     f"{what}{self._eta() if details['state'] == 'finished' else ''}")
            if self._live is not None:
                self.bar.update(self.task, advance=1)

    def _eta(self) -> str:
        left = self.total - self.finished
        if left <= 0 or not self.seconds:
            return ""
        eta = sum(self.seconds) / len(self.seconds) * left / self.benches
        return f"; ETA {eta / 60:.0f} min" if eta >= 90 else f"; ETA {eta:.0f} s"

    def set_total(self, n: int) -> None:
        self.total = n
        if self._live is not None:
            self.bar.update(self.task, total=n)


class _Tail:
    """A RunState fed from the running point's events.jsonl as it grows (a thread polls it)."""

    def __init__(self, runs_dir: Path, before: set[str]) -> None:
        from testbed.runstate import RunState
        self.state = RunState()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, args=(runs_dir, before), daemon=True)
        self._thread.start()

    def _follow(self, runs_dir: Path, before: set[str]) -> None:
        path: Path | None = None
        while path is None and not self._stop.wait(0.2):
            new = [d for d in runs_dir.iterdir() if d.is_dir() and d.name not in before and (d / "events.jsonl").exists()]
            path = new[0] / "events.jsonl" if new else None
        if path is None:
            return
        with open(path, encoding="utf-8", errors="replace") as fh:
            buf = ""
            while True:
                chunk = fh.read()
                if chunk:
                    buf += chunk
                    *lines, buf = buf.split("\n")
                    for line in lines:
                        try:
                            ev = json.loads(line)
                        except ValueError:
                            continue
                        if isinstance(ev, dict):
                            self.state.apply(ev)
                elif self._stop.wait(0.25):
                    return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
