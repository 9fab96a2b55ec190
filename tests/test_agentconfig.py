"""The board config (nodes/agentconfig.py) and the agent that reads it.

Round trips of both roles; every malformed field named by its path; a config of another format
refused by ``nodes.agent.main`` with one line and exit 2; the ``start`` command's parser and the
mapping of its ``t0_ns`` onto a board's monotonic clock (injected clocks); and a wearable agent
on a real broker with a reordering link, whose per-sample telemetry must follow its frames.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linkemu.outage import Outage
from linkemu.profile import PRESETS, LinkProfile
from nodes import agent as agent_mod
from nodes.agentconfig import (FORMAT, Broker, EdgeConfig, EnergyConfig, InboundLink, MergeSpec, RunStart, TransportEnd,
                               WearableConfig, WearableLink, from_dict, load)
from nodes.codec import Decoder, run_id_hash
from nodes.errors import AgentConfigError, NodeError
from nodes.mqtt import MqttClient, topic

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 30.0  # upper bound against hangs, never a speed assertion


def wearable(**overrides: Any) -> WearableConfig:
    base: dict[str, Any] = dict(
        bench="b", board="wrist", broker=Broker(host="127.0.0.1", port=1883), runtime="torch",
        shard="student_0.pt", shard_index=0, samples="samples.npy", telemetry_hz=4.0, clock_probes=3,
        link=WearableLink(name="wrist-edge", transport=TransportEnd.of({"type": "mqtt", "topic": "tb/b/data/w"}),
                          profile=PRESETS["hbc-656k"].with_outages([Outage(1.0, 0.5)]), encoding="f16",
                          compression="zstd", compression_level=-3, shaper="kernel:netem"))
    return WearableConfig(**{**base, **overrides})


def edge(**overrides: Any) -> EdgeConfig:
    base: dict[str, Any] = dict(
        bench="b", board="edge", broker=Broker(host="10.0.0.1", port=1884), runtime="tflite",
        merge=MergeSpec(shard="merge.tflite", parts=(0, 1, 2, 3), student_part=(0, 1, 0, 1), part_dim=8,
                        deadline_ms=250, rule="average"),
        inbound=(InboundLink(name="wrist-edge", transport=TransportEnd.of({"type": "serial", "port": "/dev/x",
                                                                          "baud": 921600})),
                 InboundLink(name="chest-edge", transport=TransportEnd.of({"type": "mqtt", "topic": "t"}))))
    return EdgeConfig(**{**base, **overrides})


# ------------------------------------------------------------------------------ round trips


def test_energy_section_round_trips_and_is_checked_by_the_meter_rules(tmp_path: Path) -> None:
    cfg = wearable(energy=EnergyConfig(meter="ina260", settings={"address": 0x44, "averaging": 4}, kind="rpi4"))
    back = from_dict(cfg.to_dict())
    assert back.energy is not None and back.energy.meter == "ina260" and back.energy.kind == "rpi4"
    assert back.energy.settings["address"] == 0x44 and back.energy.settings["conversion_us"] == 1100
    data = cfg.to_dict()
    data["energy"]["settings"]["address"] = 0x10
    with pytest.raises(AgentConfigError, match=r"energy.settings.address: expected a 7-bit I2C address"):
        from_dict(data)
    data["energy"] = {"meter": "watt-o-meter", "kind": "rpi4"}
    with pytest.raises(AgentConfigError, match=r"energy.meter: expected one of ina219, .*rapl"):
        from_dict(data)
    assert from_dict({**cfg.to_dict(), "energy": None}).energy is None


@pytest.mark.parametrize("make", [wearable, edge], ids=["wearable", "edge"])
def test_round_trip_through_dict_and_file(make: Any, tmp_path: Path) -> None:
    cfg = make()
    data = cfg.to_dict()
    assert data["format"] == FORMAT == 3 and data["role"] == cfg.role
    assert json.loads(json.dumps(data)) == data, "plain JSON"
    assert from_dict(data) == cfg
    path = cfg.write(tmp_path / "agent.json")
    back = load(path)
    assert back == cfg and type(back) is type(cfg)
    assert back.folder == tmp_path.resolve() and back.source == str(path)
    assert back.path(back.shard_file) == tmp_path.resolve() / back.shard_file
    assert back.path("/abs/shard.pt") == Path("/abs/shard.pt")


def test_json_layout_is_the_one_deploy_and_tests_read() -> None:
    w = wearable().to_dict()
    assert w["link"]["profile"] == wearable().link.profile.as_dict()
    assert w["link"]["transport"] == {"type": "mqtt", "topic": "tb/b/data/w"}
    assert (w["shard"], w["link"]["encoding"], w["link"]["compression_level"]) == ("student_0.pt", "f16", -3)
    e = edge().to_dict()
    assert e["merge"]["parts"] == [0, 1, 2, 3] and e["inbound"][0]["transport"]["baud"] == 921600


def test_defaults_of_optional_fields() -> None:
    data = wearable().to_dict()
    del data["telemetry_hz"], data["clock_probes"]
    for key in ("encoding", "compression", "compression_level", "shaper"):
        del data["link"][key]
    cfg = from_dict(data)
    assert isinstance(cfg, WearableConfig)
    assert (cfg.telemetry_hz, cfg.clock_probes) == (2.0, 8)
    assert (cfg.link.encoding, cfg.link.compression, cfg.link.compression_level, cfg.link.shaper) == \
        ("f32", "none", None, "user")


# ------------------------------------------------------------------------------ malformed fields


def _set(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``data`` with the field at dotted ``path`` set to ``value`` (deleted for ``...``)."""
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


