"""Bench: the accuracy cost of each activation encoding (x compression) on the demo model.

Prepares the model exactly as ``testbed demo`` does (``testbed.orchestrator.prepare_bundle`` on
``testbed/demo/experiment.yaml`` loaded by ``testbed.config.load_experiment``; the model cache
is ``default_cache_dir()`` or ``--cache``), then runs each student shard of the bundle through
the board runtime (``nodes.runtime``) on the whole test set (Fashion-MNIST: 10,000 images),
puts every student's output vector through ``nodes.codec.encode_frame`` and a
``nodes.codec.Decoder`` for each encoding x compression, merges the decoded vectors with the
edge's ``nodes.merge.Merger`` (the manifest's rule) and classifies with the bundle's merge
shard. Reported per combination: top-1 accuracy, its change against f32/none (the baseline),
the fraction of predictions identical to the baseline's, the largest error of a decoded
vector, and the mean wire bytes per frame (header and CRC included).

``--quick`` does the same through the same code on scikit-learn's digits with a small model
(trains in seconds; < 60 s with a cold cache). ``--json``: the last line of stdout is
``{"rows": [...], ...}``. This script measures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from nodes.codec import Compression, Decoder, Encoding, encode_frame, use_f16_backend  # noqa: E402
from nodes.merge import Merger  # noqa: E402
from nodes.runtime import open_runtime  # noqa: E402
from testbed.bundle import shard_for  # noqa: E402
from testbed.config import DatasetSpec, Experiment, TrainSpec, load_experiment  # noqa: E402
from testbed.orchestrator import default_cache_dir, prepare_bundle  # noqa: E402

DEMO_EXPERIMENT = ROOT / "testbed" / "demo" / "experiment.yaml"
BATCH = 500


def quick_experiment(exp: Experiment) -> Experiment:
    """The demo experiment on digits with a small model (a few seconds of training)."""
    return dataclasses.replace(
        exp, dataset=DatasetSpec(name="digits"),
        model=dataclasses.replace(exp.model, students=3, width=8, out_dim=8),
        train=TrainSpec(epochs=8, batch_size=64, lr=0.01))


def student_outputs(bundle_dir: Path, manifest: dict[str, Any], x: np.ndarray) -> dict[int, np.ndarray]:
    """``{shard index: N x part_dim}``: every student shard run on every test input."""
    outs = {}
    for shard in (s for s in manifest["shards"] if s["role"] == "student"):
        with open_runtime(shard["runtime"], bundle_dir / shard["file"]) as rt:
            outs[int(shard["index"])] = _run_batched(rt, x)
    return outs


def _run_batched(rt: Any, x: np.ndarray) -> np.ndarray:
    first = rt.run(x[:1])
    try:   # traced shards usually take any batch; fall back to one sample at a time if not
        batch = rt.run(x[:2])
        ok = batch.shape[0] == 2 and np.allclose(batch[:1], first, atol=1e-5)
    except Exception:  # noqa: BLE001 - a shape-specialised shard
        ok = False
    step = BATCH if ok else 1
    return np.concatenate([rt.run(x[i:i + step]) for i in range(0, len(x), step)]).astype(np.float32)


def merged_inputs(manifest: dict[str, Any], vectors: dict[int, np.ndarray]) -> np.ndarray:
    """The merge shard's inputs (N x slots*part_dim), built by the edge's Merger, sample by sample."""
    parts = sorted(vectors)
    merger = Merger(parts=parts, part_dim=int(manifest["part_dim"]), deadline_s=1.0,
                    rule=manifest.get("merge_rule", "concat"), student_part=manifest.get("student_part"))
    n = len(next(iter(vectors.values())))
    rows = np.zeros((n, merger.slots * merger.part_dim), dtype=np.float32)
    for sample in range(n):
        merged = None
        for part in parts:
            merged = merger.add(sample, part, vectors[part][sample], 0.0)
        assert merged is not None and not merged.partial
        rows[sample] = merged.inputs[0]
    return rows


def through_codec(outs: dict[int, np.ndarray], *, encoding: Encoding,
                  compression: Compression) -> tuple[dict[int, np.ndarray], float, dict[str, int]]:
    """Every vector encoded to a frame and decoded back as the edge does; mean wire bytes."""
    decoder = Decoder()
    decoded, wire, frames = {}, 0, 0
    for part, vecs in outs.items():
        got = np.empty_like(vecs)
        for sample, vec in enumerate(vecs):
            buf = encode_frame(vec, run_id=1, sample_id=sample, shard=part, seq=sample, send_ts_ns=0,
                               encoding=encoding, compression=compression)
            frame = decoder.decode(buf)
            if frame is None:
                raise RuntimeError(f"a frame did not decode: {decoder.last_error}")
            got[sample] = frame.array
            wire += len(buf)
            frames += 1
        decoded[part] = got
    return decoded, wire / frames, decoder.stats.as_dict()


def classify(bundle_dir: Path, manifest: dict[str, Any], z: np.ndarray) -> np.ndarray:
    shard = shard_for(manifest, role="merge")
    with open_runtime(shard["runtime"], bundle_dir / shard["file"]) as rt:
        return _run_batched(rt, z).argmax(axis=1)


def evaluate(exp: Experiment, *, cache_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.monotonic()
    prepared = prepare_bundle(exp, cache_dir=cache_dir,
                              progress=lambda phase, done, total: (done % 200 == 0 or done == total)
                              and log(f"{phase} {done}/{total}"))
    ds, manifest, bundle = prepared.dataset, prepared.manifest, prepared.bundle_dir
    log(f"model ready ({'cached' if prepared.training.get('cached') else 'trained'}, "
        f"{time.monotonic() - t0:.1f} s); {len(ds.y_test)} test samples of {ds.name}")
    outs = student_outputs(bundle, manifest, ds.x_test)
    log(f"student outputs: {len(outs)} x {next(iter(outs.values())).shape}, "
        f"zeros {float(np.mean([np.mean(v == 0) for v in outs.values()])):.0%}")
    rows, baseline_pred = [], None
    for encoding in Encoding:
        for compression in Compression:
            decoded, wire, stats = through_codec(outs, encoding=encoding, compression=compression)
            pred = classify(bundle, manifest, merged_inputs(manifest, decoded))
            if baseline_pred is None:
                baseline_pred = pred
            rows.append(_row(encoding, compression, pred, baseline_pred, ds.y_test, wire, outs, decoded, stats))
            log(_fmt(rows[-1]))
    base = rows[0]["accuracy"]
    for r in rows:
        r["accuracy_delta_pp"] = round((r["accuracy"] - base) * 100, 3)
    return {"rows": rows, "dataset": ds.name, "test_samples": int(len(ds.y_test)),
            "students": len(outs), "part_dim": int(manifest["part_dim"]),
            "bundle_key": manifest.get("config_key"), "training_test_accuracy": prepared.training.get("test_accuracy"),
            "baseline": "f32/none", "wall_s": round(time.monotonic() - t0, 1)}


def _row(encoding: Encoding, compression: Compression, pred: np.ndarray, base: np.ndarray, y: np.ndarray,
         wire: float, outs: dict[int, np.ndarray], decoded: dict[int, np.ndarray],
         stats: dict[str, int]) -> dict[str, Any]:
    err = max(float(np.max(np.abs(decoded[p] - outs[p]))) for p in outs)
    return {"encoding": encoding.name.lower(), "compression": compression.name.lower(),
            "accuracy": round(float(np.mean(pred == y)), 5),
            "agreement_with_f32": round(float(np.mean(pred == base)), 5),
            "max_abs_error": err, "mean_wire_bytes": round(wire, 2), "decode_drops": stats["total_dropped"]}


def _fmt(r: dict[str, Any]) -> str:
    return (f"{r['encoding']:12s} {r['compression']:5s} acc {r['accuracy']:.4f}  agree {r['agreement_with_f32']:.4f}  "
            f"max err {r['max_abs_error']:.2e}  wire {r['mean_wire_bytes']:7.1f} B/frame")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="digits and a small model (< 60 s)")
    ap.add_argument("--json", action="store_true", help="last line of stdout: {\"rows\": [...], ...}")
    ap.add_argument("--cache", type=Path, default=None, help="model cache dir (default: default_cache_dir())")
    ap.add_argument("--experiment", type=Path, default=DEMO_EXPERIMENT, help="experiment.yaml (default: the demo's)")
    args = ap.parse_args(argv)
    out = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    use_f16_backend("torch")   # this process has torch (the shards run in it), as the edge does
    exp = load_experiment(args.experiment)
    if args.quick:
        exp = quick_experiment(exp)
    result = evaluate(exp, cache_dir=args.cache or default_cache_dir(), log=log)
    log(f"done in {result['wall_s']} s")
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
