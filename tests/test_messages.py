"""testbed.messages: the boards' messages are untrusted input; one schema per topic and kind."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.messages import MAX_PAYLOAD, Accepted, Malformed, Rejected, parse

BENCH = dict(bench="demo", boards=["wrist", "chest", "edge"], edge="edge")


def _tele(who: str, /, **msg) -> Accepted | Rejected:
    return parse(f"tb/demo/tele/{who}", json.dumps(msg).encode(), **BENCH)


def test_a_sample_keeps_only_its_schemas_fields_never_the_event_type_or_time() -> None:
    got = _tele("wrist", kind="sample", sample=3, verdict="sent", compute_ms=1.5, bytes=118, type="result", t=-1,
                board="edge", label=7)
    assert isinstance(got, Accepted) and got.kind == "sample" and got.board == "wrist"
    assert got.fields == {"sample": 3, "verdict": "sent", "compute_ms": 1.5, "bytes": 118}


@pytest.mark.parametrize(("board", "msg", "reason"), [
    ("wrist", {"kind": "result", "sample": 1, "pred": 2, "arrived": [0], "missing": []},
     "result from a board that is not the edge"),
    ("edge", {"kind": "result", "sample": "1", "pred": 2, "arrived": [0], "missing": []},
     "result.sample: expected an integer"),
    ("edge", {"kind": "result", "sample": 1, "pred": 2, "arrived": "all", "missing": []},
     "result.arrived: expected a list of shard ids"),
    ("edge", {"kind": "result", "sample": 1, "arrived": [], "missing": []}, "result.pred: missing"),
    ("wrist", {"kind": "sample", "sample": 1, "verdict": "sent", "compute_ms": "fast"},
     "sample.compute_ms: expected a finite number"),
    ("wrist", {"kind": "sample", "sample": -4, "verdict": "sent"}, "sample.sample: expected an integer"),
    ("wrist", {"kind": "link", "link": "wrist-edge", "frames_delivered": [1, 2]}, "expected an object of counters"),
    ("edge", {"kind": "edge", "decode": {"a": {"b": {"c": {"d": {"e": 1}}}}}}, "edge.decode: expected an object"),
    ("wrist", {"kind": "exploit"}, "unknown kind"),
    ("wrist", {"kind": "error", "error": 42}, "error.error: expected a string"),
])
def test_a_malformed_message_is_rejected_with_its_reason(board: str, msg: dict, reason: str) -> None:
    got = _tele(board, **msg)
    assert isinstance(got, Rejected) and got.board == board and reason in got.reason, got


def test_topics_payloads_and_boards_outside_the_run_are_rejected() -> None:
    assert parse("tb/demo/tele/mallory", b"{}", **BENCH) == Rejected("?", "unknown board")
    assert parse("tb/other/tele/wrist", b"{}", **BENCH) == Rejected("?", "unexpected topic")
    assert parse("tb/demo/ctl/wrist", b"{}", **BENCH) == Rejected("?", "unexpected topic")
    assert parse("tb/demo/tele/wrist", b"\xff\xfe", **BENCH) == Rejected("wrist", "not JSON")
    assert parse("tb/demo/tele/wrist", b"[" * 100_000 + b"]" * 100_000, **BENCH).reason in ("not JSON", "too large")
    assert parse("tb/demo/tele/wrist", b"[1]", **BENCH) == Rejected("wrist", "not a JSON object")
    assert parse("tb/demo/tele/wrist", b" " * (MAX_PAYLOAD + 1), **BENCH) == Rejected("wrist", "too large")


def test_null_optional_fields_are_absent_not_malformed() -> None:
    """A board without a meter says energy: null in its status; a sample with no reading near it
    has energy_mj: null. Neither is malformed; a null required field is missing."""
    st = parse("tb/demo/status/wrist", json.dumps({"state": "ready", "energy": None, "clock": None,
                                                    "net_ns": None}).encode(), **BENCH)
    assert isinstance(st, Accepted) and st.fields == {"state": "ready"}
    got = _tele("wrist", kind="sample", sample=1, verdict="sent", energy_mj=None)
    assert isinstance(got, Accepted) and "energy_mj" not in got.fields
    assert _tele("wrist", kind="sample", sample=None, verdict="sent") == Rejected("wrist", "sample.sample: missing")


def test_long_text_is_clipped_and_status_keeps_its_fields() -> None:
    got = _tele("chest", kind="error", error="x" * 10_000)
    assert isinstance(got, Accepted) and len(got.fields["error"]) == 500
    st = parse("tb/demo/status/edge", json.dumps({"state": "ready", "pid": 7, "clock": {"offset_ms": 0.2},
                                                   "type": "result"}).encode(), **BENCH)
    assert isinstance(st, Accepted) and st.fields == {"state": "ready", "pid": 7, "clock": {"offset_ms": 0.2}}


def test_malformed_counts_per_board_and_reason() -> None:
    m = Malformed()
    assert m.add(Rejected("wrist", "not JSON")) is True
    assert m.add(Rejected("wrist", "not JSON")) is False
    assert m.add(Rejected("?", "unknown board")) is True
    assert m.as_dict() == {"wrist": {"not JSON": 2}, "?": {"unknown board": 1}} and m.total() == 3


# -- through a real run: a rogue client on an anonymous broker ---------------------------------------

@pytest.mark.slow
def test_a_run_counts_and_drops_what_a_rogue_client_publishes(tmp_path, model_cache) -> None:
    """On a broker the inventory opens to anonymous clients, anything may publish on the run's
    topics: garbage, a result from a wearable's topic, a result for a sample never triggered, a
    sample that tries to be a result event. The run counts and drops each, logs no forged record,
    and still accounts for every sample."""
    import threading

    from conftest import DEMO_INVENTORY, digits_experiment, last_json, read_jsonl, run_cli
    from nodes.mqtt import MqttClient

    inv = DEMO_INVENTORY.read_text().replace("  mode: embedded", "  mode: embedded\n  anonymous: true")
    assert "anonymous: true" in inv
    (tmp_path / "inventory.yaml").write_text(inv)
    exp = digits_experiment(tmp_path / "e.yaml", samples=40, rate_hz=20, output=tmp_path / "runs")
    result: dict = {}

    def run() -> None:
        result["proc"] = run_cli("run", str(exp), "--inventory", str(tmp_path / "inventory.yaml"), "--headless",
                                 "--json", cache=model_cache, cwd=tmp_path)
    t = threading.Thread(target=run)
    t.start()
    runs = tmp_path / "runs"
    port = None
    while t.is_alive() and port is None:   # the run's broker: its generated config names the port
        confs = list(runs.glob("*/broker/mosquitto.conf")) if runs.exists() else []
        sampling = [c for c in confs if "sampling_start" in (c.parent.parent / "events.jsonl").read_text()]
        if sampling:
            port = int(sampling[0].read_text().split("listener ", 1)[1].split()[0])
        else:
            t.join(0.2)
    assert port is not None, "the run never started sampling"
    rogue = [("tb/demo/tele/wrist", b"\\xff not json"), ("tb/demo/tele/wrist", b"[1, 2]"),
             ("tb/demo/tele/wrist", json.dumps({"kind": "result", "sample": 0, "pred": 0, "arrived": [0],
                                                "missing": []}).encode()),
             ("tb/demo/tele/edge", json.dumps({"kind": "result", "sample": 99_999, "pred": 0, "arrived": [0],
                                               "missing": []}).encode()),
             ("tb/demo/tele/chest", json.dumps({"kind": "sample", "sample": "x", "verdict": "sent"}).encode()),
             ("tb/demo/tele/mallory", b"{}")]
    with MqttClient(host="127.0.0.1", port=port, client_id="rogue") as c:
        for topic_name, payload in rogue * 3:
            assert c.publish(topic_name, payload, qos=1, wait=5.0)
    t.join(600)
    proc = result["proc"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    assert s["samples"] == 40 and s["completed"] + s["timed_out"] == 40
    assert s["malformed"]["wrist"] == {"not JSON": 3, "not a JSON object": 3,
                                       "result from a board that is not the edge": 3}
    assert s["malformed"]["chest"] == {"sample.sample: expected an integer from 0 to 4294967295": 3}
    assert s["malformed"]["?"] == {"unknown board": 3}
    assert s["late_results"] == 3                      # the untriggered sample's forged result
    events = read_jsonl(Path(s["run_dir"]) / "events.jsonl")
    results = [e for e in events if e["type"] == "result"]
    assert sorted(e["sample"] for e in results) == list(range(40)), "one result per triggered sample, no forged one"