WEARABLE_CASES = [
    ("link.encoding", "f64", "agent.json: link.encoding: expected one of f32, f16, int8; got 'f64'"),
    ("link.compression", "gzip", "agent.json: link.compression: expected one of none, zstd, lz4; got 'gzip'"),
    ("link.compression_level", 1.5, "agent.json: link.compression_level: expected an integer or null; got 1.5"),
    ("link.name", "", "agent.json: link.name: expected a non-empty string; got ''"),
    ("link.transport", "mqtt", "agent.json: link.transport: expected a JSON object with 'type'; got 'mqtt'"),
    ("link.transport.type", "carrier",
     "agent.json: link.transport.type: expected one of ble, mqtt, serial; got 'carrier'"),
    ("link.profile.rate_bps", -1, "agent.json: link.profile.rate_bps: expected a number > 0"),
    ("link.profile.colour", "red", "agent.json: link.profile"),
    ("link.profile", [], "agent.json: link.profile: expected a JSON object"),
    ("link.shaper", None, "agent.json: link.shaper: expected a non-empty string; got nothing (null)"),
    ("link.mtu", 5, "agent.json: link.mtu: unknown key; expected one of name, transport, profile"),
    ("link", ..., "agent.json: link: missing"),
    ("shard", 3, "agent.json: shard: expected a non-empty string; got 3"),
    ("shard_index", -1, "agent.json: shard_index: expected an integer in 0..65535; got -1"),
    ("shard_index", 70000, "agent.json: shard_index: expected an integer in 0..65535; got 70000"),   # a frame's u16
    ("shard_index", True, "agent.json: shard_index: expected an integer in 0..65535; got true (a boolean)"),
    ("samples", ..., "agent.json: samples: missing"),
    ("broker.port", 70000, "agent.json: broker.port: expected an integer in 1..65535; got 70000"),
    ("broker.host", ..., "agent.json: broker.host: missing"),
    ("broker", "localhost", "agent.json: broker: expected a JSON object; got 'localhost'"),
    ("runtime", "onnx", "agent.json: runtime: expected one of tflite, torch; got 'onnx'"),
    ("telemetry_hz", 0, "agent.json: telemetry_hz: expected a number > 0; got 0"),
    ("clock_probes", "8", "agent.json: clock_probes: expected an integer >= 0; got '8'"),
    ("bench", ..., "agent.json: bench: missing"),
    ("role", "router", "agent.json: role: expected one of wearable, edge; got 'router'"),
    ("merge", {}, "agent.json: merge: unknown key; expected one of format, bench"),
]

EDGE_CASES = [
    ("merge.rule", "max", "agent.json: merge.rule: expected one of concat, average; got 'max'"),
    ("merge.parts", [], "agent.json: merge.parts: expected a non-empty list of integers >= 0; got a list"),
    ("merge.parts", [0, "1"], "agent.json: merge.parts: expected a list of integers >= 0; got a list"),
    ("merge.student_part", "0,1", "agent.json: merge.student_part: expected a non-empty list of integers >= 0 "
                                  "or null; got '0,1'"),
    ("merge.part_dim", 0, "agent.json: merge.part_dim: expected an integer in 1..1048576; got 0"),
    ("merge.deadline_ms", float("nan"), "agent.json: merge.deadline_ms: expected a number > 0; got nan"),
    ("merge.shard", ..., "agent.json: merge.shard: missing"),
    ("inbound", {}, "agent.json: inbound: expected a list; got a mapping"),
    ("inbound.1.transport.type", 7, "agent.json: inbound[1].transport.type: expected one of ble, mqtt, serial"),
    ("inbound.0.name", ..., "agent.json: inbound[0].name: missing"),
    ("inbound.0.profile", {}, "agent.json: inbound[0].profile: unknown key; expected one of name, transport"),
    ("link", {}, "agent.json: link: unknown key; expected one of format, bench"),
]


