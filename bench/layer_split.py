"""Bench: does the layer split's latency model predict what the bench measures, cut by cut?

Loads (or trains, cached) the partition teacher, measures its layers on this host, plans every
cut for a link preset with simulated boards on both ends (scale factor 1: the agents run on this
host), then for each cut exports a head/tail bundle and runs it on a one-wearable bench through
the real harness (`testbed run --bundle`, embedded mosquitto, agent subprocesses, the user-space
HBC shaper on the MQTT link). Per cut it prints the planner's predicted end-to-end latency beside
the measured p50 (trigger -> prediction) and their ratio, and whether the cut the planner picks
is the one with the least measured latency.

    .venv/bin/python bench/layer_split.py            # Fashion-MNIST teacher, hbc-1312k, every cut
    .venv/bin/python bench/layer_split.py --quick    # digits, tiny teacher, 3 cuts (< 60 s)
    ... --json   last line of stdout: {"rows": [...], "chosen": ..., "fastest_measured": ...}

The measured latency also holds what the plan leaves out on purpose (MQTT hops to and from the
orchestrator, frame encode/decode, agent scheduling): the difference column shows that overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nodes.runtime import configure_torch_threads  # noqa: E402
from testbed.data import load_dataset  # noqa: E402
from testbed.orchestrator import default_cache_dir  # noqa: E402
from testbed.partition.layersplit import export_layer_bundle, measure_layers, plan_split  # noqa: E402
from testbed.partition.pipeline import PartitionConfig, TeacherSpec, teacher_config  # noqa: E402
from testbed.partition.teacher import load_or_train_teacher  # noqa: E402

QUICK_TEACHER = TeacherSpec(widths=(8, 16, 32), epochs=6, batch_size=64, lr=0.01)


def _cache_dir(arg: str | None) -> Path:
    return Path(arg) if arg else default_cache_dir()


def _files(tmp: Path, *, dataset: str, preset: str, samples: int, rate_hz: float, deadline_ms: float) -> tuple[Path, Path]:
    inv = tmp / "inventory.yaml"
    inv.write_text(f"""\
bench: layerbench
broker: {{mode: embedded}}
boards:
  wrist: {{role: wearable, kind: sim, connect: local, runtime: torch}}
  edge: {{role: edge, kind: sim, connect: local, runtime: torch}}
links:
  - {{name: wrist-edge, from: wrist, to: edge, transport: {{type: mqtt}}, profile: {preset}}}
""")
    exp = tmp / "experiment.yaml"
    exp.write_text(f"""\
name: layerbench
seed: 0
dataset: {{name: {dataset}}}
partition: {{method: layer}}
assignment: {{wrist: 0, edge: merge}}
run: {{samples: {samples}, rate_hz: {rate_hz:.3f}, deadline_ms: {deadline_ms:.0f}, timeout_ms: {deadline_ms + 2000:.0f}}}
""")
    return inv, exp


def _run(tmp: Path, bundle: Path, *, dataset: str, preset: str, samples: int, predicted_ms: float,
         cache: Path) -> dict[str, Any]:
    rate = min(5.0, 400.0 / max(predicted_ms, 1.0))       # keep the link below ~40 % busy: no queueing
    inv, exp = _files(tmp, dataset=dataset, preset=preset, samples=samples, rate_hz=rate,
                      deadline_ms=3 * predicted_ms + 300)
    env = {**os.environ, "HBC_TESTBED_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(inv),
                           "--bundle", str(bundle), "--headless", "--json", "--output", str(tmp / "runs")],
                          capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bench run failed for {bundle}: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits, tiny teacher, 3 cuts (< 60 s)")
    ap.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    ap.add_argument("--preset", default="hbc-1312k", help="link profile preset (default hbc-1312k)")
    ap.add_argument("--samples", type=int, help="samples per cut (default 30; --quick 10)")
    ap.add_argument("--cache", help="model cache dir (default $HBC_TESTBED_CACHE or ~/.cache/hbc-testbed)")
    ap.add_argument("--out", type=Path, help="also write the result JSON here")
    args = ap.parse_args(argv)
    configure_torch_threads(1)
    cache = _cache_dir(args.cache)
    dataset = "digits" if args.quick else "fashion-mnist"
    samples = args.samples or (10 if args.quick else 30)
    t_all = time.monotonic()
    data = load_dataset(dataset, seed=0)
    t = QUICK_TEACHER if args.quick else TeacherSpec()
    tcfg = teacher_config(PartitionConfig(dataset=dataset, teacher=t, seed=0), data)
    model, _ = load_or_train_teacher(tcfg, data, cache_dir=cache)
    costs = measure_layers(model, data.input_shape, repeats=50, sample=data.x_test[:1])
    plan = plan_split(costs, link=args.preset, wearable_kind="sim", edge_kind="sim")
    cuts = [r.cut for r in plan.rows]
    if args.quick:
        cuts = sorted({cuts[0], plan.chosen, cuts[-1]})
    rows = []
    with tempfile.TemporaryDirectory(prefix="layer-bench-") as d:
        tmp = Path(d)
        for row in (r for r in plan.rows if r.cut in cuts):
            bundle = tmp / f"cut-{row.cut}"
            export_layer_bundle(model, row.cut, out_dir=bundle, samples=data.x_test, classes=data.classes,
                                evaluation={"test_accuracy": 0.0}, extra_manifest={"dataset": data.name})
            s = _run(tmp, bundle, dataset=dataset, preset=args.preset, samples=samples, predicted_ms=row.total_ms,
                     cache=cache)
            measured = float(s["latency_ms"]["p50"])
            rows.append({"cut": row.cut, "layer": row.layer, "bytes": row.bytes, "predicted_ms": round(row.total_ms, 2),
                         "measured_p50_ms": round(measured, 2), "ratio": round(measured / row.total_ms, 3),
                         "overhead_ms": round(measured - row.total_ms, 2), "complete": s["complete"],
                         "samples": s["samples"], "accuracy": s["accuracy"]})
            print(f"cut {row.cut:>2} after {row.layer:<10} {row.bytes:>7,} B  predicted {row.total_ms:8.2f} ms  "
                  f"measured p50 {measured:8.2f} ms  ratio {measured / row.total_ms:5.2f}  "
                  f"({s['complete']}/{s['samples']} complete)", flush=True)
    fastest = min(rows, key=lambda r: r["measured_p50_ms"])
    chosen = next(r for r in rows if r["cut"] == plan.chosen)
    print(f"planner's choice: cut {plan.chosen} ({chosen['layer']}), measured {chosen['measured_p50_ms']} ms; "
          f"fastest measured: cut {fastest['cut']} ({fastest['layer']}), {fastest['measured_p50_ms']} ms")
    doc = {"dataset": dataset, "preset": args.preset, "samples_per_cut": samples, "rows": rows,
           "chosen": plan.chosen, "fastest_measured": fastest["cut"],
           "chosen_is_fastest": fastest["cut"] == plan.chosen
           or chosen["measured_p50_ms"] <= fastest["measured_p50_ms"] * 1.05,
           "wall_s": round(time.monotonic() - t_all, 1), "torch": torch.__version__}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if args.json:
        print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
