"""Bench: live accuracy against link availability, NoNN against the resilient method (issue 14).

Runs `testbed sweep` on examples/sweeps/failure_rate.yaml (every wearable's link an on/off
outage process, availabilities 1.0 to 0.6, three seeds, S = 4, M = 2 and S = 6, M = 3 on
Fashion-MNIST and digits; resumable: a rerun continues where the last one stopped), then prints
each cell's live accuracy (mean over seeds, 95 % interval, worst) beside its baseline, the
offline expectation of the same bundles (their k-failure table weighted by the binomial
probability of k links down), as a ratio, and the offline k-failure tables themselves.

    .venv/bin/python bench/failure_sweep.py             # the whole sweep (hours on 2 cores; resumable)
    .venv/bin/python bench/failure_sweep.py --quick     # digits S=4 M=2, 3 availabilities, 2 seeds (~6 min)
    .venv/bin/python bench/failure_sweep.py --no-run    # only tabulate an existing sweep folder
    ... --json    last line of stdout: {"sweep_dir", "rows", "offline", "points", "finished", "load_avg"}
    ... --write   (full sweep only) docs/results/failure_sweep.{json,png} and the tables of failure_sweep.md

--quick takes longer than the usual 60 s: one run of a simulated bench costs ~15 s of start-up
and teardown beside its samples, and a sweep of fewer than a dozen runs measures nothing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from statistics import mean
from collections.abc import Iterator
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweepbench import (EXAMPLES, RESULTS, copy_figure, load_avg, parse_args, run_unless_told_not,  # noqa: E402
                        write_between)
from testbed.report.sweepreport import aggregate, load_sweep, sweep_rows  # noqa: E402

SWEEP = EXAMPLES / "failure_rate.yaml"
START, END = "<!-- tables:start (bench/failure_sweep.py --write) -->", "<!-- tables:end -->"

QUICK_GRID = """\
grid:
  method: [nonn, resilient]
  availability: [1.0, 0.8, 0.6]
  seed: [0, 1]
