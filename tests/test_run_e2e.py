"""End to end: the CLI runs a real broker and real agent subprocesses on the demo bench.

Uses scikit-learn's digits so the model trains in seconds; every assertion is about behaviour
(counts, which parts arrived, what got logged), never about speed.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEMO_INVENTORY, digits_experiment, last_json, read_jsonl, run_cli

pytestmark = pytest.mark.slow


def _check_accounting(summary: dict, run_dir: Path, n: int) -> list[dict]:
    assert summary["samples"] == n
    assert summary["completed"] + summary["timed_out"] == n
    events = read_jsonl(run_dir / "events.jsonl")
    results = [e for e in events if e["type"] == "result"]
    assert sorted(e["sample"] for e in results) == list(range(n)), "one result event per sample"
    assert json.loads((run_dir / "summary.json").read_text())["samples"] == n
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["seed"] == 0 and "torch" in run_json["versions"] and run_json["inventory"]["text"]
    return results


def test_demo_headless_json(tmp_path: Path, model_cache: Path) -> None:
    n = 24
    proc = run_cli("demo", "--headless", "--json", "--samples", str(n), "--dataset", "digits", "--no-faults",
                   "--output", str(tmp_path / "runs"), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    for key in ("samples", "completed", "partial", "timed_out", "accuracy", "accuracy_all_parts",
                "latency_ms", "boards", "links", "run_dir"):
        assert key in s
    assert set(s["latency_ms"]) >= {"p50", "p95"}
    results = _check_accounting(s, Path(s["run_dir"]), n)
    assert s["completed"] == n and s["partial"] == 0 and s["timed_out"] == 0
    assert all(r["status"] == "complete" for r in results)
    assert s["accuracy"] >= 0.7  # digits model, not a speed figure: a sanity floor on the pipeline
    boards = {b["name"]: b for b in s["boards"]}
    assert {b["role"] for b in boards.values()} == {"wearable", "edge"}
    assert all(b["samples"] == n for b in boards.values())
    assert all(b["status"] == "stopped" for b in boards.values())
    links = {lk["name"]: lk for lk in s["links"]}
    assert set(links) == {"wrist-edge", "chest-edge", "ankle-edge"}
    assert all(lk["rate_bps"] == 1312500 and lk["dropped"] == 0 and lk["bytes"] > 0 for lk in links.values())
    # every board estimated its clock against the orchestrator's; on one machine the true offset is 0
    for b in boards.values():
        assert b["clock_uncertainty_ms"] is not None
        assert abs(b["clock_offset_ms"]) <= b["clock_uncertainty_ms"] + 1.0
    # causality: a frame cannot reach the edge before its airtime at 1312.5 kbit/s has passed
    frame_bytes = links["wrist-edge"]["bytes"] / links["wrist-edge"]["frames"]
    airtime_ms = (frame_bytes + 9) * 8 / 1312500 * 1000
    for lk in links.values():
        assert lk["one_way_ms_p50"] >= airtime_ms - lk["clock_uncertainty_ms_p50"]

    # the replayed dashboard and its summary agree with the run's summary.json
    replay = run_cli("monitor", "--replay", s["run_dir"], "--json", cache=model_cache, cwd=tmp_path)
    assert replay.returncode == 0, replay.stderr
    again = last_json(replay.stdout)
    assert {k: again[k] for k in ("completed", "partial", "timed_out", "accuracy")} == \
        {k: s[k] for k in ("completed", "partial", "timed_out", "accuracy")}
    assert "wrist-edge" in replay.stdout and "accuracy" in replay.stdout
    _check_modelled_energy(s, Path(s["run_dir"]), n, replay=again)


def _check_modelled_energy(s: dict, run_dir: Path, n: int, *, replay: dict) -> None:
    """The demo bench models every board's energy: per board in the summary, per inference in the
    events, every raw reading in power/<board>.csv, and all of it labelled modelled."""
    assert set(s["energy"]) == {"wrist", "chest", "ankle", "edge"} and replay["energy"] == s["energy"]
    for name, e in s["energy"].items():
        assert e["meter"] == "model" and e["modelled"] is True and e["rate_hz"] == 50.0, (name, e)
        assert e["inferences"] == n and 0 < e["mj_per_inference"]["p50"] <= e["mj_per_inference"]["p95"]
        assert 2.0 < e["idle_w"] < 5.0 and 2.0 < e["mean_w"] < 5.0      # between sim's idle 2.7 W and active 5 W
        rows = (run_dir / "power" / f"{name}.csv").read_text().splitlines()
        assert rows[0] == "t_ns,rail,mV,mA,mW" and len(rows) > 10
        t = [int(r.split(",")[0]) for r in rows[1:]]
        assert t == sorted(t)
        span_s = (t[-1] - t[0]) / 1e9
        assert e["joules"] == pytest.approx(e["mean_w"] * span_s, rel=0.05)
    samples = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "sample"]
    assert len(samples) == 3 * n and all(e["energy_mj"] > 0 and e["compute_mj"] > 0 for e in samples)
    assert all(e["energy_modelled"] is True for e in samples)
    assert all(e["energy_mj"] == pytest.approx(e["compute_mj"] + e["transmit_mj"], abs=2e-4) for e in samples)
    edge = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "energy"]
    assert sorted(e["sample"] for e in edge) == list(range(n)) and all(e["board"] == "edge" for e in edge)


def test_outage_makes_samples_partial_and_reports_them_separately(tmp_path: Path, model_cache: Path) -> None:
    n = 40  # 2 s at 20 Hz; ankle-edge down from 0.5 s to 1.5 s
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, faults="""faults:
  - {kind: outage, link: ankle-edge, at_s: 0.5, duration_s: 1.0}""")
    proc = run_cli("run", str(exp), "--inventory", str(DEMO_INVENTORY), "--headless", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    results = _check_accounting(s, Path(s["run_dir"]), n)
    assert s["partial"] > 0 and s["timed_out"] == 0
    partial = [r for r in results if r["status"] == "partial"]
    assert all(r["missing"] == ["ankle"] for r in partial)
    assert s["samples_during_outage"] > 0 and s["accuracy_during_outage"] is not None
    assert s["accuracy_partial"] is not None
    # nearly every sample triggered inside the window lost the ankle part; a sample at an edge of
    # the window may straddle it (the agent's clock starts a few ms after the orchestrator's)
    inside = [r for r in results if r["during_outage"]]
    assert sum(r["status"] == "partial" for r in inside) >= len(inside) - 2
    ankle = next(lk for lk in s["links"] if lk["name"] == "ankle-edge")
    assert ankle["dropped_outage"] == s["partial"]
    assert all(lk["dropped"] == 0 for lk in s["links"] if lk["name"] != "ankle-edge")
    events = read_jsonl(Path(s["run_dir"]) / "events.jsonl")
    faults = [e for e in events if e["type"] == "fault"]
    assert [(f["link"], f["phase"]) for f in faults] == [("ankle-edge", "start"), ("ankle-edge", "end")]


def test_killed_wearable_run_still_completes(tmp_path: Path, model_cache: Path) -> None:
    n = 40
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, faults="""faults:
  - {kind: kill, board: chest, at_s: 0.8}""")
    proc = run_cli("run", str(exp), "--inventory", str(DEMO_INVENTORY), "--headless", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    results = _check_accounting(s, Path(s["run_dir"]), n)
    assert s["partial"] > 0
    assert all(r["missing"] == ["chest"] for r in results if r["status"] == "partial")
    # once chest is gone, every later sample is partial or timed out, never complete
    last_complete = max(r["sample"] for r in results if r["status"] == "complete")
    assert all(r["status"] != "complete" for r in results if r["sample"] > last_complete)
    assert last_complete < n - 5
    chest = next(b for b in s["boards"] if b["name"] == "chest")
    assert chest["status"] == "offline" and chest["samples"] < n  # last will published by the broker


def test_each_link_carries_its_own_encoding_compression_and_level(tmp_path: Path, model_cache: Path) -> None:
    n = 20
    inv = tmp_path / "inventory.yaml"
    text = DEMO_INVENTORY.read_text()
    for transport, extra in (("{type: serial, port: pty, baud: 3000000}",
                              "    encoding: f16\n    compression: zstd\n    compression_level: -5\n"),
                             ("{type: ble, hci: virtual}",
                              "    encoding: int8\n    compression: lz4\n    compression_level: 9\n"),
                             ("{type: mqtt}", "")):
        text = text.replace(f"    transport: {transport}\n", f"    transport: {transport}\n{extra}", 1)
    inv.write_text(text)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n)
    proc = run_cli("run", str(exp), "--inventory", str(inv), "--headless", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    _check_accounting(s, Path(s["run_dir"]), n)
    assert s["completed"] == n and s["accuracy"] >= 0.7
    per_frame = {lk["name"]: lk["bytes"] / lk["frames"] for lk in s["links"]}
    # an 8-value vector: 32 B as f32; 16 B as f16 (zstd adds its frame header); 8 + 8 B as int8
    assert per_frame["chest-edge"] < per_frame["wrist-edge"] < per_frame["ankle-edge"]
    links = {b: json.loads((Path(s["run_dir"]) / "boards" / b / "agent.json").read_text())["link"]
             for b in ("wrist", "chest", "ankle")}
    assert [(lk["encoding"], lk["compression"], lk["compression_level"]) for lk in links.values()] == \
        [("f16", "zstd", -5), ("int8", "lz4", 9), ("f32", "none", None)]


def test_killed_edge_samples_time_out(tmp_path: Path, model_cache: Path) -> None:
    n = 30
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, timeout_ms=600, faults="""faults:
  - {kind: kill, board: edge, at_s: 0.5}""")
    proc = run_cli("run", str(exp), "--inventory", str(DEMO_INVENTORY), "--headless", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    _check_accounting(s, Path(s["run_dir"]), n)
    assert s["timed_out"] > 0 and s["completed"] < n


def test_config_error_is_one_line_exit_2(tmp_path: Path, model_cache: Path) -> None:
    bad = tmp_path / "inventory.yaml"
    bad.write_text(DEMO_INVENTORY.read_text().replace("role: wearable", "role: wearble", 1))
    line = next(i for i, ln in enumerate(bad.read_text().splitlines(), 1) if "wearble" in ln)
    proc = run_cli("inventory", "check", str(bad), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert f"{bad}:{line}" in err[0] and "boards.wrist.role" in err[0] and "expected" in err[0]
    good = run_cli("inventory", "check", str(DEMO_INVENTORY), cache=model_cache, cwd=tmp_path)
    assert good.returncode == 0 and "wrist-edge" in good.stdout


def test_physical_bench_without_pinned_host_keys_is_refused_before_anything_is_contacted(
        tmp_path: Path, model_cache: Path) -> None:
    """The root inventory names SSH boards whose host keys nobody pinned yet: refused up front
    with the `testbed trust` command, before training and before any connection."""
    root_inventory = DEMO_INVENTORY.parent.parent.parent / "inventory.yaml"
    exp = tmp_path / "exp.yaml"   # its Pis run LiteRT: a partition with tflite shards fits the bench
    exp.write_text("""\
