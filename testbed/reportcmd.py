"""``testbed report`` and ``testbed compare``: their options, and turning inputs into a report folder.

Holds ``add_report_commands`` (registers both subcommands on the CLI's subparsers),
``report_command`` (run or sweep directories -> PNG figures, ``report.md`` and a self-contained
``report.html`` in one output folder) and ``compare_command`` (two runs' summary figures side
by side with B - A and the relative change, as a table or one JSON object).

Output folders follow ``testbed.outdir``: a folder testbed did not write is refused in one line,
an earlier report of ours is replaced, nothing else in a run or sweep directory is touched. An
input that is not a run or a sweep is a ConfigError (exit 2) naming the path and what was
expected. Library code; it returns exit codes and never calls ``exit()``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from testbed.errors import ConfigError
from testbed.sweepcmd import counted

__all__ = ["add_report_commands", "report_command", "compare_command", "classify", "default_out", "WRITER"]

WRITER = "testbed report"
_EXPECTED = "expected a run directory (with events.jsonl) or a sweep directory (with sweep.json and points.csv)"


def _console(*, stderr: bool) -> Any:
    from rich.console import Console
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=200)  # logs and pipes: no truncated tables
    return console


def classify(path: Path) -> str:
    """``"run"`` or ``"sweep"``; ConfigError (one line) for anything else."""
    from testbed.report.runreport import is_run_dir
    from testbed.report.sweepreport import is_sweep_dir

    if not os.path.lexists(path):
        raise ConfigError(f"no such directory; {_EXPECTED}", file=str(path))
    if not path.is_dir():
        raise ConfigError(f"is not a directory; {_EXPECTED}", file=str(path))
    if is_sweep_dir(path):
        return "sweep"
    if is_run_dir(path):
        return "run"
    raise ConfigError(f"neither a run nor a sweep directory; {_EXPECTED}", file=str(path))


def default_out(paths: Sequence[Path], kind: str) -> Path:
    """``<RUN_DIR>/report`` or ``<SWEEP_DIR>/report`` for one input, ``reports/<A>-vs-<B>...`` for several."""
    if len(paths) == 1:
        return paths[0] / "report"
    return Path("reports") / "-vs-".join(p.resolve().name for p in paths)


def _check_ours(dest: Path) -> None:
    """Refuse a folder another testbed command wrote (its marker names another writer)."""
    from testbed.outdir import inspect

    contents = inspect(dest)
    if contents.marked and contents.writer and contents.writer != WRITER and not contents.empty:
        raise ConfigError(f"holds the output of {contents.writer}; expected a new folder or an earlier report "
                          f"(give another --out)", file=str(dest))


def report_command(paths: Sequence[Path | str], *, out: Path | str | None = None, as_json: bool = False) -> int:
    """Write the report of ``paths`` (one sweep directory, or one or more run directories)."""
    from testbed.outdir import output_dir
    from testbed.report.document import render_markdown
    from testbed.report.html import render_html

    inputs = [Path(p) for p in paths]
    if not inputs:
        raise ConfigError(f"no input; {_EXPECTED}", file="RUN_DIR|SWEEP_DIR")
    kinds = [classify(p) for p in inputs]
    if "sweep" in kinds and len(inputs) > 1:
        raise ConfigError("a sweep is reported on its own; expected one sweep directory, or one or more run "
                          "directories", file=str(inputs[kinds.index("sweep")]))
    dest = Path(out) if out is not None else default_out(inputs, kinds[0])
    _check_ours(dest)
    console = _console(stderr=as_json)
    extra: dict[str, Any] = {}
    with output_dir(dest, force=True, writer=WRITER) as o:
        report, extra = _build(inputs, kinds[0], o.staging)
        (o.staging / "report.md").write_text(render_markdown(report), encoding="utf-8")
        (o.staging / "report.html").write_text(render_html(report), encoding="utf-8")
        figures = [f.name for f in report.figures()]
    for line in o.notes():
        console.print(line, markup=False)
    console.print(f"report: {o.dest / 'report.html'} ({counted(len(figures), 'figure')}; report.md beside it)",
                  markup=False)
    if as_json:
        doc = {"kind": "sweep" if kinds[0] == "sweep" else ("run" if len(inputs) == 1 else "runs"),
               "inputs": [str(p) for p in inputs], "out": str(o.dest), "html": str(o.dest / "report.html"),
               "markdown": str(o.dest / "report.md"), "figures": [str(o.dest / f) for f in figures], **extra}
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    return 0


def _build(inputs: list[Path], kind: str, staging: Path) -> tuple[Any, dict[str, Any]]:
    """The Report (its figures written into ``staging``) and what ``--json`` adds for this kind."""
    if kind == "sweep":
        from testbed.report.sweepreport import load_sweep, sweep_report, sweep_rows
        report, cells = sweep_report(load_sweep(inputs[0]), out=staging)
        return report, {"rows": sweep_rows(cells)}
    from testbed.report.runreport import load_run, run_report, runs_report
    runs = [load_run(p) for p in inputs]
    if len(runs) == 1:
        return run_report(runs[0], out=staging), {}
    return runs_report(runs, out=staging), {}


def compare_command(a: Path | str, b: Path | str, *, as_json: bool = False) -> int:
    """Print every summary figure of runs ``a`` and ``b`` with B - A and the relative change."""
    from rich.table import Table

    from testbed.report.compare import compare_rows, flatten_summary, format_rel, format_value
    from testbed.report.runreport import load_summary

    paths = [Path(a), Path(b)]
    for p in paths:
        if classify(p) != "run":
            raise ConfigError("is a sweep directory; expected a run directory (compare takes two runs)", file=str(p))
    summaries = [load_summary(p) for p in paths]
    rows = compare_rows([flatten_summary(s) for s in summaries])
    console = _console(stderr=as_json)
    table = Table(title=f"A: {paths[0]}\nB: {paths[1]}")
    for col in ("figure", "A", "B", "B−A", "B/A−1"):
        table.add_column(col, justify="left" if col == "figure" else "right", no_wrap=True)
    for row in rows:
        table.add_row(row.figure, format_value(row.a), format_value(row.b), format_value(row.diff(), signed=True),
                      format_rel(row.rel()), style="bold" if row.differs else None)
    console.print(table)
    differ = sum(r.differs for r in rows)
    console.print(f"{differ} of {len(rows)} figures differ", markup=False)
    if as_json:
        doc = {"a": str(paths[0]), "b": str(paths[1]),
               "rows": [{"figure": r.figure, "a": r.a, "b": r.b, "diff": r.diff()} for r in rows]}
        sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
        sys.stdout.flush()
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    return report_command(args.paths, out=args.out, as_json=args.json)


def _cmd_compare(args: argparse.Namespace) -> int:
    return compare_command(args.run_a, args.run_b, as_json=args.json)


def add_report_commands(sub: Any) -> None:
    """Register ``report`` and ``compare`` on ``sub`` (the CLI's ``add_subparsers()`` object)."""
    p = sub.add_parser("report", help="figures, report.html and report.md from run or sweep directories")
    p.add_argument("paths", nargs="+", metavar="RUN_DIR|SWEEP_DIR",
                   help="one run directory, several run directories (side by side), or one sweep directory")
    p.add_argument("--out", help="the report folder (default: <RUN_DIR>/report or <SWEEP_DIR>/report for one "
                                 "input, reports/<A>-vs-<B>... for several runs); an earlier report there is "
                                 "replaced, a folder testbed did not write is refused")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout")
    p.set_defaults(func=_cmd_report)
    p = sub.add_parser("compare", help="every summary figure of two runs with the difference")
    p.add_argument("run_a", metavar="RUN_A")
    p.add_argument("run_b", metavar="RUN_B")
    p.add_argument("--json", action="store_true", help="print one JSON object last on stdout: "
                                                       '{"a", "b", "rows": [{"figure", "a", "b", "diff"}]}')
    p.set_defaults(func=_cmd_compare)