outage: {mean_outage_s: 1.0}
"""


def _described(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """points.csv rows by key: the description the sweep wrote last (a point's record may be older)."""
    import csv
    with open(sweep_dir / "points.csv", encoding="utf-8") as fh:
        return {row["key"]: row for row in csv.DictReader(fh)}


def _finished_runs(sweep_dir: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """(the point's points.csv row, its finished run directory) for every point that finished."""
    described = _described(sweep_dir)
    for rec_path in sorted((sweep_dir / "points").glob("*.json")):
        rec = json.loads(rec_path.read_text())
        d = described.get(rec.get("key", ""))
        runs = [a for a in rec.get("attempts", []) if a.get("state") == "finished" and a.get("run_dir")]
        if d is not None and runs:
            yield d, sweep_dir / runs[-1]["run_dir"]


def offline_tables(sweep_dir: Path) -> list[dict[str, Any]]:
    """Per configuration and method: the bundles' k-failure table (mean over the seeds' bundles of
    the mean and of the worst accuracy with k failed students), read from the runs' run.json."""
    seen: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    for d, run_dir in _finished_runs(sweep_dir):
        run_json = json.loads((run_dir / "run.json").read_text())
        evaluation = (run_json.get("bundle") or {}).get("evaluation") or {}
        key = (f"{d.get('dataset')} S={d.get('students')} M={d.get('parts')}", str(d.get("method")))
        per_seed = seen.setdefault(key, {})
        per_seed[int(d.get("seed") or 0)] = {int(r["k"]): (r["mean"], r["worst"]) for r in evaluation.get("resilience", [])}
    out = []
    for (config, method), seeds in sorted(seen.items()):
        ks = sorted(set.intersection(*(set(t) for t in seeds.values())))
        out.append({"config": config, "method": method, "seeds": len(seeds),
                    "k": [{"k": k, "mean": round(mean(t[k][0] for t in seeds.values()), 4),
                           "worst": round(mean(t[k][1] for t in seeds.values()), 4)} for k in ks]})
    return out


def live_by_k(sweep_dir: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Per configuration and method, over every finished run: the samples by how many students'
    parts were missing at the edge (k), with their live accuracy; and per availability the
    fraction of parts missing, against the 1 − a the outage process was set to."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for d, run_dir in _finished_runs(sweep_dir):
        s = int(d.get("students", 0))
        entry = out.setdefault((f"{d.get('dataset')} S={s} M={d.get('parts')}", str(d.get("method"))),
                               {"by_k": {}, "missing": {}, "part_lost": {}})
        run_json = json.loads((run_dir / "run.json").read_text())
        student_of = _students_of(run_json)
        m = int(d.get("parts") or s) if d.get("method") == "resilient" else s
        lost = entry["missing"].setdefault(float(d.get("availability") or 1.0), [0, 0])
        for line in (run_dir / "events.jsonl").read_text().splitlines():
            if '"type":"result"' not in line:
                continue
            ev = json.loads(line)
            k = len(ev.get("missing") or []) if ev.get("status") != "timed_out" else s
            n_ok = entry["by_k"].setdefault(k, [0, 0])
            n_ok[0] += 1
            n_ok[1] += bool(ev.get("correct"))
            if 0 < k < s and student_of:   # did a part lose every student that carries it (i mod M)?
                arrived = {student_of[b] % m for b in ev.get("arrived") or [] if b in student_of}
                part_gone = len(arrived) < m
                n_ok = entry["part_lost"].setdefault((k, part_gone), [0, 0])
                n_ok[0] += 1
                n_ok[1] += bool(ev.get("correct"))
            lost[0] += k
            lost[1] += s
    return out


def _students_of(run_json: dict[str, Any]) -> dict[str, int]:
    """board -> student index, from the effective experiment recorded in run.json."""
    effective = ((run_json.get("experiment") or {}).get("effective") or {})
    return {b: int(v) for b, v in (effective.get("assignment") or {}).items() if isinstance(v, int)}


def print_tables(rows: list[dict[str, Any]], offline: list[dict[str, Any]], load: str,
                 by_k: dict[tuple[str, str], dict[str, Any]] | None = None) -> list[str]:
    lines = [f"load average {load}", "",
             "| dataset | S | M | method | availability | live accuracy (mean ± 95 % CI) | worst seed | seeds | "
             "offline expectation (baseline) | live / offline |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        live, off = r["accuracy_mean"], r["offline_expected_accuracy"]
        ratio = f"{live / off:.3f}" if live is not None and off else "–"
        ci = f" ± {r['accuracy_ci95']:.3f}" if r["accuracy_ci95"] is not None else ""
        shown = f"{live:.3f}{ci}" if live is not None else "–"
        worst = f"{r['accuracy_worst']:.3f}" if r["accuracy_worst"] is not None else "–"
        lines.append(f"| {r['dataset']} | {r['S']} | {r['M']} | {r['method']} | {r['availability']:g} | {shown} | "
                     f"{worst} | {r['seeds']}{' (+' + str(r['missing']) + ' missing)' if r['missing'] else ''} | "
                     f"{off:.3f} | {ratio} |" if off is not None else
                     f"| {r['dataset']} | {r['S']} | {r['M']} | {r['method']} | {r['availability']:g} | {shown} | "
                     f"{worst} | {r['seeds']} | – | – |")
    lines += ["", "Offline: accuracy with k failed students (mean over the seeds' bundles of the mean and the "
              "worst over every set of k failed students)", "",
              "| configuration | method | seeds | " + " | ".join(f"k={k}" for k in range(6)) + " |",
              "|---|---|---|" + "---|" * 6]
    for t in offline:
        cells = {e["k"]: f"{e['mean']:.3f} (worst {e['worst']:.3f})" for e in t["k"]}
        lines.append(f"| {t['config']} | {t['method']} | {t['seeds']} | "
                     + " | ".join(cells.get(k, "") for k in range(6)) + " |")
    if by_k:
        offline_mean = {(t["config"], t["method"]): {e["k"]: e["mean"] for e in t["k"]} for t in offline}
        lines += ["", "Live, by the number k of students whose part was missing at the edge (every finished run, "
                  "all availabilities pooled): samples, live accuracy, and the offline mean with k failed (baseline)",
                  "", "| configuration | method | " + " | ".join(f"k={k}" for k in range(7)) + " |",
                  "|---|---|" + "---|" * 7]
        for (config, method), entry in sorted(by_k.items()):
            ref = offline_mean.get((config, method), {})
            cells = {k: f"{n} samples: {ok / n:.3f}" + (f" (offline {ref[k]:.3f})" if k in ref else "")
                     for k, (n, ok) in entry["by_k"].items() if n}
            lines.append(f"| {config} | {method} | " + " | ".join(cells.get(k, "") for k in range(7)) + " |")
        lines += ["", "Resilient, by k missing and whether a part lost every student that carries it (a part is "
                  "carried by students i with i mod M = part): samples and live accuracy", "",
                  "| configuration | k | every part still carried | a part lost |", "|---|---|---|---|"]
        for (config, method), entry in sorted(by_k.items()):
            if method != "resilient":
                continue
            for k in sorted({k for k, _ in entry["part_lost"]}):
                cells = []
                for lost in (False, True):
                    n, ok = entry["part_lost"].get((k, lost), (0, 0))
                    cells.append(f"{n} samples: {ok / n:.3f}" if n else "–")
                lines.append(f"| {config} | {k} | {cells[0]} | {cells[1]} |")
        lines += ["", "Parts missing at the edge, against the outage process's 1 − a (every finished run)", "",
                  "| configuration | method | " + " | ".join(f"a={a:g}" for a in (1.0, 0.95, 0.9, 0.8, 0.6)) + " |",
                  "|---|---|" + "---|" * 5]
        for (config, method), entry in sorted(by_k.items()):
            cells = {a: f"{lost / total:.3f} (1 − a = {1 - a:.2f})" for a, (lost, total) in entry["missing"].items()
                     if total}
            lines.append(f"| {config} | {method} | " + " | ".join(cells.get(a, "") for a in (1.0, 0.95, 0.9, 0.8, 0.6))
                         + " |")
    return lines


def write_docs(sweep_dir: Path, rows: list[dict[str, Any]], table_lines: list[str]) -> None:
    doc = {"rows": [{k: r[k] for k in ("dataset", "S", "M", "method", "availability", "accuracy_mean",
                                       "accuracy_ci95", "seeds")} | {"accuracy_worst": r["accuracy_worst"],
                                                                      "offline_expected_accuracy":
                                                                      r["offline_expected_accuracy"]}
                    for r in rows]}
    (RESULTS / "failure_sweep.json").write_text(json.dumps(doc, indent=1) + "\n")
    copy_figure(sweep_dir, "accuracy_vs_availability.png", RESULTS / "failure_sweep.png")
    write_between(RESULTS / "failure_sweep.md", START, END, table_lines)


def main() -> int:
    args = parse_args(__doc__, quick="digits S=4 M=2 only, 3 availabilities, 2 seeds", default_out="failure-rate")
    sweep_dir = args.out
    run_unless_told_not(args, sweep=SWEEP, quick_name="failure-rate-quick", quick_grid=QUICK_GRID)
    load = load_avg()
    sweep = load_sweep(sweep_dir)
    rows = sweep_rows(aggregate(sweep))
    offline = offline_tables(sweep_dir)
    lines = print_tables(rows, offline, load, live_by_k(sweep_dir))
    print("\n".join(lines))
    if args.write and not args.quick:
        write_docs(sweep_dir, rows, lines)
    finished = sum(1 for r in sweep.rows if r.get("state") == "finished")
    if args.json:
        print(json.dumps({"sweep_dir": str(sweep_dir), "rows": rows, "offline": offline, "points": len(sweep.rows),
                          "finished": finished, "load_avg": load}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
