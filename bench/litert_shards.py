"""Bench: LiteRT (.tflite) student shards against the TorchScript baseline.

Trains a small classifier for a few seconds (one ``testbed.partition.students.Student`` shard
followed by a linear head, Fashion-MNIST, or scikit-learn's digits with ``--quick``), exports the
student shard as TorchScript (the baseline) and with ``testbed.litert.export_tflite`` as float32,
int8 (full integer, calibrated on real training images) and int8 dynamic range. Reported per
format: conversion time, file size, max abs error against torch on the parity samples, top-1
accuracy on the test set (shard output through the same torch head) and its change against
torch, and per-sample latency at batch 1 on one thread through ``nodes.runtime`` (median of
``--reps`` runs, TorchScript measured in the same run). ``--json``: the last line of stdout is
``{"rows": [...], ...}``. This script measures; it asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from nodes.runtime import configure_torch_threads, open_runtime  # noqa: E402
from testbed.data import load_dataset  # noqa: E402
from testbed.litert import export_tflite, litert_available  # noqa: E402
from testbed.zoo import Student  # noqa: E402


def _train(x: np.ndarray, y: np.ndarray, *, seconds: float, width: int, part_dim: int) -> tuple[Student, nn.Linear]:
    torch.manual_seed(0)
    student = Student(in_channels=x.shape[1], width=width, part_dim=part_dim, mean=float(x.mean()), std=float(x.std()))
    head = nn.Linear(part_dim, int(y.max()) + 1)
    opt = torch.optim.Adam([*student.parameters(), *head.parameters()], lr=5e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        idx = torch.randint(0, len(xt), (128,))
        opt.zero_grad()
        nn.functional.cross_entropy(head(student(xt[idx])), yt[idx]).backward()
        opt.step()
    return student.eval(), head.eval()


def _latency_us(path: Path, runtime: str, x: np.ndarray, *, reps: int) -> float:
    # 1 thread on both sides: LiteRT's is the interpreter's own, torch's the process's (set in main)
    with open_runtime(runtime, path, **({"threads": 1} if runtime == "tflite" else {})) as rt:
        for i in range(20):
            rt.run(x[i % len(x)][None])
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            rt.run(x[i % len(x)][None])
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits instead of Fashion-MNIST")
    ap.add_argument("--train-seconds", type=float, default=20.0)
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if (reason := litert_available(quantize="int8")) is not None:
        print(f"skipped: {reason}")
        return 0
    configure_torch_threads(1)
    data = load_dataset("digits" if args.quick else "fashion-mnist")
    student, head = _train(data.x_train, data.y_train, seconds=args.train_seconds, width=12, part_dim=16)
    x_test, y_test = data.x_test[:2000], data.y_test[:2000]

    def acc(vectors: np.ndarray) -> float:
        with torch.no_grad():
            logits = head(torch.from_numpy(vectors)).numpy()
        return float(np.mean(logits.argmax(1) == y_test))

    with torch.no_grad():
        torch_acc = acc(student(torch.from_numpy(x_test)).numpy())
    out = Path(tempfile.mkdtemp(prefix="litert-bench-"))
    example = torch.from_numpy(data.x_train[:1])
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(student, example).save(str(out / "student.ts"))
    ts_path = out / "student.ts"
    rows.append({"format": "torchscript", "convert_s": round(time.perf_counter() - t0, 2),
                 "bytes": ts_path.stat().st_size, "max_abs_err": 0.0,
                 "accuracy": torch_acc, "acc_delta": 0.0,
                 "latency_us": _latency_us(ts_path, "torch", x_test, reps=args.reps)})
    for mode in ("none", "int8", "int8-dynamic"):
        path = out / f"student_{mode}.tflite"
        entry = export_tflite(student, example, path, samples=data.x_train[:64], quantize=mode,
                              calibration=data.x_train[:256])
        with open_runtime("tflite", path) as rt:
            a = acc(rt.run(x_test))
        rows.append({"format": f"tflite/{entry['scheme']}",
                     "convert_s": entry["convert_seconds"] + entry["quantize_seconds"],
                     "bytes": entry["bytes"], "max_abs_err": entry["parity_max_abs_error"],
                     "accuracy": a, "acc_delta": a - torch_acc,
                     "latency_us": _latency_us(path, "tflite", x_test, reps=args.reps)})
    print(f"dataset {data.name}, student width 12 -> 16-d vector, {len(y_test)} test images, batch 1, 1 thread")
    print(f"{'format':28} {'convert s':>9} {'bytes':>8} {'max|err|':>9} {'acc':>7} {'dacc':>7} {'us/sample':>9}")
    for r in rows:
        print(f"{r['format']:28} {r['convert_s']:9.2f} {r['bytes']:8d} {r['max_abs_err']:9.2g} "
              f"{r['accuracy']:7.4f} {r['acc_delta']:+7.4f} {r['latency_us']:9.1f}")
    if args.json:
        print(json.dumps({"rows": rows, "dataset": data.name}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
