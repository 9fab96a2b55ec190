"""`testbed partition` and experiments with a partition section: config errors, bundles, runs.

Tiny WRN teacher and students on scikit-learn's digits, so a whole partition takes seconds; the
run test deploys the bundle to real agent subprocesses over a real broker.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import last_json, read_jsonl, run_cli
from testbed.bundle import BundleError, load_manifest
from testbed.config import check_compatible, load_experiment, load_inventory
from testbed.errors import ConfigError
from testbed.hashing import sha256_file

TINY = """\
  teacher: {widths: [8, 16, 32], epochs: 6, batch_size: 64, lr: 0.01}
  graph: {images: 1000}
  student: {width: 6, part_dim: 6, epochs: 8, batch_size: 64, lr: 0.01}
"""

INVENTORY = """\
bench: pt
broker: {mode: embedded}
boards:
  a: {role: wearable, kind: sim, connect: local, runtime: torch}
  b: {role: wearable, kind: sim, connect: local, runtime: torch}
  c: {role: wearable, kind: sim, connect: local, runtime: torch}
  d: {role: wearable, kind: sim, connect: local, runtime: torch}
  edge: {role: edge, kind: sim, connect: local, runtime: torch}
links:
  - {name: a-edge, from: a, to: edge, transport: {type: mqtt}, profile: hbc-1312k}
  - {name: b-edge, from: b, to: edge, transport: {type: mqtt}, profile: hbc-1312k}
  - {name: c-edge, from: c, to: edge, transport: {type: mqtt}, profile: hbc-1312k}
  - {name: d-edge, from: d, to: edge, transport: {type: mqtt}, profile: hbc-1312k}
"""


def experiment(path: Path, *, method: str = "resilient", extra: str = "", partition_extra: str = "",
               faults: str = "") -> Path:
    path.write_text(f"""\
