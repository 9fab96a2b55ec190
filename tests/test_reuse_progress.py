"""Issue 14: the same thread setting trains the same weights on any core count; long work talks on
stderr while stdout keeps only the JSON line; `testbed run` deploys the bundle `testbed partition`
wrote (one cache, one key) and says so when it cannot; third-party output goes to a log.

Tiny WRN teacher and students on scikit-learn's digits (seconds each), the CLI as a subprocess.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, last_json, run_cli
from test_partition_cli import INVENTORY, experiment
from testbed.bundle import load_manifest


def _weights(cache: Path) -> dict[str, str]:
    """sha256 of every cached weights file, by its kind (teacher / students)."""
    out = {}
    for f in sorted(cache.glob("*/weights.pt")):
        kind = f.parent.name.split("-", 1)[0]
        out[kind] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def _partition(path: Path, *, cwd: Path, cache: Path, env: dict[str, str], cpus: set[int] | None,
               threads: str = "1") -> subprocess.Popen[str]:
    """`testbed partition --json` in a child with its own environment and CPU affinity."""
    pypath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    full = {**os.environ, **env, "HBC_TESTBED_CACHE": str(cache), "PYTHONPATH": pypath}

    def pin() -> None:
        if cpus and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)

    return subprocess.Popen([sys.executable, "-m", "testbed", "partition", str(path), "--json", "--threads", threads,
                             "--out", str(cwd / "b")], cwd=cwd, env=full, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=pin)


def test_one_thread_setting_trains_identical_weights_whatever_the_cores(tmp_path: Path) -> None:
    """Two fresh caches, two processes: OMP_NUM_THREADS 1 on one CPU and OMP_NUM_THREADS 2 on
    every CPU, both with the default setting (1 thread): the same weights bit for bit, the same
    evaluation and the same bundle key. Asking for 2 threads is another key."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    runs = {}
    for name, env, pinned in (("a", {"OMP_NUM_THREADS": "1"}, set(cpus[:1])),
                              ("b", {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}, set(cpus))):
        (tmp_path / name).mkdir()
        path = experiment(tmp_path / name / "e.yaml")
        runs[name] = _partition(path, cwd=tmp_path / name, cache=tmp_path / name / "cache", env=env, cpus=pinned)
    docs = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        docs[name] = last_json(out)
    a, b = docs["a"], docs["b"]
    assert a["numerics"]["threads"] == b["numerics"]["threads"] == 1
    assert a["bundle_key"] == b["bundle_key"]
    assert a["evaluation"]["resilience"] == b["evaluation"]["resilience"]
    wa, wb = _weights(tmp_path / "a" / "cache"), _weights(tmp_path / "b" / "cache")
    assert set(wa) == {"teacher", "students"} and wa == wb
    record = json.loads(next((tmp_path / "a" / "cache").glob("teacher-*/record.json")).read_text())
    assert record["numerics"]["threads"] == 1 and record["identity"]["data"]["name"] == "digits"
    assert load_manifest(tmp_path / "a" / "b")["numerics"]["threads"] == 1

    (tmp_path / "c").mkdir()
    proc = _partition(tmp_path / "a" / "e.yaml", cwd=tmp_path / "c", cache=tmp_path / "a" / "cache", env={},
                      cpus=None, threads="2")
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    two = last_json(out)
    assert two["numerics"]["threads"] == 2 and two["bundle_key"] != a["bundle_key"]
    assert "teacher" in err        # trained anew, under its own key, not loaded from the 1-thread entry
    assert len(list((tmp_path / "a" / "cache").glob("teacher-*/weights.pt"))) == 2


