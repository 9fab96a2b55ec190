"""A whole run survives a hung agent: alive, but no longer answering (#13).

The demo bench (wrist over serial, chest over BLE, ankle over MQTT, the edge) runs from the CLI.
Once results come in, the test SIGSTOPs one board's agent process and leaves it stopped: it
holds its sockets, its pty and its BLE connection, but reads, sends and answers nothing, not even
the broker's keepalive. The run must not wait on it:

- a hung wearable: the edge merges without its part, so every later sample is partial (that
  board missing) or timed out, never lost; accuracy is still computed; the broker drops the
  silent client after its keepalive and publishes its last will, so the board is reported
  ``offline`` (each wearable in turn: its link is serial over a pty, BLE through bumble's
  controllers or MQTT, and each leaves the edge's end of it differently);
- a hung edge: no result comes, every later sample times out on the orchestrator's clock and
  the run still ends by itself.

Either way every triggered sample is accounted for, the run ends ``finished``, and the run's
teardown kills the stopped agent (SIGKILL reaches a stopped process; SIGTERM waits for a
SIGCONT that never comes) and says so in its events: no process the run started is left
behind, stopped or not.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from runwatch import (alive, cmdline, descendants, proc_stat, processes, run_events, sampling_run_dir,
                      start_run, stop_run, wait_until)
from conftest import digits_experiment, last_json, read_jsonl

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                 reason="needs /proc to find the run's agent processes")]

# 8 s at 20 Hz. The agent stops before sample N - 20 (``_hang`` checks), so from the stop to the
# end of the run's wait for its agents to stop (testbed.orchestrator: _stop_agents, 15 s) is longer
# than the broker's keepalive (1.5 x nodes.mqtt's 10 s): the last will "offline" comes within the run.
N = 160


def _agent_pid(run: int, run_dir: Path, board: str) -> int:
    """The pid of ``board``'s agent: a child of the run whose command line is
    ``... -m nodes.agent --config <run_dir>/boards/<board>/agent.json``."""
    config = str((run_dir / "boards" / board / "agent.json").resolve())
    found = [pid for pid, (_, ppid, _) in processes().items()
             if ppid == run and "nodes.agent" in (cmd := cmdline(pid)) and config in cmd]
    assert len(found) == 1, f"expected one agent of {board} under the run, found {found}"
    return found[0]


def _start_run(tmp_path: Path, model_cache: Path) -> subprocess.Popen[str]:
    exp = digits_experiment(tmp_path / "exp.yaml", samples=N, rate_hz=20.0, output=tmp_path / "runs")
    return start_run(exp, cwd=tmp_path, model_cache=model_cache)


def _hang(proc: subprocess.Popen[str], tmp_path: Path, board: str) -> tuple[Path, int, int, set[tuple[int, int]]]:
    """Once 10 results are complete, SIGSTOP ``board``'s agent. Returns the run directory, the
    agent's pid, the last sample triggered before the stop took hold, and the run's process tree
    as it was then."""
    run_dir = sampling_run_dir(tmp_path / "runs", proc=proc)

    def completed() -> int:
        return sum(1 for e in run_events(run_dir) if e["type"] == "result" and e["status"] == "complete")
    wait_until(lambda: completed() >= 10, "results before the stop", proc=proc)
    pid = _agent_pid(proc.pid, run_dir, board)
    started = descendants(proc.pid)   # the agents, socat, bumble's controllers, mosquitto
    os.kill(pid, signal.SIGSTOP)
    wait_until(lambda: (proc_stat(pid) or ("?",))[0] == "T", f"{board}'s agent to stop", proc=proc)
    before = max((e["sample"] for e in run_events(run_dir) if e["type"] == "trigger"), default=-1)
    assert before < N - 20, "the run had nearly ended before the agent stopped; raise N"
    return run_dir, pid, before, started


def _finish(proc: subprocess.Popen[str], run_dir: Path, pid: int, started: set[tuple[int, int]], *,
            board: str) -> tuple[dict, list[dict]]:
    """The run's exit, its --json line and events; fails if it leaves any process it started behind
    or if its events do not say that ``board``'s agent was killed."""
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    s = last_json(out)
    left = [(p, cmdline(p), (proc_stat(p) or ("?",))[0]) for p, start in started if alive(p, start)]
    assert not left, f"processes of the run still alive after it ended: {left}"
    assert proc_stat(pid) is None, "the stopped agent outlived the run"
    leftovers = [p for p in processes() if str(run_dir) in cmdline(p)]
    assert not leftovers, [cmdline(p) for p in leftovers]
    events = read_jsonl(run_dir / "events.jsonl")
    killed = [e for e in events if e["type"] == "error" and e.get("board") == board]
    assert any(("did not stop" in e["error"] or "is offline" in e["error"]) and "killed" in e["error"]
               for e in killed), killed
    return s, events


