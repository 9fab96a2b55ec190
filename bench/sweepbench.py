"""What the sweep benches (failure_sweep.py, link_rate.py) share: their command line, running the
example sweep (or its --quick variant) as a user would, the machine's load average, copying a
figure of `testbed report` into docs/results, and rewriting the tables between a page's markers."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples" / "sweeps"
RESULTS = ROOT / "docs" / "results"


def parse_args(doc: str, *, quick: str, default_out: str) -> argparse.Namespace:
    """--quick, --no-run, --out (default sweeps/<default_out>[-quick]), --write, --json."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=quick)
    ap.add_argument("--no-run", action="store_true", help="tabulate the sweep folder as it is")
    ap.add_argument("--out", help=f"the sweep folder (default sweeps/{default_out}[-quick])")
    ap.add_argument("--write", action="store_true", help="write the figures and tables into docs/results")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.out = Path(args.out or f"sweeps/{default_out}{'-quick' if args.quick else ''}")
    return args


def run_sweep(sweep_file: Path, out: Path) -> dict[str, Any]:
    """`testbed sweep --headless --json` as a user runs it; its JSON line."""
    proc = subprocess.run([sys.executable, "-m", "testbed", "sweep", str(sweep_file), "--headless", "--json",
                           "--out", str(out)], stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if not lines:
        raise SystemExit(f"testbed sweep printed nothing (exit {proc.returncode})")
    return json.loads(lines[-1])


def digits_config() -> str:
    """failure_rate.yaml's digits-s4m2 overrides as one line of YAML (the one place they are written)."""
    import yaml

    data = yaml.safe_load((EXAMPLES / "failure_rate.yaml").read_text())
    return json.dumps(next(c["set"] for c in data["configs"] if c["label"] == "digits-s4m2"))


QUICK = """\
name: {name}
experiment: {base}
benches: [{bench}]
set: {{run.samples: 150}}
configs:
  - label: digits-s4m2
    set: {digits}
"""


def run_unless_told_not(args: argparse.Namespace, *, sweep: Path, quick_name: str, quick_grid: str) -> None:
    """Run ``sweep`` into args.out, unless --no-run; with --quick, a sweep named ``quick_name`` of
    150 samples a point on the examples' 4-wearable bench, digits S = 4, M = 2 (failure_rate.yaml's
    configuration), and the YAML ``quick_grid`` (its grid and outage keys) instead."""
    if args.no_run:
        return
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "quick.yaml"
            path.write_text(QUICK.format(name=quick_name, base=EXAMPLES / "base.yaml",
                                         bench=EXAMPLES / "inventory-s4.yaml", digits=digits_config()) + quick_grid)
            line = run_sweep(path, args.out)
    else:
        line = run_sweep(sweep, args.out)
    print(f"sweep: {line}", file=sys.stderr)


def load_avg() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def copy_figure(sweep_dir: Path, figure: str, dest: Path) -> None:
    """Make the sweep's report in a scratch folder and copy one of its PNGs to ``dest``."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "testbed", "report", str(sweep_dir), "--out", f"{tmp}/r"], check=True,
                       stdout=subprocess.DEVNULL)
        shutil.copyfile(f"{tmp}/r/{figure}", dest)


def write_between(md: Path, start: str, end: str, lines: list[str]) -> None:
    """Replace what lies between the ``start`` and ``end`` markers of ``md`` with ``lines``."""
    text = md.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{md}: expected the markers {start} and {end} to write the tables between")
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    md.write_text(head + start + "\n" + "\n".join(lines) + "\n" + end + tail)