def test_partition_talks_on_stderr_and_prints_only_its_json_line_on_stdout(tmp_path: Path) -> None:
    path = experiment(tmp_path / "e.yaml")
    proc = run_cli("partition", str(path), "--json", cache=tmp_path / "cache", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 1 and json.loads(proc.stdout)["bundle"].endswith("tiny-part")
    err = proc.stderr
    for phase in ("teacher: ", "teacher done: ", "students:resilient done: ", "evaluate:resilient done",
                  "export:resilient done"):
        assert phase in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("[")]
    assert all(" s] " in ln for ln in lines) and len(lines) < 60   # plain lines, not one per step
    assert "\x1b[" not in err                                      # no bar when stderr is not a terminal


@pytest.mark.slow
def test_run_uses_the_bundle_partition_wrote_and_says_when_it_cannot(tmp_path: Path, model_cache: Path) -> None:
    (tmp_path / "inventory.yaml").write_text(INVENTORY)
    path = experiment(tmp_path / "e.yaml")
    proc = run_cli("partition", str(path), "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = load_manifest(tmp_path / "bundles" / "tiny-part")

    proc = run_cli("run", str(path), "--headless", "--json", "--samples", "5", "--output", str(tmp_path / "runs"),
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.splitlines()) == 1
    s = json.loads(proc.stdout)
    assert s["complete"] == 5 and s["model"]["threads"] == 1
    assert f"bundle: bundles/tiny-part, as testbed partition wrote it (key {written['bundle_key']})" in proc.stderr
    run_dir = Path(s["run_dir"])
    run_json = json.loads((run_dir / "run.json").read_text())
    assert run_json["bundle"]["dir"] == "bundles/tiny-part"
    assert run_json["bundle"]["config_key"] == written["bundle_key"]
    assert run_json["training"]["numerics"]["threads"] == 1
    assert "as testbed partition wrote it" in (run_dir / "testbed.log").read_text()

    # another effective configuration: the written bundle is not used, and the run says so in one line
    # (its own empty cache: another test of the session may have trained this configuration with 2 threads)
    fresh = tmp_path / "cache-2-threads"
    proc = run_cli("run", str(path), "--headless", "--json", "--samples", "5", "--threads", "2",
                   "--output", str(tmp_path / "runs"), cache=fresh, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads(proc.stdout)
    said = [ln for ln in proc.stderr.splitlines() if "bundles/tiny-part" in ln]
    assert len(said) == 1 and "built from another configuration (numerics.threads: 1 -> 2), not used" in said[0]
    run_json = json.loads((Path(s["run_dir"]) / "run.json").read_text())
    assert run_json["bundle"]["dir"].startswith(str(fresh / "partition-"))
    assert run_json["bundle"]["config_key"] != written["bundle_key"]
    assert "teacher done" in proc.stderr        # a run on an empty cache (for 2 threads) talks while it trains


NOISY = """
import logging, os, sys, warnings
from pathlib import Path
from testbed.cli import _Progress
from testbed.partition.build import third_party_output
with _Progress() as progress:
    with third_party_output(Path(sys.argv[1])):
        os.write(2, b"I0000 flatbuffer_export.cc:4410] Estimated count of arithmetic ops\\n")  # C++ on fd 2
        os.write(1, b"litert progress tree\\n")
        print("a library's print")
        logging.getLogger("torchao").warning("Failed to load torchao/_C_mxfp8.so")
        warnings.warn("a deprecation", UserWarning, stacklevel=1)
        progress("export", 0, 1)
    os.write(2, b"after\\n")
"""


def test_third_party_output_goes_to_the_log_and_progress_still_reaches_stderr(tmp_path: Path) -> None:
    """What C++ writes to fd 2, what a library prints, logs or warns while a bundle is built goes
    to the log; the CLI's progress still reaches stderr; both descriptors come back after."""
    log = tmp_path / "build.log"
    proc = subprocess.run([sys.executable, "-c", NOISY, str(log)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = log.read_text()
    for noise in ("flatbuffer_export.cc", "litert progress tree", "a library's print", "Failed to load torchao",
                  "a deprecation"):
        assert noise in text and noise not in proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.splitlines() == [proc.stderr.splitlines()[0], "after"]
    assert "] export" in proc.stderr.splitlines()[0]
