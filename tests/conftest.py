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


def two_wearable_inventory(*, bench: str, profile: str = "hbc-1312k") -> str:
    """A simulated bench of two wearables (a, b) and an edge over MQTT with an embedded broker;
    ``profile`` is a-edge's link profile (b-edge keeps hbc-1312k)."""
    return f"""\
bench: {bench}
broker: {{mode: embedded}}
boards:
  a: {{role: wearable, kind: sim, connect: local, runtime: torch}}
  b: {{role: wearable, kind: sim, connect: local, runtime: torch}}
  edge: {{role: edge, kind: sim, connect: local, runtime: torch}}
links:
  - {{name: a-edge, from: a, to: edge, transport: {{type: mqtt}}, profile: {profile}}}
  - {{name: b-edge, from: b, to: edge, transport: {{type: mqtt}}, profile: hbc-1312k}}
"""


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
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "HBC_TESTBED_CACHE": str(cache), "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "testbed", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]


# ---------------------------------------------------------------------------- ssh boards
# Real OpenSSH boards (tests/sshboards.py): one sshd per board, each in its own network
# namespace on a veth; root only, skipped with the reason elsewhere.


@pytest.fixture(scope="session")
def ssh_session_keys(tmp_path_factory: pytest.TempPathFactory):
    """The test session's one ed25519 client keypair (a `sshboards.ClientKey`: `.private`,
    `.public`); skips the test, with the reason, where ssh boards cannot run."""
    from sshboards import make_client_key, sshboards_unavailable
    why = sshboards_unavailable()
    if why:
        pytest.skip(why)
    return make_client_key(tmp_path_factory.mktemp("ssh-client"))


def _ssh_bench_factory(folder: Path, key, stack):
    from sshboards import SshBench
    made: list[SshBench] = []

    def make(count: int | None = None, names=None, *, mtu: int | None = None) -> SshBench:
        """`make(3)` or `make(names=["wrist", "edge"])`: an entered `SshBench`, exited at teardown."""
        bench = SshBench(root=folder / f"sshbench{len(made)}", count=count, names=names, client_key=key, mtu=mtu)
        made.append(stack.enter_context(bench))
        return bench
    return make


@pytest.fixture
def ssh_bench(tmp_path: Path, ssh_session_keys):
    """A factory of ssh benches for one test: ``bench = ssh_bench(2)`` or
    ``ssh_bench(names=["wrist", "edge"])``; every bench made is torn down after the test."""
    from contextlib import ExitStack
    with ExitStack() as stack:
        yield _ssh_bench_factory(tmp_path, ssh_session_keys, stack)


@pytest.fixture(scope="module")
def ssh_bench_module(tmp_path_factory: pytest.TempPathFactory, ssh_session_keys):
    """As `ssh_bench`, but the benches live until the module's last test has run (for tests
    that share boards and leave them as they found them)."""
    from contextlib import ExitStack
    with ExitStack() as stack:
        yield _ssh_bench_factory(tmp_path_factory.mktemp("sshbench-module"), ssh_session_keys, stack)


@pytest.fixture(scope="session")
def index(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The package index pip is configured with answers (skip otherwise: the laptop needs it to
    build a board's wheelhouse)."""
    d = tmp_path_factory.mktemp("probe-index")
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                           "--disable-pip-version-check", "-d", str(d), "pyserial==3.5"],
                          capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        pytest.skip(f"no package index reachable: {done.stderr.strip().splitlines()[-1:]}")


def sigint_default() -> None:
    """Popen preexec_fn: Ctrl-C as a terminal delivers it. A runner started in the background by a
    non-interactive shell ignores SIGINT, children inherit that, and Python then keeps it ignored."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
