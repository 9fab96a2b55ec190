"""`testbed sweep` end to end: points run as real runs (broker, agent subprocesses) on two
simulated benches in parallel, a rerun skips finished points, Ctrl-C stops the running point and
a rerun resumes without rerunning what finished; `testbed run --set` makes a point by hand.

A tiny teacher and students on scikit-learn's digits (trained once per session in the shared
model cache), MQTT links, 20-sample runs.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, last_json, run_cli, sigint_default, two_wearable_inventory

pytestmark = pytest.mark.slow

EXPERIMENT = """\
name: sw
seed: 0
dataset: {name: digits}
partition:
  method: resilient
  students: 2
  parts: 1
  teacher: {widths: [8, 16, 32], epochs: 6, batch_size: 64, lr: 0.01}
  graph: {images: 1000}
  student: {width: 6, part_dim: 6, epochs: 8, batch_size: 64, lr: 0.01}
assignment: {a: 0, b: 1, edge: merge}
run: {samples: 20, rate_hz: 20, deadline_ms: 250, timeout_ms: 1500}
"""


def sweep_files(folder: Path, grid: str) -> Path:
    (folder / "exp.yaml").write_text(EXPERIMENT)
    for bench in ("x", "y"):
        (folder / f"bench-{bench}.yaml").write_text(two_wearable_inventory(bench=f"sweep-{bench}"))
    (folder / "sweep.yaml").write_text(f"name: tiny\nexperiment: exp.yaml\nbenches: [bench-x.yaml]\n"
                                       f"outage: {{mean_outage_s: 0.5}}\ngrid:\n{grid}")
    return folder / "sweep.yaml"


def records(sweep_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (sweep_dir / "points").glob("*.json")}


def test_two_benches_run_points_in_parallel_and_a_rerun_skips_them(tmp_path: Path, model_cache: Path) -> None:
    sweep_files(tmp_path, "  method: [nonn, resilient]\n  availability: [1.0, 0.8]\n")
    args = ("sweep", "sweep.yaml", "--bench", "bench-x.yaml", "--bench", "bench-y.yaml", "--headless", "--json")
    proc = run_cli(*args, cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last_json(proc.stdout) == {"sweep_dir": "sweeps/tiny", "points": 4, "done": 4, "skipped": 0,
                                      "failed": 0, "interrupted": 0, "pending": 0}
    sweep_dir = tmp_path / "sweeps" / "tiny"
    rows = list(csv.DictReader((sweep_dir / "points.csv").open()))
    assert [(r["method"], float(r["availability"])) for r in rows] == [("nonn", 1.0), ("nonn", 0.8),
                                                                        ("resilient", 1.0), ("resilient", 0.8)]
    for row in rows:   # every point is an ordinary, finished run with its figures in the table
        summary = json.loads((sweep_dir / row["run_dir"] / "summary.json").read_text())
        assert row["state"] == "finished" and summary["state"] == "finished"
        assert int(row["completed"]) + int(row["timed_out"]) + int(row["unresolved"]) == int(row["triggered"]) == 20
        assert float(row["accuracy"]) == pytest.approx(summary["accuracy"])
        assert 0.0 <= float(row["offline_expected_accuracy"]) <= 1.0
    outage_runs = [r for r in rows if float(r["availability"]) < 1.0]
    for row in outage_runs:   # the availability reached the links as an on/off process
        run_start = json.loads((sweep_dir / row["run_dir"] / "events.jsonl").read_text().splitlines()[0])
        assert all(l["profile"]["outage_process"]["mean_down_s"] == 0.5 for l in run_start["links"])
    # both benches ran points, and two points ran at the same time
    spans = [(a["bench"], a["t_start"], a["t_end"]) for rec in records(sweep_dir).values() for a in rec["attempts"]]
    assert {b for b, _, _ in spans} == {"bench-x.yaml", "bench-y.yaml"}
    assert any(b1 != b2 and s1 < e2 and s2 < e1 for b1, s1, e1 in spans for b2, s2, e2 in spans)
    doc = json.loads((sweep_dir / "sweep.json").read_text())
    assert doc["axes"] == {"method": ["nonn", "resilient"], "availability": [1.0, 0.8]} and doc["done"] == 4

    runs_before = sorted(p.name for p in (sweep_dir / "runs").glob("*/*"))
    again = run_cli(*args, cache=model_cache, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert last_json(again.stdout)["skipped"] == 4 and last_json(again.stdout)["done"] == 0
    assert sorted(p.name for p in (sweep_dir / "runs").glob("*/*")) == runs_before


def test_an_interrupted_sweep_resumes_without_rerunning_finished_points(tmp_path: Path, model_cache: Path) -> None:
    # three points; the second samples for 10 s, long enough to be stopped mid-run
    sweep_files(tmp_path, "  samples: [20, 200, 201]\n")
    sweep_dir = tmp_path / "sweeps" / "tiny"
    env = {**os.environ, "HBC_TESTBED_CACHE": str(model_cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "sweep", "sweep.yaml", "--headless", "--json"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)
    try:
        deadline = time.monotonic() + 300
        second = None
        while time.monotonic() < deadline and proc.poll() is None:   # until the second point is sampling
            recs = records(sweep_dir) if (sweep_dir / "points").is_dir() else {}
            if any(r.get("state") == "finished" for r in recs.values()):
                started = [p for p in (sweep_dir / "runs").glob("*/*/events.jsonl") if "sampling_start" in p.read_text()]
                if len(started) == 2:
                    second = started
                    break
            time.sleep(0.2)
        assert second is not None, "the second point never started sampling"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    first = last_json(out)
    assert (first["done"], first["interrupted"], first["pending"]) == (1, 1, 1)
    rows = {r["label"]: r for r in csv.DictReader((sweep_dir / "points.csv").open())}
    assert [rows[f"samples={n}"]["state"] for n in (20, 200, 201)] == ["finished", "interrupted", "pending"]
    stopped_dir = sweep_dir / rows["samples=200"]["run_dir"]
    assert json.loads((stopped_dir / "summary.json").read_text())["state"] == "interrupted"

    # the rerun: the finished point is skipped, the interrupted one reruns (its old run kept), the third runs
    again = run_cli("sweep", "sweep.yaml", "--headless", "--json", cache=model_cache, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (last_json(again.stdout)["skipped"], last_json(again.stdout)["done"]) == (1, 2)
    assert stopped_dir.is_dir()
    recs = records(sweep_dir)
    assert len(recs[rows["samples=20"]["key"]]["attempts"]) == 1
    assert [a["state"] for a in recs[rows["samples=200"]["key"]]["attempts"]] == ["interrupted", "finished"]


def test_run_set_makes_one_point_by_hand_and_bad_values_name_the_flag(tmp_path: Path, model_cache: Path) -> None:
    sweep_files(tmp_path, "  seed: [0]\n")
    bad = run_cli("run", "exp.yaml", "--inventory", "bench-x.yaml", "--set", "run.samples=0", "--headless",
                  cache=model_cache, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith(
        "testbed: error: --set: run.samples: expected an integer")
    bad = run_cli("run", "exp.yaml", "--inventory", "bench-x.yaml", "--set-inventory", "links.zz.encoding=f16",
                  "--headless", cache=model_cache, cwd=tmp_path)
    assert bad.returncode == 2 and "no item named 'zz'" in bad.stderr
    ok = run_cli("run", "exp.yaml", "--inventory", "bench-x.yaml", "--set", "run.samples=12", "--set-inventory",
                 "links.a-edge.profile.rate_bps=164000", "--headless", "--json", "--output", "r", cache=model_cache,
                 cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr[-3000:]
    summary = last_json(ok.stdout)
    assert summary["samples"] == 12
    run_start = json.loads((tmp_path / summary["run_dir"] / "events.jsonl").read_text().splitlines()[0])
    assert [l["rate_bps"] for l in run_start["links"]] == [164000, 1312500]
    # --prepare-only: the bundle this run deploys, from the cache, and nothing run
    prep = run_cli("run", "exp.yaml", "--inventory", "bench-x.yaml", "--set", "run.samples=12", "--prepare-only",
                   "--json", "--output", "p", cache=model_cache, cwd=tmp_path)
    assert prep.returncode == 0, prep.stderr[-3000:]
    doc = last_json(prep.stdout)
    assert doc["cached"] is True and (Path(doc["bundle_dir"]) / "manifest.json").is_file()
    assert not (tmp_path / "p").exists()


def test_a_folder_that_is_not_the_sweeps_own_is_refused(tmp_path: Path, model_cache: Path) -> None:
    sweep_files(tmp_path, "  seed: [0]\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    proc = run_cli("sweep", "sweep.yaml", "--out", "mine", "--headless", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == ("testbed: error: mine: holds files that are not a sweep's (no "
                                                    "readable sweep.json); expected an empty folder or this "
                                                    "sweep's own (choose another with --out)")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
