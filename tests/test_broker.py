"""The embedded broker: a real mosquitto (or amqtt) on a free loopback port, and the last will."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from nodes.mqtt import MqttClient, topic
from testbed.broker import EmbeddedBroker, free_port, mosquitto_config


def _roundtrip(host: str, port: int) -> list[bytes]:
    got: list[bytes] = []
    done = threading.Event()

    def on_message(_t: str, payload: bytes) -> None:
        got.append(payload)
        done.set()

    with MqttClient(host=host, port=port, client_id="sub", on_message=on_message) as sub:
        sub.subscribe("tb/x/#", qos=1)
        time.sleep(0.2)
        with MqttClient(host=host, port=port, client_id="pub") as pub:
            assert pub.publish("tb/x/y", b"hello", qos=1, wait=5.0)
        done.wait(5.0)
    return got


def test_mosquitto_config_is_loopback_private() -> None:
    conf = mosquitto_config(host="127.0.0.1", port=18830)
    assert "listener 18830 127.0.0.1" in conf and "allow_anonymous true" in conf
    assert "persistence false" in conf and "set_tcp_nodelay true" in conf


@pytest.mark.skipif(not shutil.which("mosquitto") and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto not installed (apt-get install mosquitto)")
def test_mosquitto_starts_on_a_free_port_and_stops(tmp_path: Path) -> None:
    with EmbeddedBroker(workdir=tmp_path) as broker:
        assert broker.kind == "mosquitto" and broker.fallback_reason is None
        assert (tmp_path / "mosquitto.conf").exists()
        assert _roundtrip(broker.host, broker.port) == [b"hello"]
        assert broker.running
    assert not broker.running


def test_amqtt_fallback_says_why(tmp_path: Path) -> None:
    with EmbeddedBroker(workdir=tmp_path, prefer="amqtt") as broker:
        assert broker.kind == "amqtt" and broker.fallback_reason
        assert _roundtrip(broker.host, broker.port) == [b"hello"]


def test_free_port_is_bindable() -> None:
    import socket
    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_last_will_marks_a_killed_client_offline(tmp_path: Path) -> None:
    with EmbeddedBroker(workdir=tmp_path) as broker:
        status = topic("t", "status", "b1")
        script = textwrap.dedent(f"""
            import json, time
            from nodes.mqtt import MqttClient, Will
            c = MqttClient(host={broker.host!r}, port={broker.port}, client_id="b1",
                           will=Will({status!r}, json.dumps({{"state": "offline"}}).encode()))
            c.connect()
            c.publish({status!r}, json.dumps({{"state": "ready"}}), qos=1, retain=True, wait=5)
            print("up", flush=True)
            time.sleep(60)
        """)
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                                cwd=Path(__file__).resolve().parent.parent)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
            states: list[str] = []
            offline = threading.Event()

            def on_message(_t: str, payload: bytes) -> None:
                states.append(json.loads(payload)["state"])
                if states[-1] == "offline":
                    offline.set()

            with MqttClient(host=broker.host, port=broker.port, client_id="watch", on_message=on_message) as w:
                w.subscribe(status, qos=1)
                time.sleep(0.3)
                proc.kill()
                assert offline.wait(10.0), states
            assert states[0] == "ready"  # retained status seen first
        finally:
            proc.kill()
            proc.wait()