name: t
dataset: {name: digits}
partition: {method: nonn, students: 3, runtimes: [torch, tflite]}
assignment: {wrist: 0, chest: 1, ankle: 2, edge: merge}
run: {samples: 5, rate_hz: 20, deadline_ms: 250, timeout_ms: 1500}
""")
    inv = tmp_path / "inventory.yaml"
    inv.write_text(root_inventory.read_text())   # known_hosts beside it: none yet
    proc = run_cli("run", str(exp), "--inventory", str(inv), "--headless",
                   cache=tmp_path / "empty-cache", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert "boards.wrist: no host key pinned for wrist.local:22" in err[0] and "testbed trust wrist" in err[0]
    assert not (tmp_path / "empty-cache").exists(), "nothing trained or written before the refusal"


def test_spine_students_on_litert_boards_are_refused_with_the_fix(tmp_path: Path, model_cache: Path) -> None:
    """The jointly trained students export TorchScript only; the root inventory's Pis run LiteRT."""
    root_inventory = DEMO_INVENTORY.parent.parent.parent / "inventory.yaml"
    exp = digits_experiment(tmp_path / "exp.yaml", samples=5)
    proc = run_cli("run", str(exp), "--inventory", str(root_inventory), "--headless",
                   cache=tmp_path / "empty-cache", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "runtime 'tflite'" in proc.stderr and "runtimes: [torch, tflite]" in proc.stderr
    assert not (tmp_path / "empty-cache").exists()