name: tiny-part
seed: 0
dataset: {{name: digits}}
partition:
  method: {method}
  students: 4
  parts: {2 if method == "resilient" else 4}
{TINY}{partition_extra}
assignment: {{a: 0, b: 1, c: 2, d: 3, edge: merge}}
run: {{samples: 30, rate_hz: 20, deadline_ms: 250, timeout_ms: 1500}}
{extra}{faults}""")
    return path


def _error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_experiment(path)
    return info.value


# -- the experiment file ----------------------------------------------------------------------

def test_partition_section_loads_with_only_the_keys_set(tmp_path: Path) -> None:
    exp = load_experiment(experiment(tmp_path / "e.yaml"))
    p = exp.partition
    assert exp.model is None and exp.train is None and exp.students == 4
    assert p is not None and p.method == "resilient" and (p.students, p.parts) == (4, 2)
    assert dict(p.teacher) == {"widths": (8, 16, 32), "epochs": 6, "batch_size": 64, "lr": 0.01}
    assert p.runtimes == ("torch",) and p.quantize == "none"


def test_unknown_student_key_names_file_line_and_key(tmp_path: Path) -> None:
    path = experiment(tmp_path / "e.yaml", partition_extra="  quantise: int8\n")
    err = _error(path)
    assert err.key == "partition.quantise" and err.line == 11 and "did you mean 'quantize'" in str(err)
    path = experiment(tmp_path / "e.yaml")
    path.write_text(path.read_text().replace("width: 6,", "widht: 6,"))
    assert _error(path).key == "partition.student.widht"


def test_resilient_needs_two_students_per_part(tmp_path: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    path.write_text(path.read_text().replace("parts: 2", "parts: 3"))
    err = _error(path)
    assert err.key == "partition.parts" and "M <= S/2 = 2" in str(err) and err.line == 7


def test_model_and_partition_together_are_refused(tmp_path: Path) -> None:
    path = experiment(tmp_path / "e.yaml", extra="model: {family: cnn-students, students: 4, width: 8, out_dim: 8}\n")
    err = _error(path)
    assert err.key == "model" and "not both" in str(err)


def test_int8_needs_tflite_and_tflite_boards_need_tflite_shards(tmp_path: Path) -> None:
    err = _error(experiment(tmp_path / "e.yaml", partition_extra="  quantize: int8\n"))
    assert err.key == "partition.quantize" and "tflite" in str(err)
    err = _error(experiment(tmp_path / "e.yaml", partition_extra="  runtimes: [torch, onnx]\n"))
    assert err.key == "partition.runtimes[1]"
    inv_path = tmp_path / "inventory.yaml"
    inv_path.write_text(INVENTORY.replace("a: {role: wearable, kind: sim, connect: local, runtime: torch}",
                                          "a: {role: wearable, kind: sim, connect: local, runtime: tflite}"))
    exp = load_experiment(experiment(tmp_path / "e.yaml"))
    with pytest.raises(ConfigError, match="runtime 'tflite'") as info:
        check_compatible(exp, load_inventory(inv_path))
    assert info.value.key == "partition.runtimes"


def test_partition_command_refuses_an_experiment_without_the_section(tmp_path: Path, model_cache: Path) -> None:
    from testbed.cli import DEMO_DIR
    proc = run_cli("partition", str(DEMO_DIR / "experiment.yaml"), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2
    assert "partition: no partition section" in proc.stderr and "Traceback" not in proc.stderr


# -- bundles from the command line --------------------------------------------------------------

def test_partition_writes_a_verified_bundle(tmp_path: Path, model_cache: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    proc = run_cli("partition", str(path), "--out", str(tmp_path / "b"), "--threads", "1", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = last_json(proc.stdout)
    m = load_manifest(tmp_path / "b")
    assert doc["bundle"] == str(tmp_path / "b") and doc["method"] == m["method"] == "resilient"
    assert m["merge_rule"] == "average" and m["student_part"] == [0, 1, 0, 1] and m["bundle_key"]
    assert [r["k"] for r in m["evaluation"]["resilience"]] == [0, 1, 2, 3]
    assert "shard student_0" in proc.stderr and "k = 3 failed" in proc.stderr  # --json: the report goes to stderr
    assert (tmp_path / "b" / "experiment.yaml").read_text() == path.read_text()   # the bundle carries its experiment
    assert m["experiment"] == {"name": "tiny-part", "file": str(path), "copy": "experiment.yaml",
                               "sha256": sha256_file(tmp_path / "b" / "experiment.yaml")}
    # the thread count it trained with is recorded and keyed; the folder holds the cache's bundle of that key
    assert m["numerics"]["threads"] == m["evaluation"]["numerics"]["threads"] == 1 == doc["numerics"]["threads"]
    assert m["bundle_inputs"]["numerics"]["threads"] == 1 and m["bundle_inputs"]["data"]["name"] == "digits"
    cached = load_manifest(model_cache / f"partition-{m['bundle_key']}" / "bundle")
    assert [s["sha256"] for s in cached["shards"]] == [s["sha256"] for s in m["shards"]]


def test_compare_writes_table_plot_and_both_bundles(tmp_path: Path, model_cache: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    proc = run_cli("partition", str(path), "--compare", "--out", str(tmp_path / "cmp"), "--threads", "1", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = last_json(proc.stdout)
    assert doc["S"] == 4 and doc["M"] == 2 and [r["k"] for r in doc["rows"]] == [0, 1, 2, 3]
    for r in doc["rows"]:
        assert 0 <= r["nonn_worst"] <= r["nonn_mean"] <= 1 and 0 <= r["resilient_worst"] <= r["resilient_mean"] <= 1
    on_disk = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert on_disk["rows"] == doc["rows"]
    assert (tmp_path / "cmp" / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    assert load_manifest(tmp_path / "cmp" / "nonn")["merge_rule"] == "concat"
    assert load_manifest(tmp_path / "cmp" / "resilient")["merge_rule"] == "average"


# -- running a partition bundle ------------------------------------------------------------------

@pytest.mark.slow
def test_run_deploys_the_resilient_bundle_and_averages_what_arrives(tmp_path: Path, model_cache: Path) -> None:
    """Board c is killed part-way: the edge averages the students that arrived (a, b, d), so every
    later sample is still answered, as a partial one."""
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    path = experiment(tmp_path / "e.yaml", faults="faults:\n  - {kind: kill, board: c, at_s: 0.6}\n")
    proc = run_cli("run", str(path), "--headless", "--json", "--output", str(tmp_path / "runs"),
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    assert s["samples"] == 30 and s["timed_out"] == 0
    assert s["complete"] > 0 and s["partial"] > 0 and s["accuracy"] is not None
    results = [e for e in read_jsonl(Path(s["run_dir"]) / "events.jsonl") if e["type"] == "result"]
    partial = [r for r in results if r["status"] == "partial"]
    assert partial and all(r["missing"] == ["c"] and r["pred"] is not None for r in partial)
    run_json = json.loads((Path(s["run_dir"]) / "run.json").read_text())
    assert run_json["bundle"]["method"] == "resilient"


@pytest.mark.slow
def test_run_with_a_given_bundle_directory(tmp_path: Path, model_cache: Path) -> None:
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    path = experiment(tmp_path / "e.yaml", method="nonn")
    proc = run_cli("partition", str(path), "--out", str(tmp_path / "b"), "--threads", "1",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_cli("run", str(path), "--bundle", str(tmp_path / "b"), "--headless", "--json", "--samples", "10",
                   "--output", str(tmp_path / "runs"), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    assert s["complete"] == 10
    (tmp_path / "b" / "student_1.ts").write_bytes(b"tampered")
    proc = run_cli("run", str(path), "--bundle", str(tmp_path / "b"), "--headless", "--samples", "5",
                   "--output", str(tmp_path / "runs"), cache=model_cache, cwd=tmp_path)
    assert proc.returncode != 0 and "sha256" in proc.stderr and "Traceback" not in proc.stderr


# -- LiteRT shards --------------------------------------------------------------------------------

@pytest.mark.slow
def test_tflite_boards_get_int8_litert_shards(tmp_path: Path, model_cache: Path) -> None:
    from testbed.litert import litert_available
    reason = litert_available(quantize="int8")
    if reason:
        pytest.skip(reason)
    inv = INVENTORY.replace("a: {role: wearable, kind: sim, connect: local, runtime: torch}",
                            "a: {role: wearable, kind: sim, connect: local, runtime: tflite}")
    (tmp_path / "inventory.yaml").write_text(inv)
    path = experiment(tmp_path / "e.yaml", partition_extra="  runtimes: [torch, tflite]\n  quantize: int8\n")
    proc = run_cli("partition", str(path), "--out", str(tmp_path / "b"), "--threads", "1", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the exporters' chatter (absl / TensorFlow C++ logging, torchao, torch's log handlers) is in the
    # bundle's build.log, not on the terminal; the progress of the export is
    for noise in ("absl", "flatbuffer_export", "torchao", "oneDNN", "_pytree"):
        assert noise not in proc.stderr + proc.stdout, noise
    log = (tmp_path / "b" / "build.log").read_text()
    assert any(noise in log for noise in ("absl", "XNNPACK", "torchao")), log[:2000]
    assert "litert export done" in proc.stderr and len(proc.stdout.splitlines()) == 1
    m = load_manifest(tmp_path / "b")
    for shard in m["shards"]:
        alts = {a["quantize"]: a for a in shard["alternates"]}
        assert set(alts) == {"none", "int8"} and all(a["runtime"] == "tflite" for a in alts.values())
        assert alts["none"]["parity_max_abs_error"] <= 1e-4
        assert alts["int8"]["bytes"] < alts["none"]["bytes"] or shard["role"] == "merge"
    assert m["versions"]["litert_torch"] and m["versions"]["ai_edge_litert"] and m["versions"]["torch"]
    lite = m["evaluation"]["litert"]
    assert lite["none"]["accuracy"] == pytest.approx(lite["none"]["torch_accuracy"], abs=0.01)
    # int8 PTQ may cost accuracy; 5 pt is far past what calibrated int8 costs a model this size
    assert lite["int8"]["accuracy"] == pytest.approx(lite["int8"]["torch_accuracy"], abs=0.05)
    assert lite["int8"]["images"] > 0
    proc = run_cli("run", str(path), "--bundle", str(tmp_path / "b"), "--headless", "--json", "--samples", "10",
                   "--output", str(tmp_path / "runs"), cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "XNNPACK" not in proc.stderr        # the LiteRT board's own chatter is in its agent.log
    s = last_json(proc.stdout)
    assert s["complete"] == 10
    board_a = Path(s["run_dir"]) / "boards" / "a"
    assert json.loads((board_a / "agent.json").read_text())["shard"] == "student_0.int8.tflite"
    (tmp_path / "b" / "merge.int8.tflite").write_bytes(b"\0" * 16)
    with pytest.raises(BundleError, match="sha256"):
        load_manifest(tmp_path / "b")


@pytest.mark.parametrize("name,inventory", [("resilient", "inventory"), ("layer", "inventory-layer")])
def test_shipped_partition_examples_load_and_fit_their_inventories(name: str, inventory: str) -> None:
    root = Path(__file__).resolve().parent.parent / "examples" / "partition"
    exp = load_experiment(root / f"{name}.yaml")
    assert exp.partition is not None and exp.partition.method == name
    check_compatible(exp, load_inventory(root / f"{inventory}.yaml"))
