"""nodes.energy.board: a board's meter as its agent uses it, and its batches surviving a lost broker."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from nodes.agentconfig import EnergyConfig
from nodes.energy import MeterError
from nodes.energy.board import BUS_ENV, BoardEnergy
from nodes.energy.settings import check_meter_settings
from nodes.mqtt import MqttClient
from testbed.broker import EmbeddedBroker


def _model(rate_hz: float = 200.0) -> EnergyConfig:
    return EnergyConfig(meter="model", settings=check_meter_settings("model", {"rate_hz": rate_hz}), kind="rpi4")


def _until(condition, timeout: float = 20.0) -> bool:
    """Wait for a condition another thread makes true (paho's connection state has no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_batches_carry_every_reading_once_with_the_meter_and_the_baseline() -> None:
    with BoardEnergy(_model()) as energy:
        assert energy.sampler is not None and energy.sampler.wait_for(10, timeout=30)
        energy.ready_at()
        assert energy.sampler.wait_for(energy.sampler.samples + 5, timeout=30)
        energy.begin()
        a = energy.mark()
        sum(range(200_000))                # a little CPU: the compute window
        b = energy.mark()
        energy.add(0, compute=(a, b), payload={"sample": 0})
        ((e, payload),) = energy.ready()    # the model is a counter meter: ready at once
        first = energy.batch()
        second = energy.batch()
    assert payload == {"sample": 0} and e is not None and e.method == "counter" and e.compute_mj > 0
    assert energy.baseline.idle_w == pytest.approx(2.7, abs=0.5)   # rpi4 idle, plus this process's own threads
    assert first is not None and first["meter"]["meter"] == "model" and first["meter"]["modelled"] is True
    assert first["idle_w"] == energy.baseline.idle_w and len(first["rows"]) >= 15
    assert second is None or second["rows"][0][0] > first["rows"][-1][0]   # nothing sent twice


def test_an_ina_bus_that_cannot_be_built_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUS_ENV, "no_such_module:bus")
    cfg = EnergyConfig(meter="ina260", settings=check_meter_settings("ina260", {}), kind="rpi4")
    with pytest.raises(MeterError, match="HBC_TESTBED_METER_BUS='no_such_module:bus'"):
        BoardEnergy(cfg).__enter__()


def test_batches_published_while_the_broker_is_down_arrive_after_it_returns(tmp_path: Path) -> None:
    """A board keeps its readings when its link to the laptop drops: the control client queues
    QoS 1 messages while disconnected and sends them once the broker is back."""
    broker = EmbeddedBroker(workdir=tmp_path / "b1").start()
    port = broker.port
    sent: list[list] = []
    with BoardEnergy(_model()) as energy, MqttClient(host=broker.host, port=port, client_id="agent-w") as pub:
        broker.stop()
        assert _until(lambda: not pub.connected)
        for _ in range(3):                  # three telemetry periods with no broker
            assert energy.sampler is not None and energy.sampler.wait_for(energy.sampler.samples + 5, timeout=30)
            batch = energy.batch()
            assert batch is not None
            sent.append([list(r) for r in batch["rows"]])
            pub.publish("tb/t/tele/w", json.dumps({"kind": "power", **batch}), qos=1)
        got: list[list] = []
        done = threading.Event()

        def on_message(_topic: str, payload: bytes) -> None:
            got.append(json.loads(payload)["rows"])
            if len(got) == len(sent):
                done.set()

        back = EmbeddedBroker(workdir=tmp_path / "b2", port=port).start()
        try:   # the subscriber is in before the agent's client reconnects (its delay is at least 1 s)
            with MqttClient(host=back.host, port=port, client_id="laptop", on_message=on_message) as sub:
                sub.subscribe("tb/t/tele/+", qos=1)
                assert done.wait(30.0), f"{len(got)} of {len(sent)} batches arrived"
        finally:
            back.stop()
    assert got == sent


def test_a_start_right_after_ready_still_has_an_idle_baseline() -> None:
    """ready_at waits for a couple of readings, so a start that comes at once (the last board to
    say ready on a loaded machine) still finds an idle window to measure."""
    with BoardEnergy(_model(rate_hz=20.0)) as energy:
        energy.ready_at()
        energy.begin()                       # no wait between ready and start
        a = energy.mark()
        energy.add(0, compute=(a, energy.mark()), payload=0)
        energy.ready()
    assert energy.baseline.idle_w is not None and energy.baseline.idle_w > 2.0