def _accounting(s: dict, events: list[dict]) -> dict[int, dict]:
    assert s["samples"] == s["triggered"] == N and s["not_triggered"] == 0
    assert s["completed"] + s["timed_out"] + s["unresolved"] == s["triggered"]
    results = {e["sample"]: e for e in events if e["type"] == "result"}
    assert len([e for e in events if e["type"] == "result"]) == len(results), "one result per sample"
    assert sorted(results) == list(range(N)), "every triggered sample resolved"
    assert s["unresolved"] == 0
    summary = json.loads((Path(s["run_dir"]) / "summary.json").read_text())
    assert {k: summary[k] for k in ("state", "completed", "timed_out", "unresolved")} == \
        {k: s[k] for k in ("state", "completed", "timed_out", "unresolved")}
    return results


def _cleanup(proc: subprocess.Popen[str], pid: int | None) -> None:
    """After a failed check: let the stopped agent run again, Ctrl-C the run so it stops what it
    started, and SIGKILL the agent if it is somehow still there."""
    if pid is not None and proc_stat(pid) is not None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    stop_run(proc)
    if pid is not None and proc_stat(pid) is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("board", ["wrist", "chest", "ankle"])
def test_a_hung_wearable_makes_later_samples_partial_and_is_killed_at_teardown(
        tmp_path: Path, model_cache: Path, board: str) -> None:
    proc = _start_run(tmp_path, model_cache)
    pid: int | None = None
    try:
        run_dir, pid, before, started = _hang(proc, tmp_path, board)
        s, events = _finish(proc, run_dir, pid, started, board=board)
        assert s["state"] == "finished" and s["stopped"] is None, s.get("stopped")
        results = _accounting(s, events)
        after = [results[sid] for sid in range(before + 1, N)]
        kinds = [(r["status"], tuple(r["missing"])) for r in after]
        assert not any(st == "complete" for st, _ in kinds), f"a sample completed with {board} stopped: {kinds}"
        partial = [r for r in after if r["status"] == "partial"]
        assert partial, f"no sample after the stop was merged without {board}: {kinds}"
        assert all(r["missing"] == [board] for r in partial), kinds
        assert all(board not in r["arrived"] for r in partial)
        assert s["accuracy"] is not None and s["accuracy_partial"] is not None
        assert s["partial"] >= len(partial)
        # the broker dropped the silent client after its keepalive and published its last will
        boards = {b["name"]: b for b in s["boards"]}
        assert boards[board]["status"] == "offline", boards[board]
        assert boards[board]["samples"] <= before + 1
        assert all(b["status"] == "stopped" for name, b in boards.items() if name != board), boards
        assert any(e["type"] == "status" and e.get("board") == board and e.get("state") == "offline"
                   for e in events)
        assert not any(e["type"] in ("aborted", "interrupted") for e in events)
    finally:
        _cleanup(proc, pid)


def test_a_hung_edge_times_samples_out_and_the_run_still_ends(tmp_path: Path, model_cache: Path) -> None:
    proc = _start_run(tmp_path, model_cache)
    pid: int | None = None
    try:
        run_dir, pid, before, started = _hang(proc, tmp_path, "edge")
        s, events = _finish(proc, run_dir, pid, started, board="edge")
        # the run's own timeout logic ends it: nothing waits on the edge, nothing aborts
        assert s["state"] == "finished" and s["stopped"] is None, s.get("stopped")
        assert not any(e["type"] in ("aborted", "interrupted") for e in events)
        results = _accounting(s, events)
        after = [results[sid]["status"] for sid in range(before + 1, N)]
        assert set(after) == {"timed_out"}, f"with the edge stopped no result can come: {after}"
        assert s["timed_out"] >= len(after)
        assert s["late_results"] == sum(e["type"] == "late_result" for e in events)
        boards = {b["name"]: b for b in s["boards"]}
        assert boards["edge"]["status"] == "offline", boards["edge"]
        assert all(b["status"] == "stopped" for name, b in boards.items() if name != "edge"), boards
    finally:
        _cleanup(proc, pid)
