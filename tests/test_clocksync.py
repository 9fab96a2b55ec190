"""Clock offset arithmetic with synthetic clocks, and the exchange over a real broker."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from nodes.clocksync import ClockSample, ClockSyncClient, estimate, reply
from nodes.mqtt import MqttClient
from testbed.broker import EmbeddedBroker


def sample(*, offset: int, up: int, down: int, t1: int = 1_000_000, service: int = 50) -> ClockSample:
    """Orchestrator clock = board clock + offset; one-way delays up/down (ns)."""
    t2 = t1 + up + offset
    t3 = t2 + service
    return ClockSample(t1=t1, t2=t2, t3=t3, t4=t3 - offset + down)


def test_symmetric_path_gives_the_exact_offset() -> None:
    s = sample(offset=5_000_000, up=300, down=300)
    assert s.offset_ns == 5_000_000 and s.delay_ns == 600


def test_asymmetry_error_is_bounded_by_the_uncertainty() -> None:
    s = sample(offset=-2_000_000, up=100, down=900)
    est = estimate([s])
    assert est is not None
    assert abs(est.offset_ns - (-2_000_000)) <= est.uncertainty_ns


def test_min_rtt_filter_picks_the_least_queued_sample() -> None:
    good = sample(offset=7_000, up=100, down=100)
    queued = sample(offset=7_000, up=5_000, down=100)       # a queued request skews the offset
    est = estimate([queued, good, queued])
    assert est is not None and est.offset_ns == 7_000 and est.rtt_ns == 200 and est.samples == 3
    assert estimate([]) is None
    assert estimate([ClockSample(t1=10, t2=0, t3=0, t4=5)]) is None   # negative delay: impossible


def test_reply_ignores_garbage() -> None:
    assert reply(b"not json", received_ns=1) is None
    assert reply(b'{"id": 1}', received_ns=1) is None
    doc = json.loads(reply(b'{"id": 3, "t1": 10}', received_ns=20, now=lambda: 30) or b"")
    assert doc == {"cmd": "time", "id": 3, "t1": 10, "t2": 20, "t3": 30}


def test_exchange_over_a_real_broker(tmp_path: Path) -> None:
    with EmbeddedBroker(workdir=tmp_path) as b:
        def serve(topic_name: str, payload: bytes) -> None:
            import time
            ans = reply(payload, received_ns=time.time_ns())
            if ans is not None:
                server.publish("tb/t/ctl/b1", ans, qos=0)

        with MqttClient(host=b.host, port=b.port, client_id="orch", on_message=serve) as server:
            server.subscribe("tb/t/time/+", qos=0)
            client_box: list[ClockSyncClient] = []

            def on_ctl(_t: str, payload: bytes) -> None:
                import time
                t4 = time.time_ns()
                client_box[0].on_reply(json.loads(payload), t4=t4)

            with MqttClient(host=b.host, port=b.port, client_id="b1", on_message=on_ctl) as board:
                board.subscribe("tb/t/ctl/b1", qos=0)
                threading.Event().wait(0.2)
                client_box.append(ClockSyncClient(lambda p: board.publish("tb/t/time/b1", p, qos=0)))
                est = client_box[0].run(probes=5)
    assert est is not None and est.samples == 5
    # same machine, same clock: the true offset is 0, within the stated uncertainty (+ clock read jitter)
    assert abs(est.offset_ns) <= est.uncertainty_ns + 1e6
    assert est.uncertainty_ns == pytest.approx(est.rtt_ns / 2)
