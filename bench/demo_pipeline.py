#!/usr/bin/env python3
"""Bench: end-to-end latency and wall time of the demo pipeline, beside a raw MQTT baseline.

Runs `testbed demo --headless --json` as a user would (a real mosquitto, four agent
processes) and, in the same run, the baseline: one raw paho publish -> subscribe hop on a
mosquitto of its own, at the same message rate. One sample of the pipeline crosses three
such hops (trigger -> wearable, activation -> edge, prediction -> orchestrator) plus compute,
shaping and merge, so the ratio `e2e_p50 / (3 x hop_p50)` is the pipeline's own overhead.

  --quick   digits dataset, 100 samples (about 30 s)
  full      Fashion-MNIST, 500 samples, no faults; once with an empty model cache (training
            included) and once cached, the issue's time budget figures
  --json    last line of stdout is one JSON object with every figure
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes.mqtt import MqttClient  # noqa: E402
from testbed.broker import EmbeddedBroker  # noqa: E402
from testbed.runstate import percentile  # noqa: E402


def raw_hop_ms(*, n: int, rate_hz: float, workdir: Path) -> dict[str, float]:
    """Latency of one paho publish -> subscriber callback on loopback mosquitto."""
    lat: list[float] = []
    got = threading.Event()
    sent_at = [0.0]

    def on_message(_t: str, _p: bytes) -> None:
        lat.append((time.perf_counter() - sent_at[0]) * 1000.0)
        got.set()

    with EmbeddedBroker(workdir=workdir) as b, \
            MqttClient(host=b.host, port=b.port, client_id="bench-sub", on_message=on_message) as sub, \
            MqttClient(host=b.host, port=b.port, client_id="bench-pub") as pub:
        sub.subscribe("bench/hop", qos=1)
        time.sleep(0.3)
        payload = b"x" * 118  # the demo's activation frame size
        for _ in range(n):
            got.clear()
            sent_at[0] = time.perf_counter()
            pub.publish("bench/hop", payload, qos=1)
            got.wait(2.0)
            time.sleep(max(0.0, 1.0 / rate_hz - (time.perf_counter() - sent_at[0])))
    return {"p50": round(percentile(lat, 50) or 0.0, 3), "p95": round(percentile(lat, 95) or 0.0, 3),
            "n": len(lat)}


def run_demo(args: list[str], *, cache: Path, cwd: Path) -> tuple[dict, float]:
    env = {**os.environ, "HBC_TESTBED_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "testbed", "demo", "--headless", "--json", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"demo failed ({proc.returncode}): {proc.stderr[-1500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="digits, 100 samples (< 60 s)")
    ap.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as tmp:
        tmpd = Path(tmp)
        cache = tmpd / "cache"
        if ns.quick:
            demo_args = ["--dataset", "digits", "--samples", "100", "--no-faults"]
        else:
            demo_args = ["--samples", "500", "--no-faults"]
        cold, cold_wall = run_demo(demo_args, cache=cache, cwd=tmpd)
        warm, warm_wall = run_demo(demo_args, cache=cache, cwd=tmpd)
        rate = 20.0
        hop = raw_hop_ms(n=200 if not ns.quick else 100, rate_hz=rate, workdir=tmpd / "broker")
    e2e = warm["latency_ms"]
    fig = {
        "dataset": warm["dataset"], "samples": warm["samples"],
        "accuracy": warm["accuracy"], "offline_test_accuracy": round(warm["model"]["test_accuracy"], 4),
        "completed": warm["completed"], "timed_out": warm["timed_out"],
        "train_seconds": cold["model"]["train_seconds"],
        "wall_s_cold": round(cold_wall, 1), "wall_s_cached": round(warm_wall, 1),
        "e2e_latency_ms_p50": e2e["p50"], "e2e_latency_ms_p95": e2e["p95"],
        "raw_mqtt_hop_ms_p50": hop["p50"], "raw_mqtt_hop_ms_p95": hop["p95"],
        "e2e_over_3_hops_p50": round(e2e["p50"] / (3 * hop["p50"]), 2) if hop["p50"] else None,
        "compute_ms_p50_wearables": statistics.median(
            [b["compute_ms_p50"] for b in warm["boards"] if b["role"] == "wearable"]),
    }
    print(f"dataset {fig['dataset']}, {fig['samples']} samples at {rate:g} Hz")
    print(f"accuracy (cached run)        {fig['accuracy']:.4f}  (offline test set: {fig['offline_test_accuracy']})")
    print(f"wall time cold / cached      {fig['wall_s_cold']} s / {fig['wall_s_cached']} s "
          f"(training {fig['train_seconds']} s)")
    print(f"e2e latency p50 / p95        {e2e['p50']} / {e2e['p95']} ms")
    print(f"raw MQTT hop p50 / p95       {hop['p50']} / {hop['p95']} ms  (baseline, same run)")
    print(f"e2e p50 / (3 x hop p50)      {fig['e2e_over_3_hops_p50']}x")
    if ns.json:
        print(json.dumps(fig))
    return 0


if __name__ == "__main__":
    sys.exit(main())
