"""A whole run under broker authentication survives its broker killed and restarted (#13).

The demo bench (serial, BLE and MQTT links) runs with the default embedded mosquitto, per-run
users and ACL. Mid-run the test SIGKILLs that mosquitto, waits until the orchestrator has gone on
triggering samples with no broker for longer than the run's timeout, then starts mosquitto again on the same port from the run's
own config (the same password file and ACL, so the run's users log in again). Every sample is
accounted for, the run finishes, samples triggered after the restart complete, the triggers queued
during the outage whose samples had already timed out are dropped by the boards (no late results of
them), and no process the run started is left behind.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from runwatch import (alive, cmdline, descendants, processes, run_events, sampling_run_dir, start_run, stop_run,
                      wait_until)
from conftest import digits_experiment, last_json, read_jsonl
from testbed.broker import wait_listening

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                                if Path(p).exists()), None)


def _refuses(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return False
    except OSError:
        return True


@pytest.mark.slow
@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)")
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the run's broker process")
def test_an_authenticated_run_survives_its_broker_killed_and_restarted(tmp_path: Path, model_cache: Path) -> None:
    n = 160
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, rate_hz=20.0, output=tmp_path / "runs")
    proc = start_run(exp, cwd=tmp_path, model_cache=model_cache)
    second: subprocess.Popen[bytes] | None = None
    try:
        run_dir = sampling_run_dir(tmp_path / "runs", proc=proc)
        broker = json.loads((run_dir / "run.json").read_text())["broker"]
        assert broker["kind"] == "mosquitto" and broker["auth"] == "per-run users and ACL"
        host, port, conf = broker["host"], broker["port"], run_dir / "broker" / "mosquitto.conf"
        assert "allow_anonymous false" in conf.read_text()

        def completed() -> int:
            return sum(1 for e in run_events(run_dir) if e["type"] == "result" and e["status"] == "complete")
        wait_until(lambda: completed() >= 10, "results before the kill", proc=proc)
        first = [pid for pid, (_, ppid, _) in processes().items()
                 if ppid == proc.pid and str(conf) in cmdline(pid)]
        assert len(first) == 1, f"expected the run's one mosquitto, found {first}"
        os.kill(first[0], signal.SIGKILL)
        wait_until(lambda: _refuses(host, port), "the broker's port to close", proc=proc)

        def triggered() -> int:
            return max((e["sample"] for e in run_events(run_dir) if e["type"] == "trigger"), default=-1)
        down_at = triggered()   # the broker stays down longer than timeout_ms (40 samples at 20 Hz: 2 s)
        wait_until(lambda: triggered() >= down_at + 40, "samples triggered with the broker down", proc=proc)
        # the same config: same port, same password file and ACL, so the run's users log in again
        with open(tmp_path / "mosquitto-2.log", "wb") as log:
            second = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL)
        wait_listening(host, port, timeout=15.0, proc=second)
        up_at = triggered()
        assert up_at < n - 1, "the run ended its sampling before the broker came back; raise n"
        started = descendants(proc.pid)   # the agents, link helpers and everything else the run started
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
        s = last_json(out)
        assert s["state"] == "finished" and s["broker_auth"] == "per-run users and ACL"
        assert s["samples"] == s["triggered"] == n
        assert s["completed"] + s["timed_out"] + s["unresolved"] == s["triggered"]
        assert s["timed_out"] > 0, "the outage outlasted timeout_ms: samples triggered in it time out"
        events = read_jsonl(run_dir / "events.jsonl")
        results = {e["sample"]: e["status"] for e in events if e["type"] == "result"}
        assert sorted(results) == list(range(n)), "one result per triggered sample"
        after = [sid for sid in range(up_at + 1, n) if results[sid] == "complete"]
        assert after, f"no sample triggered after the restart completed: {[results[i] for i in range(up_at + 1, n)]}"
        recovered = [results[sid] for sid in range(after[0], n)]
        assert "timed_out" not in recovered, f"a sample timed out once the run had recovered: {recovered}"
        assert results[n - 1] == "complete", "the run had not recovered by its last sample"
        assert not any(e["type"] in ("aborted", "interrupted") for e in events)
        # a trigger the orchestrator's client queued while the broker was down reaches the boards after the
        # broker is back; when its sample's timeout had passed by then, the boards drop it (nodes.agent:
        # expires_s), so no board computes it and no late result comes of it. (A sample whose result the
        # edge had queued before the kill, or one still live when the broker came back, may still be late.)
        late = sorted(e["sample"] for e in events if e["type"] == "late_result")
        assert s["late_results"] == len(late)
        at = {e["sample"]: e["at_s"] for e in events if e["type"] == "trigger"}
        timeout_s = 1.5   # digits_experiment's timeout_ms
        expired = [sid for sid in range(down_at + 1, up_at) if at[sid] + timeout_s < at[up_at]]
        assert expired, "the outage outlasts timeout_ms: some samples time out before the broker is back"
        stale = sorted(set(late) & set(expired))
        assert not stale, f"late results of samples whose timeout passed while the broker was down: {stale}"
        # nothing the run started outlives it (only the broker this test started is still up)
        left = {(pid, start) for pid, start in started if alive(pid, start)}
        assert not left, [cmdline(pid) for pid, _ in left]
        assert second is not None and second.poll() is None
        leftovers = [pid for pid in processes() if pid != second.pid and str(run_dir) in cmdline(pid)]
        assert not leftovers, [cmdline(pid) for pid in leftovers]
    finally:
        stop_run(proc)
        if second is not None:
            second.terminate()
            second.wait(timeout=10)
