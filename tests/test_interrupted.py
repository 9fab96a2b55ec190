"""Interrupted is a state: a run stopped by Ctrl-C says so everywhere, and its accounting adds up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEMO_INVENTORY, ROOT, digits_experiment, last_json, run_cli, sigint_default
from testbed.runstate import RunState


def _run_state(events: list[dict]) -> RunState:
    return RunState().apply_all([{"t": i * 0.1, **e} for i, e in enumerate(events)])


def test_denominators_when_samples_end_unresolved() -> None:
    start = {"type": "run_start", "run": "r", "samples": 10, "rate_hz": 10, "boards": [], "links": []}
    results = [{"type": "result", "sample": i, "status": s, "correct": c, "latency_ms": 5.0}
               for i, (s, c) in enumerate([("complete", True), ("partial", False), ("timed_out", False)])]
    triggers = [{"type": "trigger", "sample": i} for i in range(5)]          # 5 of 10 asked, 3 answered
    st = _run_state([start, {"type": "sampling_start"}, *triggers, *results,
                     {"type": "interrupted", "reason": "Ctrl-C (SIGINT)"}, {"type": "run_end"}])
    s = st.summary()
    assert s["state"] == "interrupted" and s["stopped"]["reason"] == "Ctrl-C (SIGINT)"
    assert (s["samples"], s["triggered"], s["not_triggered"]) == (10, 5, 5)
    assert s["completed"] + s["timed_out"] + s["unresolved"] == s["triggered"] == 5
    assert s["accuracy"] == 0.2                      # 1 correct of the 5 triggered; unresolved count as wrong
    assert s["accuracy_all_parts"] == 1.0 and s["accuracy_partial"] == 0.0
    finished = _run_state([start, {"type": "sampling_start"}, *[{"type": "trigger", "sample": i} for i in range(10)],
                           *[{"type": "result", "sample": i, "status": "complete", "correct": i < 7,
                              "latency_ms": 1.0} for i in range(10)], {"type": "run_end"}]).summary()
    assert finished["state"] == "finished" and finished["stopped"] is None
    assert (finished["triggered"], finished["unresolved"], finished["accuracy"]) == (10, 0, 0.7)


@pytest.mark.slow
def test_ctrl_c_mid_run_is_recorded_as_interrupted(tmp_path: Path, model_cache: Path) -> None:
    exp = digits_experiment(tmp_path / "e.yaml", samples=400, rate_hz=20, output=tmp_path / "runs")
    env = {**os.environ, "HBC_TESTBED_CACHE": str(model_cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(DEMO_INVENTORY),
                             "--headless", "--json"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    try:
        while not any('"type":"result"' in p.read_text() for p in (tmp_path / "runs").glob("*/events.jsonl")):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)   # polling a file another process writes: no event to wait on
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-2000:]
    s = last_json(out)                                   # --json still prints its line
    assert s["state"] == "interrupted" and s["stopped"]["reason"] == "Ctrl-C (SIGINT)"
    assert 0 < s["triggered"] < 400 and s["not_triggered"] == 400 - s["triggered"]
    assert s["completed"] + s["timed_out"] + s["unresolved"] == s["triggered"]
    run_dir = Path(s["run_dir"])
    assert str(run_dir) in err                           # the run directory is named
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["state"] == "interrupted" and on_disk["triggered"] == s["triggered"]
    replay = run_cli("monitor", "--replay", str(run_dir), "--json", cache=model_cache, cwd=tmp_path)
    assert replay.returncode == 0 and "interrupted" in replay.stdout
    assert last_json(replay.stdout)["state"] == "interrupted"
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(run_dir) not in ps, "no agent of the run is left"


@pytest.mark.parametrize(("key", "value", "phrase"), [
    ("samples", 0, "expected an integer from 1 to 100000"),
    ("samples", 10**9, "expected an integer from 1 to 100000"),
    ("rate_hz", 0, "expected a number > 0 and <= 1000"),
    ("rate_hz", 1e6, "expected a number > 0 and <= 1000"),
    ("rate_hz", "fast", "expected a number > 0 and <= 1000"),
    ("deadline_ms", -1, "expected a number > 0 and <= 60000"),
    ("deadline_ms", 1e9, "expected a number > 0 and <= 60000"),
    ("timeout_ms", 0, "expected a number > 0 and <= 600000"),
    ("timeout_ms", 1e12, "expected a number > 0 and <= 600000"),
    ("timeout_ms", 100, "expected a number > deadline_ms (250)"),
])
def test_every_numeric_run_key_is_bounded(tmp_path: Path, key: str, value, phrase: str) -> None:
    from testbed.config import load_experiment
    from testbed.errors import ConfigError
    path = digits_experiment(tmp_path / "e.yaml")
    text = path.read_text()
    import re
    new = re.sub(rf"{key}: [^,}}\n]+", f"{key}: {value!r}".replace("'", ""), text, count=1)
    assert new != text, text
    path.write_text(new)
    with pytest.raises(ConfigError) as err:
        load_experiment(path)
    assert err.value.key == f"run.{key}" and phrase in err.value.detail and err.value.line is not None, str(err.value)
