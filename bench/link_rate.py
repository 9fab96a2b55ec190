"""Bench: live accuracy and latency against the link rate, where the bench and the offline table part ways (issue 14).

Runs `testbed sweep` on examples/sweeps/link_rate.yaml (no outages; every wearable's link from
the top HBC rate, 1312.5 kbit/s, down to 12 kbit/s; NoNN and the resilient method on digits,
S = 4, M = 2) and prints per point the live accuracy beside its baseline, the bundle's offline
accuracy with every student present (the offline table knows no rate), as a ratio; the share
of samples complete, partial and timed out; end-to-end latency p50/p95 beside the same method's
at the top rate (a ratio); and what the links carried: the mean frame, the load it offers at the
run's sample rate against the link's rate (utilisation), frames the links dropped, and the
one-way time of the parts that reached a merge (a part later than the deadline has none).

    .venv/bin/python bench/link_rate.py             # 10 points, 7 min measured on 2 cores (+40 s per bundle to train)
    .venv/bin/python bench/link_rate.py --quick     # NoNN at 1312.5 and 12 kbit/s, 150 samples (53 s measured)
    .venv/bin/python bench/link_rate.py --no-run    # only tabulate an existing sweep folder
    ... --json    last line of stdout: {"sweep_dir", "rows", "load_avg"}
    ... --write   (full sweep only) docs/results/link_rate.{json,png} and the tables of failure_sweep.md

--quick finishes in about a minute with the digits bundle in the model cache (53 s measured);
on an empty cache it trains that bundle first (about 40 s more).
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

from sweepbench import EXAMPLES, RESULTS, copy_figure, load_avg, parse_args, run_unless_told_not, write_between

SWEEP = EXAMPLES / "link_rate.yaml"
DOC = RESULTS / "failure_sweep.md"
START, END = "<!-- rate-tables:start (bench/link_rate.py --write) -->", "<!-- rate-tables:end -->"

QUICK_GRID = """\
grid:
  method: [nonn]
  rate_bps: [1312500, 12000]
"""


def _num(row: dict[str, str], key: str) -> float | None:
    try:
        return float(row[key]) if row.get(key) not in (None, "") else None
    except ValueError:
        return None


def point_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per finished point of points.csv, with the figures this bench prints."""
    with open(sweep_dir / "points.csv", encoding="utf-8") as fh:
        points = [r for r in csv.DictReader(fh) if r.get("state") == "finished"]
    out = []
    for r in points:
        triggered = _num(r, "triggered") or 0.0
        links = sorted({k.split(".")[1] for k in r if k.startswith("links.") and k.endswith(".frames")})
        frames = sum(_num(r, f"links.{lk}.frames") or 0.0 for lk in links)
        nbytes = sum(_num(r, f"links.{lk}.bytes") or 0.0 for lk in links)
        frame = nbytes / frames if frames else None
        rate = _num(r, "rate_bps")
        run_json = json.loads((sweep_dir / r["run_dir"] / "run.json").read_text())
        rate_hz = float(((run_json.get("experiment") or {}).get("effective") or {}).get("run", {}).get("rate_hz") or 0)
        offered = frame * 8 * rate_hz if frame and rate_hz else None
        out.append({
            "method": r["method"], "rate_bps": rate, "samples": int(triggered),
            "accuracy": _num(r, "accuracy"), "offline_accuracy": _num(r, "offline_expected_accuracy"),
            "complete": (_num(r, "complete") or 0.0) / triggered if triggered else None,
            "partial": (_num(r, "partial") or 0.0) / triggered if triggered else None,
            "timed_out": (_num(r, "timed_out") or 0.0) / triggered if triggered else None,
            "latency_p50_ms": _num(r, "latency_ms.p50"), "latency_p95_ms": _num(r, "latency_ms.p95"),
            "frame_bytes": round(frame, 1) if frame else None,
            "utilisation": round(offered / rate, 3) if offered and rate else None,
            "dropped": int(sum(_num(r, f"links.{lk}.dropped") or 0.0 for lk in links)),
            "one_way_p95_ms": max((_num(r, f"links.{lk}.one_way_ms_p95") or 0.0 for lk in links), default=None),
        })
    out.sort(key=lambda x: (x["method"], -(x["rate_bps"] or 0.0)))
    return out


def _f(v: float | None, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def print_tables(rows: list[dict[str, Any]], load: str) -> list[str]:
    top = {}
    for r in rows:
        if r["latency_p50_ms"] is not None and (r["method"] not in top or r["rate_bps"] > top[r["method"]]["rate_bps"]):
            top[r["method"]] = r
    lines = [f"load average {load}", "",
             "Live against the link rate (no outages, one seed; offline: the bundle with every student, which "
             "knows no rate; latency ratio: against the same method at the top rate)", "",
             "| method | rate (bit/s) | utilisation | live accuracy | offline | live / offline | complete | partial "
             "| timed out | latency p50 / p95 (ms) | p95 / top rate's | link drops | slowest link one-way p95, parts merged in time (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = (r["accuracy"] / r["offline_accuracy"] if r["accuracy"] is not None and r["offline_accuracy"]
                 else None)
        base = top.get(r["method"])
        lat = (r["latency_p95_ms"] / base["latency_p95_ms"]
               if base and r["latency_p95_ms"] is not None and base["latency_p95_ms"] else None)
        lines.append(f"| {r['method']} | {r['rate_bps']:.0f} | {_f(r['utilisation'], '.2f')} | {_f(r['accuracy'])} "
                     f"| {_f(r['offline_accuracy'])} | {_f(ratio)} | {_f(r['complete'])} | {_f(r['partial'])} "
                     f"| {_f(r['timed_out'])} | {_f(r['latency_p50_ms'], '.1f')} / {_f(r['latency_p95_ms'], '.1f')} "
                     f"| {_f(lat, '.1f')} | {r['dropped']} | {_f(r['one_way_p95_ms'], '.1f')} |")
    frames = sorted({r["frame_bytes"] for r in rows if r["frame_bytes"]})
    if frames:
        lines += ["", f"Mean frame on the links: {', '.join(f'{b:g}' for b in frames)} bytes "
                      "(utilisation = frame × 8 × sample rate / link rate)"]
    return lines


def write_docs(sweep_dir: Path, rows: list[dict[str, Any]], table_lines: list[str]) -> None:
    (RESULTS / "link_rate.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    copy_figure(sweep_dir, "latency_vs_rate.png", RESULTS / "link_rate.png")
    write_between(DOC, START, END, table_lines)


def main() -> int:
    args = parse_args(__doc__, quick="NoNN at two rates, 150 samples", default_out="link-rate")
    sweep_dir = args.out
    run_unless_told_not(args, sweep=SWEEP, quick_name="link-rate-quick", quick_grid=QUICK_GRID)
    load = load_avg()
    rows = point_rows(sweep_dir)
    lines = print_tables(rows, load)
    print("\n".join(lines))
    if args.write and not args.quick:
        write_docs(sweep_dir, rows, lines)
    if args.json:
        print(json.dumps({"sweep_dir": str(sweep_dir), "rows": rows, "load_avg": load}, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
