"""Every transport x every activation encoding x every compression, on real stacks; and an MQTT
broker restart mid-run.

Each transport carries real wire frames between two of our `Transport` ends, and the receiving
end decodes them with `nodes.codec.Decoder` as the edge does:

- ``mqtt``: two `MqttTransport` through a real mosquitto on a free loopback port;
- ``serial``: two `SerialTransport` (pyserial) on the two ends of a socat pty pair;
- ``ble``: a `BleTransport` peripheral and central on bumble's in-process virtual controllers.

One link per transport serves the whole module (set up once, torn down in ``finally``); every
combination sends one frame of a ReLU-like float32 activation (1x16 and 1x512). Waits are
bounded against hangs and never asserted on: no test here measures speed.
"""
from __future__ import annotations

import contextlib
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import numpy as np
import pytest

from nodes.codec import Compression, Decoder, Encoding, Frame, FrameType, encode_frame
from nodes.transport import MqttTransport, Transport
from testbed.broker import EmbeddedBroker, free_port

WAIT_S = 20.0                      # upper bound against hangs, never a speed assertion
RUN_ID = 0xC0FFEE
SHAPES = [(1, 16), (1, 512)]
PERIPHERAL = "F0:00:00:00:00:05"


# ------------------------------------------------------------------------------ links


@dataclass
class Link:
    """A sending and a receiving end of one transport, and what the receiver got."""

    name: str
    tx: Transport
    rx: Transport
    got: queue.Queue[bytes] = field(default_factory=queue.Queue)
    decoder: Decoder = field(default_factory=Decoder)

    def __post_init__(self) -> None:
        self.rx.on_frame(self.got.put)

    def receive(self, *, seq: int) -> Frame:
        """The next decodable frame with sequence number ``seq`` (older ones are skipped)."""
        deadline = time.monotonic() + WAIT_S
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.decoder.decode(self.got.get(timeout=left))
            except queue.Empty:
                break
            if frame is not None and frame.seq == seq:
                return frame
        raise AssertionError(f"{self.name}: frame seq {seq} not received within {WAIT_S} s; "
                             f"decoder {self.decoder.stats.as_dict()}, rx {self.rx.counters.as_dict()}")


@contextlib.contextmanager
def mqtt_link(workdir: Path) -> Iterator[Link]:
    with EmbeddedBroker(workdir=workdir) as broker:
        settings = dict(host=broker.host, port=broker.port, topic="tb/matrix/data/wrist-edge")
        with MqttTransport(receive=True, **settings) as rx, MqttTransport(receive=False, **settings) as tx:
            link = Link("mqtt", tx=tx, rx=rx)
            subscribed(link)
            yield link


def subscribed(link: Link) -> None:
    """Send heartbeats until one arrives: the receiver's SUBSCRIBE has reached the broker."""
    probe = encode_frame(np.empty(0), run_id=RUN_ID, sample_id=0, shard=0, seq=0, send_ts_ns=0,
                         frame_type=FrameType.HEARTBEAT)
    deadline = time.monotonic() + WAIT_S
    while link.rx.counters.frames_received == 0:
        assert time.monotonic() < deadline, f"{link.name}: the receiver never got a heartbeat"
        link.tx.send(probe)
        time.sleep(0.05)


def socat_ptys(workdir: Path) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """Two linked ptys from socat (the harness's own helper, as the demo fabric uses it)."""
    from testbed.fabric import socat_pty_pair
    return socat_pty_pair(workdir, names=("tty-a", "tty-b"))


@contextlib.contextmanager
def serial_link(workdir: Path) -> Iterator[Link]:
    from nodes.serial_transport import SerialTransport

    if shutil.which("socat") is None:
        pytest.skip("socat is not installed: two pyserial ends need a socat pty pair")
    with socat_ptys(workdir) as (a, b), \
            SerialTransport(port=b, baud=921600, receive=True) as rx, \
            SerialTransport(port=a, baud=921600, receive=False) as tx:
        yield Link("serial", tx=tx, rx=rx)


@contextlib.contextmanager
def ble_link(_workdir: Path) -> Iterator[Link]:
    from nodes.ble_transport import BleTransport, VirtualBleLink

    with VirtualBleLink() as vlink:
        tx = BleTransport(receive=False, link=vlink, address=PERIPHERAL)
        rx = BleTransport(receive=True, link=vlink, address=PERIPHERAL)
        with tx, rx:
            assert tx.wait_connected(WAIT_S) and rx.wait_connected(WAIT_S), rx.counters.last_error
            yield Link("ble", tx=tx, rx=rx)


LINKS: dict[str, Callable[[Path], contextlib.AbstractContextManager[Link]]] = {
    "mqtt": mqtt_link, "serial": serial_link, "ble": ble_link}


@pytest.fixture(scope="module", params=sorted(LINKS))
def link(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Link]:
    with LINKS[request.param](tmp_path_factory.mktemp(request.param)) as lk:
        yield lk


# ------------------------------------------------------------------------------ the matrix

_seqs = count(1)


def activation(shape: tuple[int, ...], *, seed: int) -> np.ndarray:
    """A ReLU-like activation: about half zeros, the rest positive with a long tail."""
    rng = np.random.default_rng(seed)
    return np.maximum(rng.standard_normal(shape) * 2.0, 0.0).astype(np.float32)


