"""`testbed partition` output folders: nothing deleted that testbed did not write (issue 13).

The rule lives in testbed/outdir.py: a new or empty folder is written; a folder holding an earlier
output of ours is refused unless --force, which replaces only the files the marker lists and keeps
anything else; a folder holding anything we did not write is refused. Content is built in a
temporary folder beside the destination and moved in when complete. Tiny digits partitions (the
session model cache) through the CLI, and the rule itself through testbed.outdir.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import last_json, run_cli
from test_partition_cli import experiment
from testbed.bundle import BundleError, load_manifest
from testbed.errors import ConfigError
from testbed.outdir import MARKER, output_dir


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder``: its bytes and mtime (ns)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or p.name.startswith(f"{MARKER}."))


def _one_line_refusal(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- through the CLI -------------------------------------------------------------------------------

def test_a_folder_with_a_users_file_is_refused_and_left_alone(tmp_path: Path, model_cache: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("my notes on this bench\n")
    os.utime(out / "notes.txt", ns=(1_000_000_000, 1_000_000_000))
    before = _snapshot(out)
    for extra in ((), ("--force",), ("--compare",), ("--compare", "--force")):
        proc = run_cli("partition", str(path), "--out", str(out), "--threads", "1", *extra,
                       cache=model_cache, cwd=tmp_path)
        line = _one_line_refusal(proc)
        assert str(out) in line and "notes.txt" in line and "did not write" in line
        assert _snapshot(out) == before and sorted(os.listdir(out)) == ["notes.txt"]
        assert _leftovers(tmp_path) == []


def test_our_own_folder_needs_force_and_force_keeps_a_users_file(tmp_path: Path, model_cache: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    out = tmp_path / "b"
    proc = run_cli("partition", str(path), "--out", str(out), "--threads", "1", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = _snapshot(out)
    marker = json.loads((out / MARKER).read_text())
    assert marker["writer"] == "testbed partition" and marker["state"] == "complete"
    assert sorted(marker["files"]) == sorted(set(first) - {MARKER}) and "manifest.json" in marker["files"]

    proc = run_cli("partition", str(path), "--out", str(out), "--threads", "1", cache=model_cache, cwd=tmp_path)
    line = _one_line_refusal(proc)
    assert str(out) in line and "--force" in line and "earlier testbed partition" in line
    assert _snapshot(out) == first

    (out / "mine.txt").write_text("kept\n")
    mine = _snapshot(out)["mine.txt"]
    proc = run_cli("partition", str(path), "--out", str(out), "--threads", "1", "--force", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert last_json(proc.stdout)["bundle"] == str(out)
    assert "kept mine.txt" in proc.stderr and "replaced" in proc.stderr
    assert _snapshot(out)["mine.txt"] == mine
    assert load_manifest(out)["method"] == "resilient"
    assert "mine.txt" not in json.loads((out / MARKER).read_text())["files"]
    assert _leftovers(tmp_path) == []

    (out / "manifest.json").write_text((out / "manifest.json").read_text() + " ")   # the user edited ours
    edited = _snapshot(out)
    proc = run_cli("partition", str(path), "--out", str(out), "--threads", "1", "--force",
                   cache=model_cache, cwd=tmp_path)
    line = _one_line_refusal(proc)
    assert "manifest.json was changed" in line and _snapshot(out) == edited


def test_partition_after_compare_keeps_the_comparison_and_both_bundles(tmp_path: Path, model_cache: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    proc = run_cli("partition", str(path), "--compare", "--threads", "1", "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cmp_dir = tmp_path / "bundles" / "tiny-part-compare"
    doc = last_json(proc.stdout)
    assert doc["out"] == str(cmp_dir) and doc["bundles"] == {m: str(cmp_dir / m) for m in ("nonn", "resilient")}
    compared = _snapshot(cmp_dir)
    assert {"comparison.json", "comparison.md", "comparison.png", "nonn/manifest.json",
            "resilient/manifest.json"} <= set(compared)

    proc = run_cli("partition", str(path), "--threads", "1", "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = tmp_path / "bundles" / "tiny-part"
    assert last_json(proc.stdout)["bundle"] == str(single)
    assert load_manifest(single)["method"] == "resilient"
    assert _snapshot(cmp_dir) == compared
    assert load_manifest(cmp_dir / "nonn")["merge_rule"] == "concat"
    assert load_manifest(cmp_dir / "resilient")["merge_rule"] == "average"

    # a single run pointed at the comparison folder is refused without --force
    proc = run_cli("partition", str(path), "--out", str(cmp_dir), "--threads", "1", cache=model_cache, cwd=tmp_path)
    assert "earlier testbed partition --compare" in _one_line_refusal(proc)
    assert _snapshot(cmp_dir) == compared
    assert _leftovers(tmp_path / "bundles") == []


# -- through the Python API --------------------------------------------------------------------------

def test_an_interrupted_build_leaves_the_previous_bundle_and_no_temporary_folder(
        tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from testbed.config import load_experiment
    from testbed.partition import build

    exp = load_experiment(experiment(tmp_path / "e.yaml"))
    out = tmp_path / "b"
    built = build.build_bundle(exp, out_dir=out, cache_dir=model_cache)
    assert built.bundle_dir == out and built.notes == ()
    before = _snapshot(out)

    real = build.run_partition
    written: list[str] = []

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)                     # shards and a manifest are written by now
        written.extend(p.name for p in Path(kwargs["out_dir"]).iterdir())
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "run_partition", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build.build_bundle(exp, out_dir=out, cache_dir=model_cache, force=True)
    assert "manifest.json" in written and "student_0.ts" in written
    assert _snapshot(out) == before
    load_manifest(out)
    assert _leftovers(tmp_path) == []


def test_the_model_caches_bundle_folder_is_rebuilt_in_place(tmp_path: Path, model_cache: Path) -> None:
    """The cache's partition-<key>/bundle is ours: a broken one (even from before markers) is rebuilt there."""
    from testbed.config import load_experiment
    from testbed.partition import build

    exp = load_experiment(experiment(tmp_path / "e.yaml"))
    first = build.cached_bundle(exp, cache_dir=model_cache)
    folder = first.bundle_dir
    assert folder == model_cache / f"partition-{build.bundle_key(exp)}" / "bundle"
    (folder / MARKER).unlink()                                 # as a cache written before markers
    (folder / "student_1.ts").write_bytes(b"broken")
    with pytest.raises(BundleError):
        load_manifest(folder)
    again = build.cached_bundle(exp, cache_dir=model_cache)
    assert again.bundle_dir == folder and again.manifest["bundle_key"] == first.manifest["bundle_key"]
    load_manifest(folder)
    assert (folder / MARKER).is_file() and _leftovers(folder.parent) == []