@pytest.mark.parametrize(("path", "value", "message"), WEARABLE_CASES, ids=[f"{c[0]}={c[1]!r}" for c in WEARABLE_CASES])
def test_each_malformed_wearable_field_is_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(AgentConfigError) as err:
        from_dict(_set(wearable().to_dict(), path, value))
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("path", "value", "message"), EDGE_CASES, ids=[f"{c[0]}={c[1]!r}" for c in EDGE_CASES])
def test_each_malformed_edge_field_is_named(path: str, value: Any, message: str) -> None:
    with pytest.raises(AgentConfigError) as err:
        from_dict(_set(edge().to_dict(), path, value))
    assert str(err.value).startswith(message), str(err.value)


def test_not_an_object_and_source_name() -> None:
    with pytest.raises(AgentConfigError, match=r"^boards/w/agent.json: top level: expected a JSON object; got a list"):
        from_dict([], source="boards/w/agent.json")


def test_write_refuses_a_config_the_agent_would_refuse(tmp_path: Path) -> None:
    cfg = wearable(link=WearableLink(name="l", transport=TransportEnd(type="pigeon"), profile=PRESETS["ideal"]))
    with pytest.raises(AgentConfigError, match="link.transport.type: expected one of ble, mqtt, serial"):
        cfg.write(tmp_path / "agent.json")
    assert not (tmp_path / "agent.json").exists()


def test_config_error_is_a_node_error_with_exit_code_2() -> None:
    assert issubclass(AgentConfigError, NodeError) and AgentConfigError.exit_code == 2


# ------------------------------------------------------------------------------ format version


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "agent.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("version", "shown"), [(4, "format 4"), (2, "format 2"), ("3", "format '3'")])
def test_agent_refuses_another_format_in_one_line(version: Any, shown: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, {**wearable().to_dict(), "format": version, "link": "from the future"})
    assert agent_mod.main(["--config", str(path)], install_signals=False) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (f"agent: {path}: {shown} is not a format this agent reads (it reads format 3); "
                   f"deploy with the same hbc-testbed version on both ends\n")


def test_agent_refuses_a_config_without_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = wearable().to_dict()
    del data["format"]
    assert agent_mod.main(["--config", str(_write(tmp_path, data))], install_signals=False) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no format field" in err and "it reads format 3" in err


@pytest.mark.parametrize(("text", "needle"), [("{not json", "not valid JSON"), (None, "cannot read")])
def test_unreadable_config_is_one_line_exit_2(text: str | None, needle: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.json"
    if text is not None:
        path.write_text(text)
    assert agent_mod.main(["--config", str(path)], install_signals=False) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and str(path) in err


def test_merge_rule_checks_of_the_merger_refuse_at_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = edge(merge=MergeSpec(shard="merge.tflite", parts=(0, 1, 2), student_part=(0, 1), part_dim=8,
                               deadline_ms=250, rule="average"))
    path = bad.write(tmp_path / "agent.json")
    assert agent_mod.main(["--config", str(path)], install_signals=False) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"agent: {path}: merge: merge rule 'average' needs student_part")