def assert_within_tolerance(encoding: Encoding, got: np.ndarray, sent: np.ndarray) -> None:
    if encoding is Encoding.F32:
        np.testing.assert_array_equal(got, sent)
    elif encoding is Encoding.F16:
        np.testing.assert_allclose(got, sent, rtol=2 ** -11, atol=2 ** -24)
    else:   # per-tensor affine int8 over [min(x, 0), max(x, 0)]: half a step
        step = (max(float(sent.max()), 0.0) - min(float(sent.min()), 0.0)) / 255.0
        assert float(np.abs(got - sent).max()) <= step / 2 * (1 + 1e-5) + 1e-6 * float(sent.max())
        np.testing.assert_array_equal(got[sent == 0.0], 0.0)   # zero stays exact


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.name.lower())
@pytest.mark.parametrize("encoding", list(Encoding), ids=lambda e: e.name.lower())
def test_round_trip(link: Link, encoding: Encoding, compression: Compression,
                    shape: tuple[int, ...]) -> None:
    seq = next(_seqs)
    sent = activation(shape, seed=seq)
    ids = dict(run_id=RUN_ID, sample_id=1000 + seq, shard=seq % 7, seq=seq, send_ts_ns=time.time_ns())
    wire = encode_frame(sent, encoding=encoding, compression=compression, **ids)
    assert link.tx.send(wire), f"{link.name}: send refused"
    frame = link.receive(seq=seq)
    assert (frame.run_id, frame.sample_id, frame.shard, frame.seq, frame.send_ts_ns) == tuple(ids.values())
    assert (frame.encoding, frame.compression) == (encoding, compression)
    assert frame.wire_bytes == len(wire) and frame.array.shape == shape
    assert_within_tolerance(encoding, frame.array, sent)
    assert link.decoder.stats.total_dropped == 0


# ------------------------------------------------------------------------------ broker restart


class SteadySender:
    """Publishes one numbered frame every ``period_s`` in a thread, recording what ``send`` said."""

    def __init__(self, tx: Transport, *, period_s: float) -> None:
        self.tx, self.period_s = tx, period_s
        self.accepted: list[int] = []      # seqs send() returned True for
        self.refused: list[int] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-sender", daemon=True)
        self.seq = 0

    def _run(self) -> None:
        x = activation((1, 64), seed=0)
        try:
            while not self._stop.wait(self.period_s):
                self.seq += 1
                wire = encode_frame(x, run_id=RUN_ID, sample_id=self.seq, shard=0, seq=self.seq,
                                    send_ts_ns=time.time_ns(), encoding=Encoding.INT8_AFFINE)
                (self.accepted if self.tx.send(wire) else self.refused).append(self.seq)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def __enter__(self) -> SteadySender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)


class Received:
    """Decodes what the receiving end delivers, keeping the seqs; never raises in its thread."""

    def __init__(self) -> None:
        self.decoder = Decoder()
        self.seqs: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, wire: bytes) -> None:
        frame = self.decoder.decode(wire)
        if frame is not None:
            with self._lock:
                self.seqs.append(frame.seq)

    def after(self, seq: int) -> list[int]:
        with self._lock:
            return [s for s in self.seqs if s > seq]


def wait_until(cond: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.02)


def test_mqtt_broker_restart_mid_run(tmp_path: Path) -> None:
    """Frames sent while the broker is down are lost and counted; both ends reconnect by
    themselves (the receiver re-subscribes) and frames after the restart arrive."""
    port = free_port()
    got = Received()
    first = EmbeddedBroker(workdir=tmp_path / "broker-1", port=port).start()
    second: EmbeddedBroker | None = None
    try:
        settings = dict(host="127.0.0.1", port=port, topic="tb/matrix/data/chest-edge")
        with MqttTransport(receive=True, **settings) as rx, MqttTransport(receive=False, **settings) as tx:
            rx.on_frame(got)
            with SteadySender(tx, period_s=0.02) as sender:
                wait_until(lambda: len(got.seqs) >= 10, "frames before the restart")
                first.stop()
                down_from = sender.seq
                wait_until(lambda: sender.seq >= down_from + 25, "frames sent while the broker is down")
                second = EmbeddedBroker(workdir=tmp_path / "broker-2", port=port).start()
                up_from = sender.seq
                wait_until(lambda: len(got.after(up_from)) >= 10, "frames after the restart")
            time.sleep(0.3)          # let frames already on loopback land before counting
            sent_total = sender.seq
            assert not sender.errors, sender.errors
            assert rx.counters.frames_received == len(got.seqs)
            # every attempt is accounted for: accepted by the client or a counted send failure
            assert len(sender.accepted) + len(sender.refused) == sent_total
            assert tx.counters.frames_sent == len(sender.accepted)
            assert tx.counters.send_failures == len(sender.refused)
            # frames in flight or sent during the outage are lost, not delivered late or twice
            received = set(got.seqs)
            assert len(received) == len(got.seqs), "a frame arrived twice"
            outage = set(range(down_from + 1, up_from + 1))
            assert outage - received, "every frame sent while the broker was down arrived"
            lost = sent_total - len(received)
            assert lost >= len(outage - received) > 0
            assert lost == tx.counters.send_failures + tx.counters.frames_sent - rx.counters.frames_received
            assert got.decoder.stats.total_dropped == 0
            assert received <= set(sender.accepted)
            assert max(received) > up_from
    finally:
        first.stop()
        if second is not None:
            second.stop()
