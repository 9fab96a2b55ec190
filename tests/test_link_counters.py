"""Link counters that agree with the boards: a send the transport refuses or fails is a drop of the
link (``dropped_send``), never a delivered frame, from the shaper's worker through the wearable's
``_deliver`` and the link telemetry to the links table, the dashboard and summary.json; and a real
run whose serial wire is cut mid-run (its socat pair killed) reports, per link, what the
wearable's own ``sample`` verdicts say."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from conftest import DEMO_INVENTORY, ROOT, digits_experiment, last_json, read_jsonl, sigint_default
from runwatch import comm, descendants, stop_run, wait_until
from linkemu.profile import LinkProfile
from linkemu.shaper import ShapedSender
from nodes import agent as agent_mod
from nodes.agentconfig import Broker, TransportEnd, WearableConfig, WearableLink
from nodes.transport import TransportCounters
from testbed.dashboard import render
from testbed.runstate import RunState, read_events

FAST = LinkProfile("fast", 8e6, delay_s=0.001)
WAIT_S = 600.0   # upper bound against hangs (the first run trains the model), never a speed assertion


def _frames(n: int) -> list[bytes]:
    return [i.to_bytes(4, "little") * 25 for i in range(n)]


def _accounted(snap: dict[str, Any]) -> int:
    return (snap["frames_delivered"] + snap["dropped_outage"] + snap["dropped_queue"] + snap["dropped_loss"]
            + snap["dropped_send"] + snap["dropped_close"] + snap["pending_frames"])


# ------------------------------------------------------------------------- the shaper's worker

def test_a_refused_or_failed_send_is_a_drop_not_a_delivery() -> None:
    took: list[int] = []

    def send(frame: bytes, tag: int | None) -> object:
        assert tag is not None
        if tag % 4 == 1:
            return False                      # the transport refused it (a cut wire)
        if tag % 4 == 2:
            raise OSError("write failed")     # the transport raised
        took.append(tag)
        return None if tag % 4 == 0 else True  # None (no verdict) and True both mean it took it

    frames = _frames(20)
    with ShapedSender(send, FAST) as sender:
        for i, f in enumerate(frames):
            assert sender.submit(f, tag=i).accepted
    snap = sender.snapshot()
    assert took == [i for i in range(20) if i % 4 in (0, 3)]
    assert snap["frames_scheduled"] == snap["frames_offered"] == 20
    assert snap["frames_delivered"] == snap["frames_sent"] == len(took) == 10
    assert snap["bytes_delivered"] == 100 * len(took) and snap["bytes_scheduled"] == 2000
    assert snap["dropped_send"] == 10 and snap["send_errors"] == 5
    assert snap["pending_frames"] == 0 and _accounted(snap) == snap["frames_offered"]


def test_every_offered_frame_is_delivered_dropped_by_one_cause_or_pending() -> None:
    lossy = LinkProfile("lossy", 8e6, delay_s=0.001, queue_limit_bytes=1000, seed=3)
    calls = iter(range(10**6))
    with ShapedSender(lambda f, t: next(calls) % 3 != 0, lossy) as sender:
        for f in _frames(50):
            sender.submit(f)
            assert _accounted(sender.snapshot()) == sender.snapshot()["frames_offered"]
    snap = sender.snapshot()
    assert snap["dropped_send"] > 0 and snap["frames_delivered"] > 0
    assert _accounted(snap) == snap["frames_offered"] == 50


# ------------------------------------------------------------------------- the wearable's _deliver

class _Wire:
    """A transport stand-in: a frame that starts with b"refuse" is refused, b"raise" raises, any
    other one is taken."""

    type_name = "fake"

    def __init__(self) -> None:
        self.counters = TransportCounters()

    def send(self, frame: bytes) -> bool:
        if frame.startswith(b"raise"):
            raise OSError("wire cut")
        return not frame.startswith(b"refuse")


def _wearable() -> WearableConfig:
    return WearableConfig(bench="b", board="wrist", broker=Broker(host="127.0.0.1", port=1883), runtime="torch",
                          shard="student_0.pt", shard_index=0, samples="samples.npy", telemetry_hz=4.0, clock_probes=0,
                          link=WearableLink(name="wrist-edge", profile=FAST,
                                            transport=TransportEnd.of({"type": "mqtt", "topic": "t"})))


def _agent() -> tuple[agent_mod.WearableAgent, list[tuple[str, dict[str, Any]]]]:
    agent = agent_mod.WearableAgent(_wearable())
    agent._transports = [_Wire()]  # type: ignore[list-item]
    tele: list[tuple[str, dict[str, Any]]] = []
    agent.tele = lambda kind, **fields: tele.append((kind, fields))  # type: ignore[method-assign]
    return agent, tele


def _tag(sample: int) -> agent_mod._SampleTag:
    return agent_mod._SampleTag(sample=sample, compute_ms=0.0, encode_ms=0.0, nbytes=100,
                                submitted=time.monotonic(), at_s=0.0)


def test_the_wearable_reports_send_failed_and_the_link_counts_it_dropped_send() -> None:
    agent, tele = _agent()
    modes = [b"ok", b"refuse", b"raise", b"ok", b"raise", b"refuse", b"ok"]
    with agent._sender as sender:   # the agent's own shaper, in front of its own _deliver
        for i, mode in enumerate(modes):
            assert sender.submit(mode.ljust(100, b"."), tag=_tag(i)).accepted
    verdicts = {f["sample"]: f["verdict"] for kind, f in tele if kind == "sample"}
    assert verdicts == {i: "sent" if m == b"ok" else "send_failed" for i, m in enumerate(modes)}
    snap = sender.snapshot()
    assert snap["frames_delivered"] == list(verdicts.values()).count("sent") == 3
    assert snap["bytes_delivered"] == 300
    assert snap["dropped_send"] == list(verdicts.values()).count("send_failed") == 4
    assert snap["send_errors"] == 2 and snap["last_send_error"] == "send refused the frame (returned False)"
    assert _accounted(snap) == snap["frames_offered"] == len(modes)


def test_deliver_returns_what_the_transport_did() -> None:
    agent, tele = _agent()
    assert agent._deliver(b"ok", _tag(0)) is True
    assert agent._deliver(b"refuse", _tag(1)) is False
    with pytest.raises(OSError, match="wire cut"):   # re-raised for the shaper to count, after the verdict
        agent._deliver(b"raise", _tag(2))
    assert [f["verdict"] for _, f in tele] == ["sent", "send_failed", "send_failed"]


# ------------------------------------------------------------------------- links table and summary

START = {"type": "run_start", "t": 0.0, "run": "r1", "run_dir": "runs/r1", "samples": 6, "rate_hz": 10,
         "boards": [{"name": "w", "role": "wearable"}, {"name": "e", "role": "edge"}],
         "links": [{"name": "w-e", "src": "w", "dst": "e", "transport": "serial", "rate_bps": 1312500.0}]}


def test_links_table_and_summary_show_drops_by_cause_and_agree_with_the_board() -> None:
    verdicts = ["sent", "sent", "send_failed", "send_failed", "outage", "loss"]
    evs = [START] + [{"type": "sample", "t": 1.0, "board": "w", "sample": i, "bytes": 100, "verdict": v}
                     for i, v in enumerate(verdicts)]
    evs.append({"type": "link", "t": 2.0, "board": "w", "link": "w-e", "frames_offered": 6, "frames_scheduled": 4,
                "frames_delivered": 2, "bytes_delivered": 200, "dropped_outage": 1, "dropped_queue": 0,
                "dropped_loss": 1, "dropped_send": 2, "dropped_close": 0, "pending_frames": 0})
    st = RunState().apply_all(evs)
    s = st.summary()
    (lk,) = s["links"]
    (board,) = [b for b in s["boards"] if b["name"] == "w"]
    assert (lk["frames"], lk["bytes"]) == (board["samples"], board["bytes_sent"]) == (2, 200)
    assert lk["dropped"] == board["dropped"] == 4
    assert {k: lk[f"dropped_{k}"] for k in ("outage", "queue", "loss", "send", "close")} == \
        {"outage": 1, "queue": 0, "loss": 1, "send": 2, "close": 0}
    console = Console(width=200, record=True, force_terminal=False)
    console.print(render(st))
    assert "4 (1 outage, 1 loss, 2 send failed)" in console.export_text()


def test_old_link_telemetry_without_the_new_causes_still_folds() -> None:
    st = RunState().apply_all([START, {"type": "link", "t": 1.0, "link": "w-e", "frames_delivered": 3,
                                       "bytes_delivered": 300, "dropped_outage": 1, "dropped_queue": 1}])
    (lk,) = st.summary()["links"]
    assert (lk["frames"], lk["dropped"], lk["dropped_send"]) == (3, 2, 0)


# ------------------------------------------------------------------------- a real run, its serial wire cut

@pytest.mark.slow
def test_a_cut_serial_wire_is_counted_as_send_drops_that_agree_with_the_wearable(
        tmp_path: Path, model_cache: Path) -> None:
    if not shutil.which("socat"):
        pytest.skip("socat is not installed (the demo's serial link needs it)")
    n = 60   # 3 s at 20 Hz: the wire is cut after the wrist's first sent frame
    runs = tmp_path / "runs"
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, output=runs)
    env = {**os.environ, "HBC_TESTBED_CACHE": str(model_cache),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    with open(out_path, "w") as out_fh, open(err_path, "w") as err_fh:
        proc = subprocess.Popen([sys.executable, "-m", "testbed", "run", str(exp), "--inventory", str(DEMO_INVENTORY),
                                 "--headless", "--json"], cwd=tmp_path, env=env, text=True,
                                stdout=out_fh, stderr=err_fh, preexec_fn=sigint_default)
    try:
        def wrist_sent() -> bool | None:
            for log in runs.glob("*/events.jsonl"):
                if any(e.get("type") == "sample" and e.get("board") == "wrist" and e.get("verdict") == "sent"
                       for e in read_events(log)):
                    return True
            return None

        wait_until(wrist_sent, "a frame sent on the wrist's serial link", proc=proc, timeout=WAIT_S)
        socat = [p for p, _ in descendants(proc.pid) if comm(p) == "socat"]
        assert len(socat) == 1, f"expected the serial link's one socat pair, found {socat}"
        os.kill(socat[0], signal.SIGKILL)          # the wire is cut: both pty masters close
        proc.wait(timeout=WAIT_S)
    finally:
        stop_run(proc, grace=120)   # Ctrl-C: the run tears down its agents, broker and links itself
    assert proc.returncode == 0, err_path.read_text()[-2000:]
    s = last_json(out_path.read_text())
    assert s["completed"] + s["timed_out"] == n
    events = read_jsonl(Path(s["run_dir"]) / "events.jsonl")
    links = {lk["name"]: lk for lk in s["links"]}
    boards = {b["name"]: b for b in s["boards"]}
    for board, link in (("wrist", "wrist-edge"), ("chest", "chest-edge"), ("ankle", "ankle-edge")):
        verdicts = [e["verdict"] for e in events if e["type"] == "sample" and e.get("board") == board]
        lk = links[link]
        assert len(verdicts) == n, (board, len(verdicts))
        assert lk["frames"] == verdicts.count("sent") == boards[board]["samples"], (link, lk)
        assert lk["bytes"] == boards[board]["bytes_sent"]
        assert lk["dropped_send"] == verdicts.count("send_failed"), (link, lk)
        assert lk["dropped"] == len(verdicts) - verdicts.count("sent") == boards[board]["dropped"], (link, lk)
    wrist = links["wrist-edge"]
    assert wrist["dropped_send"] > 0 and wrist["frames"] > 0, "the cut must land mid-run for this test to mean anything"
    assert wrist["dropped"] == wrist["dropped_send"]
    # the edge lost the wrist's part after the cut: those samples are partial (or timed out), never complete
    results = {e["sample"]: e for e in events if e["type"] == "result"}
    failed = {e["sample"] for e in events if e["type"] == "sample" and e.get("board") == "wrist"
              and e["verdict"] == "send_failed"}
    assert all(results[i]["status"] != "complete" for i in failed)