def test_python_m_nodes_agent_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    path = _write(tmp_path, {**wearable().to_dict(), "format": 4})
    proc = subprocess.run([sys.executable, "-m", "nodes.agent", "--config", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "format 4 is not a format this agent reads (it reads format 3)" in proc.stderr


# ------------------------------------------------------------------------------ the start command


def test_run_start_parses_with_and_without_t0() -> None:
    assert RunStart.from_message({"cmd": "start", "run": "r1", "t0_ns": 12}) == RunStart("r1", 12)
    assert RunStart.from_message({"cmd": "start", "run": "r1"}) == RunStart("r1", None)
    assert RunStart.from_message({"cmd": "start", "run": "r1", "t0_ns": None}) == RunStart("r1", None)
    assert RunStart.from_message({"cmd": "start", "run": "r1", "t0_ns": 12, "newer": {"x": 1}}) == \
        RunStart("r1", 12), "keys of a newer orchestrator are ignored"
    for start in (RunStart("r2", 1_700_000_000_000_000_000), RunStart("r3")):
        assert RunStart.from_message(json.loads(json.dumps(start.to_message()))) == start


@pytest.mark.parametrize(("msg", "message"), [
    ({"cmd": "start"}, "start command: run: missing"),
    ({"cmd": "start", "run": 5}, "start command: run: expected a non-empty string; got 5"),
    ({"cmd": "start", "run": "r", "t0_ns": "12"}, "start command: t0_ns: expected an integer in 0..2**64-1"),
    ({"cmd": "start", "run": "r", "t0_ns": 1.5e18}, "start command: t0_ns: expected an integer in 0..2**64-1"),
    ({"cmd": "start", "run": "r", "t0_ns": True}, "start command: t0_ns: expected an integer in 0..2**64-1"),
    ({"cmd": "start", "run": "r", "t0_ns": -1}, "start command: t0_ns: expected an integer in 0..2**64-1"),
    ({"cmd": "start", "run": "r", "t0_ns": 10 ** 400}, "start command: t0_ns: expected an integer in 0..2**64-1"),
    ({"cmd": "stop", "run": "r"}, "start command: cmd: expected 'start'; got 'stop'"),
    (["start"], "start command: top level: expected a JSON object"),
])
def test_run_start_rejects_malformed_payloads(msg: Any, message: str) -> None:
    with pytest.raises(AgentConfigError) as err:
        RunStart.from_message(msg)
    assert str(err.value).startswith(message), str(err.value)


def test_t0_maps_onto_the_board_monotonic_clock() -> None:
    s = 1_000_000_000
    # the board's wall clock reads 100 s, its monotonic 7 s; the orchestrator is 0.5 s ahead
    # (orchestrator = board + offset) and its run began at 99 s of its clock: 1.5 s ago
    start = RunStart("r", t0_ns=99 * s)
    assert start.monotonic_t0(offset_ns=0.5 * s, wall_ns=100 * s, mono_s=7.0) == pytest.approx(5.5)
    assert start.monotonic_t0(offset_ns=0.0, wall_ns=100 * s, mono_s=7.0) == pytest.approx(6.0)
    assert start.monotonic_t0(offset_ns=-2.0 * s, wall_ns=100 * s, mono_s=7.0) == pytest.approx(8.0), \
        "a time zero still ahead of the board lies in its future"
    assert RunStart("r").monotonic_t0(offset_ns=0.5 * s, wall_ns=100 * s, mono_s=7.0) == 7.0, \
        "an older orchestrator without t0_ns: the run starts when the command arrives"


def test_a_time_zero_is_believed_only_with_an_estimate_and_within_the_skew() -> None:
    s = 1_000_000_000
    start = RunStart("r", t0_ns=99 * s)
    kw = {"wall_ns": 100 * s, "mono_s": 7.0, "max_skew_s": 60.0}
    assert start.board_t0(offset_ns=0.5 * s, **kw) == (pytest.approx(5.5), None)
    assert start.board_t0(offset_ns=None, **kw) == (7.0, None), "no clock estimate: on arrival"
    assert RunStart("r").board_t0(offset_ns=0.0, **kw) == (7.0, None), "no t0_ns: on arrival"
    t0, problem = RunStart("r", t0_ns=0).board_t0(offset_ns=0.0, **kw)   # a forged or a clockless board's t0
    assert t0 == 7.0 and problem.startswith("start: t0_ns is +100.0 s from now") and "chrony" in problem
    t0, problem = RunStart("r", t0_ns=10**6 * s).board_t0(offset_ns=0.0, **kw)  # far in the future
    assert t0 == 7.0 and "from now" in problem


# ------------------------------------------------------------------------------ a real agent


class _Listener:
    """Collects the agent's telemetry and the frames on its data topic, in arrival order."""

    def __init__(self, *, host: str, port: int, tele: str, data: str) -> None:
        self.tele: queue.Queue[dict[str, Any]] = queue.Queue()
        self.frames: queue.Queue[bytes] = queue.Queue()
        self._tele_topic = tele
        self.client = MqttClient(host=host, port=port, client_id="test-listener", on_message=self._on)
        self.client.subscribe(tele, qos=1)
        self.client.subscribe(data, qos=1)

    def _on(self, name: str, payload: bytes) -> None:
        if name == self._tele_topic:
            self.tele.put(json.loads(payload))
        else:
            self.frames.put(payload)

    def next_tele(self, kind: str, seen: list[dict[str, Any]]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = self.tele.get(timeout=left)
            except queue.Empty:
                break
            seen.append(msg)
            if msg["kind"] == kind:
                return msg
        raise AssertionError(f"no {kind!r} telemetry within {WAIT_S} s; saw {seen}")


@pytest.fixture
def process_settings_restored():
    """The agent's main() makes a torch board's process-wide choices (one torch thread, torch's
    float16 casts); run in-process, it must not leave them to the tests after it."""
    torch = pytest.importorskip("torch")
    from nodes import codec
    threads, backend = torch.get_num_threads(), codec.f16_backend()
    yield
    torch.set_num_threads(threads)
    codec.use_f16_backend(backend)


@pytest.mark.slow
def test_wearable_agent_attributes_telemetry_to_each_frame_on_a_reordering_link(
        tmp_path: Path, process_settings_restored: None) -> None:
    torch = pytest.importorskip("torch")
    from testbed.broker import EmbeddedBroker

    n = 16
    with warnings.catch_warnings():  # TorchScript is deprecated upstream; the torch runtime still loads it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(tmp_path / "student_0.pt"))
    np.save(tmp_path / "samples.npy", np.arange(n * 4, dtype=np.float32).reshape(n, 4))
    swap = LinkProfile("swap", 8e6, delay_s=0.2, jitter_s=0.19, reorder=True, seed=5)
    with EmbeddedBroker(workdir=tmp_path / "broker") as broker:
        data_topic = topic("t", "data", "wrist-edge")
        cfg = wearable(bench="t", broker=Broker(host=broker.host, port=broker.port), clock_probes=0,
                       telemetry_hz=1.0, link=WearableLink(name="wrist-edge", profile=swap,
                                                           transport=TransportEnd.of({"type": "mqtt", "topic": data_topic,
                                                                                      "host": broker.host,
                                                                                      "port": broker.port})))
        path = cfg.write(tmp_path / "agent.json")
        listener = _Listener(host=broker.host, port=broker.port, tele=topic("t", "tele", "wrist"), data=data_topic)
        with listener.client:
            ready = threading.Event()
            result: list[int] = []
            thread = threading.Thread(target=lambda: result.append(agent_mod.main(
                ["--config", str(path)], install_signals=False, on_ready=lambda _a: ready.set())))
            thread.start()
            try:
                assert ready.wait(WAIT_S), "the agent never became ready"
                ctl = topic("t", "ctl", "wrist")

                def send(msg: dict[str, Any]) -> None:
                    assert listener.client.publish(ctl, json.dumps(msg), qos=1)

                seen: list[dict[str, Any]] = []
                # malformed commands are reported and the agent keeps serving
                send({"cmd": "start", "run": 5})
                assert listener.next_tele("error", seen)["error"].startswith(
                    "start command: run: expected a non-empty string; got 5")
                send({"cmd": "trigger", "sample": "3"})
                assert "sample: expected an integer" in listener.next_tele("error", seen)["error"]
                send(RunStart("run-1", t0_ns=time.time_ns()).to_message())
                for i in range(n):
                    send({"cmd": "trigger", "sample": i})
                samples = [listener.next_tele("sample", seen) for _ in range(n)]
            finally:
                listener.client.publish(topic("t", "ctl", "wrist"), json.dumps({"cmd": "stop"}), qos=1)
                thread.join(WAIT_S)
            assert result == [0] and not thread.is_alive()
            decoder = Decoder()
            frames = [decoder.decode(listener.frames.get(timeout=WAIT_S)) for _ in range(n)]
    assert all(s["verdict"] == "sent" for s in samples)
    sent_order = [f.sample_id for f in frames if f is not None]
    assert sorted(sent_order) == list(range(n))
    assert sent_order != list(range(n)), "the link must really reorder for this test to mean anything"
    assert [s["sample"] for s in samples] == sent_order, "each delivery's telemetry names its own sample"
    # the start command took: the frames carry its run, and each sample's own values (Identity shard)
    assert all(f.run_id == run_id_hash("run-1") for f in frames if f is not None)
    assert all(np.array_equal(f.array, np.arange(4, dtype=np.float32) + 4 * f.sample_id)
               for f in frames if f is not None)