# -- the rule itself (testbed.outdir) ---------------------------------------------------------------

def _write(out, files: dict[str, str]) -> None:
    for name, text in files.items():
        (out.staging / name).parent.mkdir(parents=True, exist_ok=True)
        (out.staging / name).write_text(text)


def test_an_interrupted_move_never_leaves_a_folder_that_loads_and_force_recovers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "out"
    with output_dir(dest) as out:
        _write(out, {"a.ts": "old a", "b.ts": "old b", "manifest.json": "old"})
    moved = []
    real = os.replace

    def failing(src, dst):
        if len(moved) == 2 and ".partial-" in str(src):   # the marker, then one file
            raise KeyboardInterrupt
        moved.append(str(dst))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(KeyboardInterrupt):
        with output_dir(dest, force=True) as out:
            _write(out, {"a.ts": "new a", "c.ts": "new c", "manifest.json": "new"})
    monkeypatch.setattr(os, "replace", real)
    assert not (dest / "manifest.json").exists()               # half-moved: never looks complete
    assert sorted(os.listdir(dest)) == [MARKER, "a.ts"] and (dest / "a.ts").read_text() == "new a"
    assert _leftovers(tmp_path) == []
    with output_dir(dest, force=True) as out:                 # everything there is still listed as ours
        _write(out, {"a.ts": "new a", "c.ts": "new c", "manifest.json": "new"})
    assert sorted(os.listdir(dest)) == [MARKER, "a.ts", "c.ts", "manifest.json"]
    assert out.kept == []


def test_a_crafted_marker_cannot_reach_outside_the_folder(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dest = tmp_path / "out"
    with output_dir(dest) as out:
        _write(out, {"manifest.json": "{}"})
    doc = json.loads((dest / MARKER).read_text())
    doc["files"]["../victim.txt"] = {"size": 8, "sha256": "0" * 64}
    doc["files"][str(victim)] = {"size": 8, "sha256": "0" * 64}
    (dest / MARKER).write_text(json.dumps(doc))
    with output_dir(dest, force=True) as out:
        _write(out, {"manifest.json": "{1}"})
    assert victim.read_text() == "precious"
    (dest / MARKER).write_text("not json")
    with pytest.raises(ConfigError) as info:
        with output_dir(dest, force=True):
            pass
    assert str(dest) in str(info.value) and "\n" not in str(info.value)


def test_a_killed_writers_temporary_folder_is_removed_by_the_next_write(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".out.partial-{pid}-abc"
    stale.mkdir()
    (stale / MARKER).write_text(json.dumps({"state": "partial", "pid": pid}))
    (stale / "student_0.ts").write_text("half")
    not_ours = tmp_path / f".out.partial-{pid}-xyz"              # no marker of ours: kept
    not_ours.mkdir()
    with output_dir(tmp_path / "out") as out:
        _write(out, {"manifest.json": "{}"})
    assert not stale.exists() and not_ours.is_dir()
