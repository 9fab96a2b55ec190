"""One exit code for bad input (2) and one line, across verbs; a fault due after the run never fires."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DEMO_INVENTORY, digits_experiment, last_json, read_jsonl, run_cli


def _one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("testbed: error:")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(("args", "phrase"), [
    (["monitor", "--replay", "nowhere"], "--replay nowhere: no such events file"),
    (["monitor", "--replay", str(DEMO_INVENTORY)], "not a run's event log (no run_start event)"),
    (["profile", "nosuchnet"], "MODEL: unknown model 'nosuchnet'; expected one of alexnet"),
    (["profile", "alexnet", "--input", "3xbanana"], "--input:"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, model_cache: Path, args: list[str], phrase: str) -> None:
    assert phrase in _one_line(run_cli(*args, cache=model_cache, cwd=tmp_path))


def test_garbage_bytes_as_a_run_log_are_refused(tmp_path: Path, model_cache: Path) -> None:
    (tmp_path / "events.jsonl").write_bytes(bytes(range(256)) * 20)
    assert "not a run's event log" in _one_line(run_cli("monitor", "--replay", str(tmp_path), cache=model_cache,
                                                        cwd=tmp_path))


@pytest.mark.slow
def test_a_kill_due_after_the_last_sample_never_fires(tmp_path: Path, model_cache: Path) -> None:
    exp = digits_experiment(tmp_path / "e.yaml", samples=10, rate_hz=20,
                            faults="faults:\n  - {kind: kill, board: wrist, at_s: 10}\n"
                                   "  - {kind: outage, link: chest-edge, at_s: 0.2, duration_s: 30}\n",
                            output=tmp_path / "runs")
    proc = run_cli("run", str(exp), "--inventory", str(DEMO_INVENTORY), "--headless", "--json",
                   cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    events = read_jsonl(Path(s["run_dir"]) / "events.jsonl")
    skipped = [e for e in events if e["type"] == "fault_skipped"]
    assert [(e["kind"], e["board"], e["at_s"]) for e in skipped] == [("kill", "wrist", 10.0)]
    assert "after the last sample's trigger at 0.45 s" in skipped[0]["reason"]
    fired = [e for e in events if e["type"] == "fault"]
    assert all(e["kind"] == "outage" for e in fired)     # the kill is in no fault record
    assert [e["phase"] for e in fired] == ["start", "end"]  # the outage began in the run; its end is logged
    assert s["samples"] == 10 and s["completed"] + s["timed_out"] == 10
    wrist = next(b for b in s["boards"] if b["name"] == "wrist")
    assert wrist["samples"] == 10 and wrist["status"] == "stopped"   # never killed
