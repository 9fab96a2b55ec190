"""RunState folding, summary arithmetic, the event log, and the dashboard rendering of a state."""
from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from testbed.dashboard import render, replay
from testbed.runstate import EventLog, RunState, percentile, read_events

START = {"type": "run_start", "t": 0.0, "run": "r1", "run_dir": "runs/r1", "samples": 4, "rate_hz": 10,
         "dataset": "digits", "broker": {"kind": "amqtt", "fallback_reason": "mosquitto not installed"},
         "boards": [{"name": "w1", "role": "wearable"}, {"name": "w2", "role": "wearable"},
                    {"name": "e", "role": "edge"}],
         "links": [{"name": "w1-e", "src": "w1", "dst": "e", "transport": "mqtt", "rate_bps": 1312500.0},
                   {"name": "w2-e", "src": "w2", "dst": "e", "transport": "mqtt", "rate_bps": 1312500.0}]}


def _result(sample: int, status: str, correct: bool, latency: float | None, **kw: object) -> dict:
    return {"type": "result", "t": 1.0 + sample, "sample": sample, "status": status, "correct": correct,
            "latency_ms": latency, "missing": ["w2"] if status == "partial" else [], **kw}


def events() -> list[dict]:
    return [START, {"type": "sampling_start", "t": 0.5},
            {"type": "status", "t": 0.1, "board": "w1", "state": "running"},
            {"type": "sample", "t": 1.0, "board": "w1", "sample": 0, "compute_ms": 2.0, "bytes": 100,
             "verdict": "sent"},
            {"type": "sample", "t": 1.1, "board": "w1", "sample": 1, "compute_ms": 4.0, "bytes": 100,
             "verdict": "sent"},
            {"type": "sample", "t": 1.2, "board": "w2", "sample": 1, "compute_ms": 3.0, "bytes": 100,
             "verdict": "outage"},
            {"type": "link", "t": 1.3, "board": "w2", "link": "w2-e", "bytes_delivered": 100,
             "frames_delivered": 1, "dropped_outage": 1, "dropped_queue": 0, "in_outage": True},
            {"type": "fault", "t": 1.0, "kind": "outage", "link": "w2-e", "phase": "start"},
            _result(0, "complete", True, 5.0), _result(1, "partial", False, 300.0, during_outage=True),
            _result(2, "partial", True, 302.0, during_outage=True), _result(3, "timed_out", False, None)]


def test_summary_counts_and_accuracies() -> None:
    s = RunState().apply_all(events()).summary()
    assert (s["samples"], s["completed"], s["complete"], s["partial"], s["timed_out"]) == (4, 3, 1, 2, 1)
    assert s["completed"] + s["timed_out"] == s["samples"]
    assert s["accuracy"] == 0.5                      # 2 correct of all 4 (timed out counts as wrong)
    assert s["accuracy_all_parts"] == 1.0 and s["accuracy_partial"] == 0.5
    assert s["accuracy_during_outage"] == 0.5 and s["samples_during_outage"] == 2
    assert s["latency_ms"]["p50"] == 300.0           # of completed samples only
    w1 = next(b for b in s["boards"] if b["name"] == "w1")
    assert w1["samples"] == 2 and w1["bytes_sent"] == 200 and w1["compute_ms_p50"] == 3.0
    w2e = next(lk for lk in s["links"] if lk["name"] == "w2-e")
    assert w2e["dropped"] == 1 and w2e["bytes"] == 100


def test_percentile_matches_linear_interpolation() -> None:
    assert percentile([], 50) is None
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([10.0], 95) == 10.0
    assert percentile([0.0, 10.0], 95) == 9.5


def test_event_log_flushes_each_line_and_reader_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    seen: list[dict] = []
    with EventLog(path) as log:
        log.subscribe(seen.append)
        log.write("trigger", sample=0)
        assert json.loads(path.read_text().splitlines()[0])["sample"] == 0   # on disk before close
        log.write("trigger", sample=1)
    with open(path, "a") as fh:
        fh.write('{"type": "trig')   # a torn last line, as after a crash
    assert [e["sample"] for e in read_events(path)] == [0, 1]
    assert [e["sample"] for e in seen] == [0, 1] and all("t" in e for e in seen)


def test_dashboard_renders_boards_links_figures_and_notes(tmp_path: Path) -> None:
    st = RunState().apply_all(events())
    console = Console(record=True, width=140, color_system=None)
    console.print(render(st))
    text = console.export_text()
    for needle in ("w1", "w2-e", "OUTAGE", "1312.5 kbit/s", "latency p50", "amqtt", "outage w2-e"):
        assert needle in text, needle
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events()) + "\n")
    replayed = replay(path, console=Console(record=True, width=140, color_system=None))
    assert replayed.summary() == st.summary()


def test_a_malformed_event_in_a_replayed_log_is_skipped_not_fatal() -> None:
    st = RunState()
    st.apply_all([{"type": "run_start", "run": "r", "samples": 2, "rate_hz": 1, "boards": [], "links": []},
                  {"type": "trigger", "sample": "zero"}, {"type": "malformed", "board": "w", "count": "many"},
                  {"type": "power", "board": "w", "mj": "lots"}, {"t": "later", "type": "run_end"},
                  {"type": "result", "sample": 0, "status": "complete", "correct": True, "latency_ms": 1.0},
                  {"type": "run_end"}])
    assert st.bad_events == 3 and st.ended and st.summary()["completed"] == 1
