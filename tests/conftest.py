"""Shared fixtures: a session model cache, experiment files for fast runs, the CLI as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_INVENTORY = ROOT / "testbed" / "demo" / "inventory.yaml"


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache per test session, so the tiny digits model is trained once."""
    return tmp_path_factory.mktemp("model-cache")


def digits_experiment(path: Path, *, samples: int = 30, rate_hz: float = 20.0, faults: str = "",
                      deadline_ms: float = 250, timeout_ms: float = 1500, output: Path | None = None) -> Path:
    """An experiment on the demo bench with scikit-learn's digits (trains in seconds)."""
    path.write_text(f"""\
name: t
seed: 0
dataset: {{name: digits}}
model: {{family: cnn-students, students: 3, width: 8, out_dim: 8}}
train: {{epochs: 15, batch_size: 64, lr: 0.01}}
assignment: {{wrist: 0, chest: 1, ankle: 2, edge: merge}}
run:
  samples: {samples}
  rate_hz: {rate_hz}
  deadline_ms: {deadline_ms}
  timeout_ms: {timeout_ms}
  output: {output or path.parent / 'runs'}
{faults}
""")
    return path


def run_cli(*args: str, cache: Path, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HBC_TESTBED_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
