"""The run's one fault schedule (testbed/faults.py): every outage kind, one run clock, and the
``during_outage`` label of a real run checked against it (and against the frames the agents'
own shapers dropped)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import DEMO_INVENTORY, digits_experiment, last_json, read_jsonl, run_cli
from linkemu.shaper import Shaper
from testbed.config import load_experiment, load_inventory
from testbed.errors import ConfigError
from testbed.faults import FaultSchedule, RunClock, link_seed

TRACE = "time_s,state\n0.40,down\n0.90,up\n1.30,down\n1.45,up\n"
PROCESS = "{distribution: exponential, mean_up_s: 0.5, mean_down_s: 0.3}"


def _inventory(tmp_path: Path, *, process_seed: str = "") -> Path:
    """The demo bench with chest on an on/off process and ankle replaying a trace file."""
    (tmp_path / "ankle.csv").write_text(TRACE)
    text = DEMO_INVENTORY.read_text()
    chest = "    transport: {type: ble, hci: virtual}\n    profile: hbc-1312k\n"
    ankle = "    transport: {type: mqtt}\n    profile: hbc-1312k\n"
    assert chest in text and ankle in text
    text = text.replace(chest, "    transport: {type: ble, hci: virtual}\n    profile: {preset: hbc-1312k, "
                               f"outage_process: {PROCESS}{process_seed}}}\n")
    text = text.replace(ankle, "    transport: {type: mqtt}\n    profile: {preset: hbc-1312k, "
                               "outage_trace: ankle.csv}\n")
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def _schedule(tmp_path: Path, **kw) -> tuple[FaultSchedule, object]:
    inv = load_inventory(_inventory(tmp_path, **kw))
    exp = load_experiment(digits_experiment(tmp_path / "exp.yaml", samples=40, faults="""faults:
  - {kind: outage, link: wrist-edge, at_s: 1.2, duration_s: 0.2}
  - {kind: kill, board: wrist, at_s: 9.0}"""))
    return FaultSchedule.build(inv, exp), exp


def test_every_outage_kind_is_in_the_schedule(tmp_path):
    schedule, exp = _schedule(tmp_path)
    assert schedule.horizon_s == pytest.approx(39 / 20 + 1.5)
    assert schedule.windows("ankle-edge") == ((0.4, 0.9), (1.3, 1.45))           # the trace, as written
    assert schedule.windows("wrist-edge") == ((1.2, pytest.approx(1.4)),)          # the experiment's fault
    process = schedule.windows("chest-edge")                                        # the on/off process
    assert process and all(s < e for s, e in process) and process[-1][0] <= schedule.horizon_s
    assert schedule.profiles["chest-edge"].seed == link_seed(exp.seed, "chest-edge")
    for s, e in process:
        mid = (s + e) / 2
        assert schedule.is_down("chest-edge", mid) and schedule.during_outage(mid)
        assert not schedule.is_down("chest-edge", e)   # half-open: up again at the end
    assert schedule.links_down(0.5) == ["ankle-edge"] + (["chest-edge"] if schedule.is_down("chest-edge", 0.5)
                                                          else [])
    events = schedule.events()
    assert [ev.at_s for ev in events] == sorted(ev.at_s for ev in events)
    assert {(ev.kind, ev.link or ev.board, ev.phase) for ev in events} >= {
        ("outage", "ankle-edge", "start"), ("outage", "ankle-edge", "end"), ("outage", "chest-edge", "start"),
        ("outage", "wrist-edge", "start"), ("kill", "wrist", "start")}
    # a kill after the last sample is still listed (the orchestrator logs it as such)
    assert events[-1].fields() == {"kind": "kill", "board": "wrist", "phase": "start"}
    doc = json.loads(json.dumps(schedule.as_dict()))
    assert doc["links"]["ankle-edge"]["windows"] == [[0.4, 0.9], [1.3, 1.45]]


def test_the_agents_shaper_sees_the_schedules_windows(tmp_path):
    """The user-space shaper, given the effective profile and the run's t0, is down exactly when
    the schedule says so, for a process and a trace alike (they read one timeline)."""
    schedule, _ = _schedule(tmp_path)
    t0 = 1000.0
    for link in ("chest-edge", "ankle-edge"):
        shaper = Shaper(schedule.profiles[link], start=t0)
        for i in range(3000):
            offset = i * 0.001 + 0.0005   # off the edges, where (t0 + x) - t0 != x in floats
            assert shaper.in_outage(t0 + offset) == schedule.is_down(link, offset), (link, offset)


def test_a_profile_seed_is_kept_and_an_open_one_is_fixed(tmp_path):
    schedule, _ = _schedule(tmp_path, process_seed=", seed: 7")
    assert schedule.profiles["chest-edge"].seed == 7
    with pytest.raises(ValueError, match="without a seed: x"):
        FaultSchedule({"x": load_inventory(DEMO_INVENTORY).links[0].profile}, horizon_s=1.0)


def test_a_process_that_would_flood_the_run_is_refused_with_its_line(tmp_path):
    path = _inventory(tmp_path)
    path.write_text(path.read_text().replace("mean_up_s: 0.5, mean_down_s: 0.3", "mean_up_s: 0.00001, mean_down_s: 0.00001"))
    inv = load_inventory(path)
    exp = load_experiment(digits_experiment(tmp_path / "exp.yaml", samples=40))
    with pytest.raises(ConfigError, match=r"links\[1\]\.profile\.outage_process: more than 100,000 outages") as info:
        FaultSchedule.build(inv, exp)
    assert info.value.line == next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if "outage_process" in ln)


def test_run_clock():
    ticks = iter([5.0])
    clock = RunClock.start(monotonic=lambda: next(ticks), wall_ns=lambda: 123)
    assert (clock.t0, clock.t0_ns) == (5.0, 123)
    assert clock.offset(5.25) == 0.25 and clock.at(0.25) == 5.25


@pytest.mark.slow
def test_outage_labels_of_a_run_follow_the_schedule(tmp_path, model_cache):
    """A run with an on/off-process link and a trace link: every sample's ``during_outage`` is
    what the schedule in run.json says at its trigger time, and each wearable's shaper dropped
    exactly the frames it was offered inside its link's windows of that schedule."""
    n = 40
    inv = _inventory(tmp_path)
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n)
    proc = run_cli("run", str(exp), "--inventory", str(inv), "--headless", "--json", cache=model_cache,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = last_json(proc.stdout)
    run_dir = Path(s["run_dir"])
    windows = {name: [(a, math.inf if b is None else b) for a, b in link["windows"]]
               for name, link in json.loads((run_dir / "run.json").read_text())["faults"]["links"].items()}
    assert windows["ankle-edge"] == [(0.4, 0.9), (1.3, 1.45)] and windows["chest-edge"]
    events = read_jsonl(run_dir / "events.jsonl")
    at = {e["sample"]: e["at_s"] for e in events if e["type"] == "trigger"}
    results = {e["sample"]: e for e in events if e["type"] == "result"}
    assert sorted(results) == list(range(n))

    def down(link: str, t: float) -> bool:
        return any(a <= t < b for a, b in windows[link])

    for sid, r in results.items():
        assert r["during_outage"] == any(down(link, at[sid]) for link in windows), (sid, at[sid])
    # each wearable's own shaper decided on the schedule's windows, on the run clock: a frame it
    # dropped for an outage was offered while its link was down (or so close before a window that
    # its ~0.7 ms of airtime ran into it), and a frame it sent was offered while its link was up
    board = {"chest-edge": "chest", "ankle-edge": "ankle"}
    for link, name in board.items():
        verdicts = [(e["at_s"], e["verdict"]) for e in events if e["type"] == "sample" and e["board"] == name]
        assert len(verdicts) == n
        assert any(v == "outage" for _, v in verdicts) and any(v == "sent" for _, v in verdicts)
        for t, v in verdicts:
            if v == "outage":
                assert down(link, t) or down(link, t + 0.002), (link, t)
            else:
                assert v == "sent" and not down(link, t), (link, t, v)
    assert s["samples_during_outage"] == sum(r["during_outage"] for r in results.values()) > 0
