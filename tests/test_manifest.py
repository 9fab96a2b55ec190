"""Bundles are untrusted input: testbed.manifest's schema, checked before anything is copied or loaded.

Each crafted bundle is refused in one line naming the manifest and the key, with exit 2 through the
CLI, and nothing outside the run directory changes."""
from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from conftest import run_cli
from testbed.bundle import load_manifest
from testbed.manifest import MAX_VALUES, ManifestError, check_manifest


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bundle(folder: Path) -> dict[str, Any]:
    """A well-formed two-student bundle with stand-in shard files (the schema never loads them)."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = []
    for i in range(2):
        data = f"student {i}".encode()
        (folder / f"student_{i}.ts").write_bytes(data)
        shards.append({"name": f"student_{i}", "role": "student", "index": i, "part": i, "runtime": "torch",
                       "file": f"student_{i}.ts", "sha256": _sha(data),
                       "input": {"shape": [1, 1, 8, 8], "dtype": "float32"},
                       "output": {"shape": [1, 6], "dtype": "float32"}})
    (folder / "merge.ts").write_bytes(b"merge")
    shards.append({"name": "merge", "role": "merge", "runtime": "torch", "file": "merge.ts", "sha256": _sha(b"merge"),
                   "input": {"shape": [1, 12], "dtype": "float32"}, "output": {"shape": [1, 10], "dtype": "float32"}})
    return {"format": 1, "method": "nonn", "students": 2, "parts": 2, "part_dim": 6, "merge_rule": "concat",
            "student_part": [0, 1], "dataset": "digits", "classes": [str(c) for c in range(10)], "shards": shards,
            "evaluation": {"test_accuracy": 0.9}}


def _write(folder: Path, doc: Any) -> Path:
    (folder / "manifest.json").write_text(json.dumps(doc))
    return folder


def test_a_well_formed_manifest_passes(tmp_path: Path) -> None:
    doc = _bundle(tmp_path / "b")
    assert load_manifest(_write(tmp_path / "b", doc))["students"] == 2


def _mutate(path: str, value: Any):
    def change(doc: dict[str, Any]) -> Any:
        if path == "":
            return value
        keys = path.split(".")
        target: Any = doc
        for k in keys[:-1]:
            target = target[int(k)] if isinstance(target, list) else target[k]
        last = keys[-1]
        if value is _DELETE:
            del target[last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
        return doc
    return change


_DELETE = object()

CASES = [
    ("", ["not", "a", "manifest"], "top level: expected a JSON object; got a list"),
    ("shards.0", "student_0.ts", "shards[0]: expected a JSON object; got 'student_0.ts'"),
    ("students", _DELETE, "students: expected a value (missing)"),
    ("part_dim", _DELETE, "part_dim: expected a value (missing)"),
    ("merge_rule", _DELETE, "merge_rule: expected a value (missing)"),
    ("shards", _DELETE, "shards: expected a value (missing)"),
    ("shards.0.file", _DELETE, "shards[0].file: expected a value (missing)"),
    ("shards.1.sha256", _DELETE, "shards[1].sha256: expected a value (missing)"),
    ("shards.2.role", _DELETE, "shards[2].role: expected a value (missing)"),
    ("part_dim", 0, "part_dim: expected an integer from 1 to"),
    ("students", 10**9, "students: expected an integer from 1 to 64"),
    ("shards.0.output.shape", [1, 100000, 100000], f"shards[0].output.shape: expected at most {MAX_VALUES} values"),
    ("shards.0.input.shape", [1] * 40, "shards[0].input.shape: expected a list of 1 to 8 items"),
    ("shards.0.input.dtype", "complex128", "shards[0].input.dtype: expected one of float32"),
    ("shards.0.file", "../../etc/passwd", "shards[0].file: expected a plain file name inside the bundle"),
    ("shards.0.file", "/etc/passwd", "shards[0].file: expected a plain file name inside the bundle"),
    ("shards.0.sha256", "abc", "shards[0].sha256: expected a sha256"),
    ("shards.0.index", 5, "shards[0].index: expected an integer from 0 to 1"),
    ("shards.0.runtime", "onnx", "shards[0].runtime: expected one of"),
    ("merge_rule", "vote", "merge_rule: expected one of concat, average"),
    ("student_part", [0, 7], "student_part[1]: expected an integer from 0 to 1"),
    ("format", True, "format: expected 1"),
]


@pytest.mark.parametrize(("path", "value", "phrase"), CASES, ids=[f"{p or 'top'}={v!r}"[:40] for p, v, _ in CASES])
def test_a_malformed_manifest_is_one_line_naming_the_key(tmp_path: Path, path: str, value: Any, phrase: str) -> None:
    doc = _mutate(path, value)(copy.deepcopy(_bundle(tmp_path / "b")))
    with pytest.raises(ManifestError) as err:
        load_manifest(_write(tmp_path / "b", doc))
    msg = str(err.value)
    assert msg.startswith(str(tmp_path / "b" / "manifest.json") + ": ") and phrase in msg, msg
    assert "\n" not in msg and err.value.exit_code == 2


def test_average_needs_each_students_part(tmp_path: Path) -> None:
    doc = _bundle(tmp_path / "b")
    doc.update(merge_rule="average", student_part=None)
    with pytest.raises(ManifestError, match="student_part: expected each student's part"):
        check_manifest(doc, source="m.json")


def test_two_merge_shards_or_a_missing_student_are_refused(tmp_path: Path) -> None:
    doc = _bundle(tmp_path / "b")
    doc["shards"][0] = {**doc["shards"][2]}
    with pytest.raises(ManifestError, match=r"shards: expected exactly one shard with role merge \(it has 2\)"):
        check_manifest(doc, source="m.json")
    doc = _bundle(tmp_path / "c")
    doc["shards"][1]["index"] = 0
    with pytest.raises(ManifestError, match=r"one student shard for each index 0..1 \(it has \[0, 0\]\)"):
        check_manifest(doc, source="m.json")


def test_a_shard_that_is_a_symlink_out_of_the_bundle_or_a_directory_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret.ts"
    outside.write_bytes(b"not yours")
    doc = _bundle(tmp_path / "b")
    (tmp_path / "b" / "student_0.ts").unlink()
    (tmp_path / "b" / "student_0.ts").symlink_to(outside)
    doc["shards"][0]["sha256"] = _sha(b"not yours")       # even with a matching hash
    with pytest.raises(ManifestError, match=r"shards\[0\].file: .* \(it leads out of the bundle, to .*secret.ts\)"):
        load_manifest(_write(tmp_path / "b", doc))
    doc = _bundle(tmp_path / "c")
    (tmp_path / "c" / "student_1.ts").unlink()
    (tmp_path / "c" / "student_1.ts").mkdir()
    with pytest.raises(ManifestError, match=r"shards\[1\].file: .* \(not a regular file\)"):
        load_manifest(_write(tmp_path / "c", doc))


def _tree(root: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in root.rglob("*")} if root.exists() else {}


@pytest.mark.parametrize("attack", ["dotdot", "absolute", "symlink"])
def test_run_with_a_crafted_bundle_exits_2_and_touches_nothing_outside(tmp_path: Path, model_cache: Path,
                                                                       attack: str) -> None:
    from conftest import DEMO_INVENTORY, digits_experiment
    bundle = tmp_path / "bundle"
    doc = _bundle(bundle)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "notes.txt").write_text("a user's file")
    if attack == "dotdot":
        doc["shards"][0]["file"] = "../victim/notes.txt"
    elif attack == "absolute":
        doc["shards"][0]["file"] = str(victim / "notes.txt")
    else:
        (bundle / "student_0.ts").unlink()
        (bundle / "student_0.ts").symlink_to(victim / "notes.txt")
    _write(bundle, doc)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=4, output=tmp_path / "runs")
    before = _tree(victim)
    os.utime(victim / "notes.txt", (1, 1))
    before = _tree(victim)
    proc = run_cli("run", str(exp), "--inventory", str(DEMO_INVENTORY), "--bundle", str(bundle), "--headless",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("testbed: error:")]
    assert len(lines) == 1 and "manifest.json: shards[0].file: expected a plain file name" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _tree(victim) == before and (victim / "notes.txt").read_text() == "a user's file"
