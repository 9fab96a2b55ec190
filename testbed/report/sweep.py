"""``testbed sweep``: the points of a grid run as ordinary runs, resumably, on one or more benches.

Holds ``run_sweep`` (expand the grid, then run each point that has no finished run as a
``testbed run --set ...`` child process on a free bench that can run it, one run per bench at a
time, benches in parallel, each point's bundle built or loaded first, one at a time, so its
offline expectation is known and the run finds it in the cache), ``SweepResult`` and the sweep
folder's format:

    sweeps/<name>/
      sweep.json          the grid, every point's key, state, run directory and bench; totals
      points.csv          one row per point: its description, its offline expectation and every
                          figure of its summary (testbed.report.compare.flatten_summary)
      points/<key>.json   one point's record: its overrides and every attempt (kept, never pruned)
      runs/<key>/<run>/   the point's run directories, ordinary ones (testbed report, monitor)
      logs/<key>.log      what the point's runs printed

A point is done when one of its runs finished; rerunning the sweep skips it, and reruns a point
whose run was interrupted or failed (the old run directory stays). A changed point has a new
key, so it runs. Ctrl-C stops the running points as ``testbed run`` stops (each child gets
SIGINT and writes its summary), records them as interrupted and exits 130.

A folder is used only when it is empty or holds a sweep.json of the same sweep name; nothing in
it is ever deleted.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.config import load_experiment, load_inventory
from testbed.errors import ConfigError
from testbed.report.grid import Point, SweepSpec, canonical_experiment, expand

__all__ = ["FORMAT", "SweepResult", "offline_expected_accuracy", "run_sweep", "open_sweep_dir"]

FORMAT = 1
DESCRIBE_COLUMNS = ("dataset", "students", "parts", "method", "seed", "availability", "mean_outage_s", "rate_bps",
                    "deadline_ms", "encoding")
LEADING_COLUMNS = ("key", "label", "state", "bench", "run_dir")
STOP_GRACE_S = 60.0   # a stopped child writes its summary; after this it is killed


@dataclass
class SweepResult:
    sweep_dir: Path
    points: int
    done: int = 0          # finished in this invocation
    skipped: int = 0       # finished before, not rerun
    failed: int = 0
    interrupted: int = 0
    pending: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"sweep_dir": str(self.sweep_dir), "points": self.points, "done": self.done, "skipped": self.skipped,
                "failed": self.failed, "interrupted": self.interrupted, "pending": self.pending}


# --------------------------------------------------------------------------- the folder


def open_sweep_dir(path: Path, *, name: str) -> None:
    """Make ``path`` this sweep's folder, or refuse one that holds anything else (one line)."""
    if path.exists() and not path.is_dir():
        raise ConfigError("exists and is not a folder; expected a sweep folder", file=str(path))
    if path.is_dir() and any(path.iterdir()):
        doc = _read_json(path / "sweep.json")
        if doc is None or doc.get("format") != FORMAT:
            raise ConfigError("holds files that are not a sweep's (no readable sweep.json); expected an empty "
                              "folder or this sweep's own (choose another with --out)", file=str(path))
        if doc.get("name") != name:
            raise ConfigError(f"is the folder of sweep {doc.get('name')!r}, not {name!r}; expected this sweep's own "
                              "folder (choose another with --out)", file=str(path))
    for sub in ("points", "runs", "logs"):
        (path / sub).mkdir(parents=True, exist_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- offline expectation


def offline_expected_accuracy(manifest: Mapping[str, Any], availability: float) -> float | None:
    """The bundle's offline accuracy expected at a link availability: each of the S students'
    links up independently with probability ``availability``, so k of them fail with the
    binomial probability, and every set of k failed students is equally likely, which is what
    the bundle's k-failure table averages over (None: no such table)."""
    try:   # a bundle is untrusted input: a malformed table gives no expectation, never an exception
        rows = (manifest.get("evaluation") or {}).get("resilience") or []
        s = int(manifest.get("students") or 0)
        by_k = {int(r["k"]): float(r["mean"]) for r in rows if isinstance(r, dict) and "k" in r and "mean" in r}
        classes = len(manifest.get("classes") or [])
    except (AttributeError, TypeError, ValueError):
        return None
    if s < 1 or not all(k in by_k for k in range(s)) or not all(0.0 <= v <= 1.0 for v in by_k.values()):
        return None
    chance = 1.0 / classes if classes else 0.0
    by_k.setdefault(s, chance)   # every student lost: the edge has nothing to merge
    q = 1.0 - availability
    return sum(math.comb(s, k) * q ** k * availability ** (s - k) * by_k[k] for k in range(s + 1))


# --------------------------------------------------------------------------- records and tables


@dataclass
class _Book:
    """The sweep's records, rewritten as points change (one lock: benches report in parallel)."""

    root: Path
    spec: SweepSpec
    points: list[Point]
    benches: Sequence[Path]
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    skipped: int = 0      # points finished before this invocation

    def load(self) -> None:
        """Read each point's record; a record whose label or description no longer matches the
        sweep file (same key: the configuration is unchanged, only its naming) is rewritten."""
        for p in self.points:
            path = self.root / "points" / f"{p.key}.json"
            rec = _read_json(path)
            if rec is None or rec.get("key") != p.key or not isinstance(rec.get("attempts"), list):
                rec = {"key": p.key, "attempts": []}
            before = json.dumps(rec, sort_keys=True, default=str)
            rec["attempts"] = [a for a in rec["attempts"] if _sound_attempt(a, self.root)]
            rec.update({"key": p.key, "label": p.label, "values": dict(p.values),
                        "experiment_overrides": dict(p.experiment_overrides),
                        "inventory_overrides": dict(p.inventory_overrides), "describe": dict(p.describe)})
            rec["state"] = _state(rec)
            self.records[p.key] = rec
            if rec["attempts"] and json.dumps(rec, sort_keys=True, default=str) != before:
                _write_atomic(path, json.dumps(rec, indent=1, default=str))
        self.skipped = sum(self.finished(p.key) for p in self.points)

    def finished(self, key: str) -> bool:
        return self.records[key]["state"] == "finished"

    def attempt(self, key: str, attempt: dict[str, Any]) -> None:
        with self.lock:
            rec = self.records[key]
            rec["attempts"].append(attempt)
            rec["state"] = _state(rec)
            _write_atomic(self.root / "points" / f"{key}.json", json.dumps(rec, indent=1, default=str))
            self.write_tables()

    def set_offline(self, key: str, value: float | None) -> None:
        with self.lock:
            self.records[key]["offline_expected_accuracy"] = value

    def write_tables(self) -> None:
        states = [self.records[p.key]["state"] for p in self.points]
        doc = {"format": FORMAT, "name": self.spec.name, "sweep_file": str(self.spec.path),
               "experiment": str(self.spec.experiment), "benches": [str(b) for b in self.benches],
               "axes": {n: list(v) for n, v, _ in self.spec.axes},
               "configs": [c.label for c in self.spec.configs],
               "points": [self._point_entry(p) for p in self.points],
               "done": states.count("finished"), "skipped": self.skipped, "failed": states.count("failed"),
               "interrupted": states.count("interrupted"), "pending": states.count("pending"),
               "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_atomic(self.root / "sweep.json", json.dumps(doc, indent=1, default=str))
        _write_atomic(self.root / "points.csv", self._csv())

    def _point_entry(self, p: Point) -> dict[str, Any]:
        rec = self.records[p.key]
        last = _last_run(rec)
        return {"key": p.key, "label": p.label, "values": dict(p.values), "state": rec["state"],
                "run_dir": last.get("run_dir") if last else None, "bench": last.get("bench") if last else None,
                "seconds": last.get("seconds") if last else None}

    def _csv(self) -> str:
        from testbed.report.compare import flatten_summary

        rows: list[dict[str, Any]] = []
        figure_cols: list[str] = []
        for p in self.points:
            rec = self.records[p.key]
            last = _last_run(rec)
            summary = _read_json(self.root / last["run_dir"] / "summary.json") if last and last.get("run_dir") else None
            figures = flatten_summary(summary) if summary and rec["state"] == "finished" else {}
            for k in figures:
                if k not in figure_cols and k not in LEADING_COLUMNS and k not in DESCRIBE_COLUMNS:
                    figure_cols.append(k)
            rows.append({**figures, "key": p.key, "label": p.label, "state": rec["state"],
                         "bench": last.get("bench") if last else None, "run_dir": last.get("run_dir") if last else None,
                         **({"config": p.values.get("config")} if self.spec.configs else {}),
                         **{c: p.describe.get(c) for c in DESCRIBE_COLUMNS},
                         "offline_expected_accuracy": rec.get("offline_expected_accuracy")})
        cols = [*LEADING_COLUMNS, *(["config"] if self.spec.configs else []), *DESCRIBE_COLUMNS,
                "offline_expected_accuracy", *figure_cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in cols})
        return buf.getvalue()


def _sound_attempt(attempt: Any, root: Path) -> bool:
    """Whether a recorded attempt can be read back (the records are files a person may edit): a
    mapping whose state is text and whose run directory, if any, is a folder under the sweep's."""
    if not isinstance(attempt, dict) or not isinstance(attempt.get("state", ""), str):
        return False
    run_dir = attempt.get("run_dir")
    if run_dir is None:
        return True
    if not isinstance(run_dir, str) or Path(run_dir).is_absolute():
        return False
    return (root / run_dir).resolve().is_relative_to(root.resolve())


def _last_run(rec: Mapping[str, Any]) -> dict[str, Any] | None:
    """The attempt that speaks for the point: its finished one if any, else its latest."""
    attempts = rec.get("attempts") or []
    finished = [a for a in attempts if a.get("state") == "finished"]
    return (finished or attempts or [None])[-1]


def _state(rec: Mapping[str, Any]) -> str:
    last = _last_run(rec)
    return "pending" if last is None else str(last.get("state", "failed"))


# --------------------------------------------------------------------------- running points


@dataclass
class _Child:
    proc: subprocess.Popen[str]
    point: Point
    bench: int
    runs_dir: Path


class _Runner:
    """Runs points on benches: one worker thread per bench, each taking the next point it can run."""

    def __init__(self, book: _Book, *, todo: list[Point], benches: Sequence[Path], command: Callable[..., list[str]],
                 on_event: Callable[[str, Point, dict[str, Any]], None],
                 identity: Callable[[Point], str] | None = None) -> None:
        self.book = book
        self.todo = list(todo)
        self.benches = benches
        self.command = command
        self.on_event = on_event
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.children: dict[int, _Child] = {}
        self.identity = identity          # None: each run builds its own bundle
        self.prepare_lock = threading.Lock()
        self.manifests: dict[str, dict[str, Any]] = {}

    def _next(self, bench: int) -> Point | None:
        with self.lock:
            for i, p in enumerate(self.todo):
                if bench in p.benches:
                    return self.todo.pop(i)
        return None

    def work(self, bench: int) -> None:
        while not self.stop.is_set():
            point = self._next(bench)
            if point is None:
                return
            try:
                self._run_point(point, bench)
            except Exception as exc:   # noqa: BLE001 - one point's fault is recorded; the bench goes on
                self._failed(point, bench, f"{type(exc).__name__}: {exc}")

    def _failed(self, point: Point, bench: int, error: str) -> None:
        """Record an attempt that never ran, with the error that stopped it."""
        now = time.time()
        attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now)), "seconds": 0.0,
                   "t_start": round(now, 3), "t_end": round(now, 3), "bench": str(self.benches[bench]), "exit": None,
                   "state": "failed", "run_dir": None, "command": None, "error": error}
        self.book.attempt(point.key, attempt)
        self.on_event("end", point, {**attempt, "summary": None})

    def _prepared(self, point: Point, bench: int) -> str | None:
        """Build or load the point's bundle, one at a time, in a ``testbed run --prepare-only``
        child (its own process group: Ctrl-C is forwarded to it; its output is its own, so a
        build's log never swallows the sweep's lines); the error that stops it, if any."""
        if self.identity is None:
            return None
        with self.prepare_lock:
            if self.stop.is_set():
                return "stopped before it ran"
            ident = self.identity(point)
            if ident not in self.manifests:
                self.on_event("prepare", point, {})
                error = self._build(point, bench, ident)
                if error is not None:
                    return error
        manifest = self.manifests[ident]
        self.book.set_offline(point.key, offline_expected_accuracy(manifest, float(point.describe["availability"])))
        return None

    def _build(self, point: Point, bench: int, ident: str) -> str | None:
        argv = self.command(point, self.benches[bench], None)
        with self.lock:
            if self.stop.is_set():
                return "stopped before it ran"
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                    text=True, process_group=0)
            self.children[-1 - bench] = _Child(proc=proc, point=point, bench=bench, runs_dir=self.book.root)
        lines: list[str] = []
        try:
            assert proc.stderr is not None and proc.stdout is not None
            for line in proc.stderr:
                lines.append(line.rstrip())
                self.on_event("say", point, {"line": "  " + line.rstrip()})
            out = proc.stdout.read()
            code = proc.wait()
        finally:
            with self.lock:
                self.children.pop(-1 - bench, None)
        if code != 0:
            errors = [ln for ln in lines if ln.startswith("testbed: error:")]
            return "stopped before it ran" if code == 130 else ((errors or lines or [f"exit {code}"])[-1])
        try:
            doc = json.loads([ln for ln in out.splitlines() if ln.strip()][-1])
            self.manifests[ident] = json.loads((Path(doc["bundle_dir"]) / "manifest.json").read_text())
        except (IndexError, KeyError, OSError, ValueError) as exc:
            return f"the bundle's manifest could not be read ({exc})"
        return None

    def _run_point(self, point: Point, bench: int) -> None:
        if (error := self._prepared(point, bench)) is not None:
            if self.stop.is_set():
                with self.lock:
                    self.todo.insert(0, point)
                return
            self._failed(point, bench, error)
            return
        root = self.book.root
        runs_dir = root / "runs" / point.key
        runs_dir.mkdir(parents=True, exist_ok=True)
        before = {d.name for d in runs_dir.iterdir()}
        argv = self.command(point, self.benches[bench], runs_dir)
        started = time.time()
        t0 = time.monotonic()
        log = (root / "logs" / f"{point.key}.log").open("a", encoding="utf-8")
        log.write(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} on {self.benches[bench]}: {' '.join(argv)}\n")
        log.flush()
        with log:
            with self.lock:
                if self.stop.is_set():
                    self.todo.insert(0, point)
                    return
                # its own process group: a Ctrl-C on the terminal reaches the sweep only, which forwards
                # one SIGINT to each child (two would cut short the child's own orderly stop)
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
                                        process_group=0)
                self.children[bench] = _Child(proc=proc, point=point, bench=bench, runs_dir=runs_dir)
            self.on_event("start", point, {"bench": str(self.benches[bench]), "runs_dir": runs_dir, "before": before})
            out, _ = proc.communicate()
            with self.lock:
                self.children.pop(bench, None)
        seconds = round(time.monotonic() - t0, 2)
        run_dir = _new_run_dir(runs_dir, before)
        summary = _read_json(run_dir / "summary.json") if run_dir else None
        state = _attempt_state(proc.returncode, summary)
        attempt = {"started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)), "seconds": seconds,
                   "t_start": round(started, 3), "t_end": round(started + seconds, 3),
                   "bench": str(self.benches[bench]), "exit": proc.returncode, "state": state,
                   "run_dir": str(run_dir.relative_to(root)) if run_dir else None,
                   "command": argv, "error": _last_error(root / "logs" / f"{point.key}.log") if state == "failed"
                   else None}
        del out
        self.book.attempt(point.key, attempt)
        self.on_event("end", point, {**attempt, "summary": summary})

    def interrupt(self) -> None:
        """Stop taking points and send SIGINT to every running child (as Ctrl-C would)."""
        self.stop.set()
        with self.lock:
            for child in self.children.values():
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGINT)

    def kill_stragglers(self) -> None:
        """SIGKILL a run that did not stop in time, with its process group: the run leads its own
        group (started with process_group=0) and its agents and broker are in it."""
        with self.lock:
            for child in self.children.values():
                if child.proc.poll() is None:
                    try:
                        os.killpg(child.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass


def _new_run_dir(runs_dir: Path, before: set[str]) -> Path | None:
    new = sorted(d for d in runs_dir.iterdir() if d.is_dir() and d.name not in before and not d.name.startswith("."))
    return new[-1] if new else None


def _attempt_state(code: int | None, summary: Mapping[str, Any] | None) -> str:
    if code == 0 and summary is not None and summary.get("state", "finished") == "finished":
        return "finished"
    if code == 130 or (summary is not None and summary.get("state") == "interrupted"):
        return "interrupted"
    return "failed"


def _last_error(log: Path) -> str | None:
    try:
        lines = [ln for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    errors = [ln for ln in lines if ln.startswith("testbed: error:")]
    return (errors or lines or [None])[-1]


# --------------------------------------------------------------------------- the sweep


ProgressFn = Callable[[str, Point | None, Mapping[str, Any]], None]


def run_sweep(spec: SweepSpec, *, benches: Sequence[Path], sweep_dir: Path, cache_dir: Path,
              threads: int | None = None, on_event: ProgressFn | None = None,
              prepare: bool = True) -> SweepResult:
    """Run every point of ``spec`` that has no finished run; see the module docstring.

    ``prepare`` builds (or loads from the cache) a point's bundle just before the point runs
    (``testbed run --prepare-only``), one at a time whatever the benches (training in parallel
    would only share the cores), for its offline expectation; False leaves the build to the run.
    ``on_event`` hears ("skip" | "plan" | "prepare" | "say" | "start" | "end", point, details); "plan"
    (point None) gives the number of points to run. SIGINT must not be ignored in this process
    (the CLI sets its handler): the runs inherit its disposition, and Ctrl-C is forwarded to them.
    """
    points = expand(spec, benches)
    open_sweep_dir(sweep_dir, name=spec.name)
    book = _Book(root=sweep_dir, spec=spec, points=points, benches=benches)
    book.load()
    result = SweepResult(sweep_dir=sweep_dir, points=len(points))
    todo = [p for p in points if not book.finished(p.key)]
    result.skipped = book.skipped
    event = on_event or (lambda *a: None)
    for p in points:
        if book.finished(p.key):
            event("skip", p, {})
    book.write_tables()
    event("plan", None, {"points": len(points), "todo": len(todo),
                         "benches": len({b for p in todo for b in p.benches})})

    def command(point: Point, bench: Path, runs_dir: Path | None) -> list[str]:
        """The point's ``testbed run`` (None: ``--prepare-only``, its bundle only)."""
        where = ["--prepare-only"] if runs_dir is None else ["--headless", "--output", str(runs_dir)]
        argv = [sys.executable, "-m", "testbed", "run", str(spec.experiment), "--inventory", str(bench), "--json",
                *where, "--cache", str(cache_dir), *point.set_args()]
        return argv + (["--threads", str(threads)] if threads else [])

    def identity(point: Point) -> str:
        exp = load_experiment(spec.experiment, overrides=point.experiment_overrides, sources=point.sources)
        ident = bundle_identity(exp)
        if exp.partition is not None and exp.partition.method == "layer":   # its cut depends on the links
            inv = load_inventory(benches[point.benches[0]], overrides=point.inventory_overrides,
                                 sources=point.sources)
            ident += json.dumps([l.profile.as_dict() for l in inv.links], sort_keys=True, default=str)
        return ident

    def hear(kind: str, point: Point, details: dict[str, Any]) -> None:
        if kind == "end":
            with book.lock:
                state = details["state"]
                result.done += state == "finished"
                result.failed += state == "failed"
                result.interrupted += state == "interrupted"
        event(kind, point, details)

    runner = _Runner(book, todo=todo, benches=benches, command=command, on_event=hear,
                     identity=identity if prepare else None)
    used = sorted({b for p in todo for b in p.benches})
    # Finished workers are counted by an event, not by Thread.join: a join that Ctrl-C interrupts
    # marks a still running thread as stopped (CPython 3.11), and the sweep would stop waiting.
    finished = threading.Semaphore(0)

    def work(bench: int) -> None:
        try:
            runner.work(bench)
        finally:
            finished.release()

    workers = [threading.Thread(target=work, args=(b,), name=f"bench-{b}", daemon=True) for b in used]
    left = len(workers)
    try:
        for w in workers:
            w.start()
        while left:
            if finished.acquire(timeout=0.5):
                left -= 1
    except KeyboardInterrupt:
        runner.interrupt()
        left = _wait(finished, left, timeout=STOP_GRACE_S)
        if left:
            runner.kill_stragglers()
            _wait(finished, left, timeout=10.0)
        result.pending = len(runner.todo)
        book.write_tables()
        raise SweepInterrupted(result) from None
    result.pending = len(runner.todo)
    book.write_tables()
    return result


def _wait(finished: threading.Semaphore, left: int, *, timeout: float) -> int:
    """Wait up to ``timeout`` for ``left`` workers to finish; how many still run."""
    deadline = time.monotonic() + timeout
    while left and (remaining := deadline - time.monotonic()) > 0:
        if finished.acquire(timeout=min(0.5, remaining)):
            left -= 1
    return left


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep: the running points were stopped and recorded; ``result`` says so."""

    def __init__(self, result: SweepResult) -> None:
        super().__init__("sweep interrupted")
        self.result = result


def bundle_identity(exp: Any) -> str:
    """Which points share a bundle: the experiment without its run, faults and assignment."""
    d = canonical_experiment(exp)
    for k in ("run", "faults", "assignment", "name"):
        d.pop(k, None)
    return json.dumps(d, sort_keys=True, default=str)
