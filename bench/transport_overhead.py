"""Bench: what our transports add over the raw stacks they sit on, and what the codec costs.

For each transport (mqtt, serial, ble) and wire-frame size (256 B, 4 KiB, 64 KiB), with no link
shaping, it measures our `Transport` pair beside a raw baseline on the same stack in the same
run, and reports ``throughput_ratio`` (ours / raw) and ``added_latency_ms_p50`` (p50 of our
per-frame latency minus p50 of the raw one):

- mqtt: `MqttTransport` -> `MqttTransport` vs. raw paho publish -> on_message (QoS 0, the same
  mosquitto, TCP_NODELAY on both as our client sets it, separate topics);
- serial: `SerialTransport` -> `SerialTransport` (pyserial, COBS, reader thread) vs. raw
  ``os.write`` -> ``os.read`` of the same bytes on the same socat pty pair (no COBS, no pyserial);
- ble: `BleTransport` peripheral -> central (fragment headers, reassembly, a drain per frame)
  vs. raw bumble GATT notifications of the same bytes cut to ATT_MTU - 3 (no fragment header,
  no reassembly), both on bumble's in-process virtual controllers with ATT_MTU 247.

What is timed is transport only: the frames are encoded before and checked after (ours must
arrive byte-identical). Both sides are driven the same way: the caller's thread sends one
frame at a time through the blocking API; arrival is stamped in the receiver's callback with
the same monotonic clock. Latency: one frame in flight at a time. Throughput: a burst of
back-to-back frames, first send to last arrival; best of the rounds (raw and ours interleaved)
so that load from other processes on a shared machine penalises neither side more.

Serial rows also carry ``cobs_bound_ratio``: the MB/s that COBS encode + stream-decode alone
allow in this process (both ends share one GIL), over the raw MB/s: no COBS transport in one
process can beat it. And ``aa_ratio``: the raw pty measured a second time in each round, over
the first (an A/A test): how far two runs of the *same* code differ here, so the noise band
that ``throughput_ratio`` must be read against (a pty pair through socat, on shared cores).

Codec cost: ``encode_frame`` + ``decode_frame`` of a 100 KB activation (25,000 ReLU-like
float32 values: VGG16's pool5 is 25,088) for f32/f16/int8 x none/zstd/lz4, each beside its
floor measured in the same run (CRC32 of the wire frame on both ends with stdlib zlib, plus
the bare zstd/lz4 calls for compressed rows) and ``ratio_to_floor``.

Targets (issue 5): throughput_ratio >= 0.9, codec cost <= 50 us per 100 KB frame.
``--quick`` finishes in well under a minute; ``--json`` prints ``{"rows": [...], "codec": [...]}``
as the last line of stdout. This script measures; it asserts nothing and changes nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import tty
import zlib
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from nodes.codec import (F16_BACKENDS, HEADER_SIZE, TRAILER_SIZE, Compression, Encoding,  # noqa: E402
                         decode_frame, encode_frame, f16_backend, use_f16_backend)
from nodes.transport import MqttTransport, Transport  # noqa: E402
from testbed.broker import EmbeddedBroker  # noqa: E402

SIZES = (256, 4096, 65536)
TRANSPORTS = ("mqtt", "serial", "ble")
THROUGHPUT_TARGET = 0.9
CODEC_TARGET_US = 50.0
WAIT_S = 30.0
BLE_MTU = 247
RAW_SVC = "7a4e00f1-3c1b-4f5e-9d2a-6b8c1e0f5a73"
RAW_CHR = "7a4e00f2-3c1b-4f5e-9d2a-6b8c1e0f5a73"


@dataclass(frozen=True)
class Plan:
    rounds: int              # interleaved raw/ours rounds; throughput is the best round
    latency_frames: int      # per round
    burst_bytes: int         # per throughput round (at least MIN_BURST frames)
    ble_burst_bytes: int
    codec_reps: int


QUICK = Plan(rounds=1, latency_frames=15, burst_bytes=1 << 20, ble_burst_bytes=192 << 10, codec_reps=30)
FULL = Plan(rounds=3, latency_frames=60, burst_bytes=4 << 20, ble_burst_bytes=1 << 20, codec_reps=200)
MIN_BURST = 8


# ------------------------------------------------------------------------------ arrivals


class Arrivals:
    """Arrival stamps, appended from a receiver's thread, awaited from the caller's."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._cond = threading.Condition()

    def stamp(self) -> None:
        now = time.perf_counter()
        with self._cond:
            self.times.append(now)
            self._cond.notify_all()

    def __len__(self) -> int:
        return len(self.times)

    def wait(self, n: int, *, idle_s: float = 2.0) -> bool:
        """Until ``n`` stamps, or ``idle_s`` with none new (a lost frame); True if all came."""
        with self._cond:
            while len(self.times) < n:
                have = len(self.times)
                self._cond.wait_for(lambda: len(self.times) > have, timeout=idle_s)
                if len(self.times) == have:
                    return False
            return True


class ByteCounter:
    """For raw byte streams: one stamp each time ``frame_bytes`` more bytes have arrived."""

    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals, self.frame_bytes, self._have = arrivals, 1, 0

    def expect(self, frame_bytes: int) -> None:
        self.frame_bytes, self._have = frame_bytes, 0

    def feed(self, n: int) -> None:
        self._have += n
        while self._have >= self.frame_bytes:
            self._have -= self.frame_bytes
            self.arrivals.stamp()


@dataclass
class Pair:
    """One side of a comparison: ``send`` blocks as the API does; arrivals are stamped."""

    name: str
    send: Callable[[bytes], object]
    arrivals: Arrivals
    expect: Callable[[int], None] = lambda _n: None
    check: Callable[[], dict[str, Any]] = dict


# ------------------------------------------------------------------------------ mqtt


@contextlib.contextmanager
def mqtt_pairs(workdir: Path) -> Iterator[tuple[Pair, Pair]]:
    import paho.mqtt.client as mqtt

    with EmbeddedBroker(workdir=workdir / "broker") as broker, contextlib.ExitStack() as stack:
        raw_arr = Arrivals()

        def raw_client(cid: str) -> Any:
            c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv311)
            c.on_socket_open = lambda _c, _u, s: s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            up = threading.Event()
            c.on_connect = lambda *_a: up.set()
            c.connect(broker.host, broker.port)
            c.loop_start()
            stack.callback(c.loop_stop)
            stack.callback(c.disconnect)
            if not up.wait(10):
                raise RuntimeError("raw paho client did not connect")
            return c

        sub = raw_client("raw-sub")
        subscribed = threading.Event()
        sub.on_subscribe = lambda *_a: subscribed.set()
        sub.on_message = lambda _c, _u, _m: raw_arr.stamp()
        sub.subscribe("bench/raw", qos=0)
        subscribed.wait(10)
        pub = raw_client("raw-pub")
        raw = Pair("raw paho", lambda f: pub.publish("bench/raw", f, qos=0), raw_arr)

        ours_arr, bad = Arrivals(), []
        settings = dict(host=broker.host, port=broker.port, topic="tb/bench/data/overhead")
        rx = stack.enter_context(MqttTransport(receive=True, **settings))
        tx = stack.enter_context(MqttTransport(receive=False, **settings))
        ours = _ours_pair("MqttTransport", tx, rx, ours_arr, bad)
        _prime(raw), _prime(ours)
        yield raw, ours


def _ours_pair(name: str, tx: Transport, rx: Transport, arrivals: Arrivals, bad: list[int]) -> Pair:
    """Our end pair; every delivered frame must be the one sent (checked after the clock stops)."""
    sent: dict[str, bytes] = {}

    def on_frame(frame: bytes) -> None:
        arrivals.stamp()
        if frame != sent.get("frame"):
            bad.append(len(frame))

    def send(frame: bytes) -> bool:
        sent["frame"] = frame
        return tx.send(frame)

    rx.on_frame(on_frame)
    return Pair(name, send, arrivals, check=lambda: {"corrupt": len(bad), "send_failures": tx.counters.send_failures})


def _prime(pair: Pair) -> None:
    """One frame end to end, so subscriptions/connections are live before any clock starts."""
    frame = wire_frame(256)
    for _ in range(100):
        k = len(pair.arrivals)
        pair.expect(len(frame))
        pair.send(frame)
        if pair.arrivals.wait(k + 1, idle_s=0.2):
            return
    raise RuntimeError(f"{pair.name}: nothing arrived while priming")


# ------------------------------------------------------------------------------ serial


def socat_ptys(workdir: Path) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """Two linked ptys from socat: the harness's own helper, as the demo fabric uses it."""
    from testbed.fabric import socat_pty_pair
    return socat_pty_pair(workdir, names=("tty-a", "tty-b"))


class RawPtyReader:
    """A thread doing plain os.read on a pty end, counting bytes into frames."""

    def __init__(self, fd: int, counter: ByteCounter) -> None:
        self.fd, self.counter = fd, counter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raw-pty-rx", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if select.select([self.fd], [], [], 0.05)[0]:
                self.counter.feed(len(os.read(self.fd, 1 << 16)))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _raw_write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextlib.contextmanager
def _raw_fd(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        yield fd
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------ ble


@contextlib.contextmanager
def ble_pairs(_workdir: Path) -> Iterator[tuple[Pair, Pair]]:
    from nodes.ble_transport import BleTransport, VirtualBleLink

    with VirtualBleLink(name="bench-ble-raw") as raw_link, VirtualBleLink(name="bench-ble-ours") as link:
        raw_arr = Arrivals()
        counter = ByteCounter(raw_arr)
        notify, teardown = raw_link.run(_raw_ble_setup(raw_link, counter))
        raw = Pair("raw bumble notify", lambda f: raw_link.run(notify(f)), raw_arr, counter.expect)
        try:
            tx = BleTransport(receive=False, link=link, address="F0:00:00:00:00:21", mtu=BLE_MTU)
            rx = BleTransport(receive=True, link=link, address="F0:00:00:00:00:21", mtu=BLE_MTU)
            with tx, rx:
                if not (tx.wait_connected(WAIT_S) and rx.wait_connected(WAIT_S)):
                    raise RuntimeError(f"ble link did not come up: {rx.counters.last_error}")
                ours = _ours_pair("BleTransport", tx, rx, Arrivals(), [])
                _prime(raw), _prime(ours)
                yield raw, ours
        finally:
            raw_link.run(teardown())


async def _raw_ble_setup(vlink: Any, counter: ByteCounter) -> tuple[Callable[[bytes], Any], Callable[[], Any]]:
    """A bare bumble peripheral/central pair with one notify characteristic, MTU exchanged."""
    from bumble.controller import Controller
    from bumble.device import Device, Peer
    from bumble.gatt import Characteristic, Service
    from bumble.hci import Address
    from bumble.host import Host
    from bumble.transport.common import AsyncPipeSink

    def device(name: str, address: str) -> Any:
        ctrl = Controller(name, link=vlink.local_link)
        return Device(name=name, address=Address(address), host=Host(ctrl, AsyncPipeSink(ctrl)))

    per, cen = device("raw-p", "F0:00:00:00:00:31"), device("raw-c", "F0:00:00:00:00:32")
    char = Characteristic(RAW_CHR, Characteristic.Properties.NOTIFY, Characteristic.Permissions.READABLE, b"")
    per.add_service(Service(RAW_SVC, [char]))
    per.gatt_server.max_mtu = BLE_MTU
    await per.power_on()
    await cen.power_on()
    await per.start_advertising(auto_restart=False)
    conn = await cen.connect(Address("F0:00:00:00:00:31"), timeout=WAIT_S)
    peer = Peer(conn)
    await peer.request_mtu(BLE_MTU)
    await peer.discover_services()
    await peer.discover_characteristics()
    proxy = peer.get_characteristics_by_uuid(char.uuid)[0]
    await peer.subscribe(proxy, lambda value: counter.feed(len(value)), prefer_notify=True)
    per_conn = next(iter(per.connections.values()))
    chunk = per_conn.att_mtu - 3

    async def notify(frame: bytes) -> None:
        for i in range(0, len(frame), chunk):
            await per.notify_subscriber(per_conn, char, frame[i:i + chunk], force=True)

    async def teardown() -> None:
        with contextlib.suppress(Exception):
            await conn.disconnect()
        for d in (cen, per):
            with contextlib.suppress(Exception):
                await d.power_off()

    return notify, teardown


# ------------------------------------------------------------------------------ measuring


def wire_frame(nbytes: int) -> bytes:
    """A real wire frame of exactly ``nbytes``: a ReLU-like activation in f16."""
    n = (nbytes - HEADER_SIZE - TRAILER_SIZE) // 2
    x = np.maximum(np.random.default_rng(nbytes).standard_normal(n), 0).astype(np.float32)
    frame = encode_frame(x, run_id=1, sample_id=0, shard=0, seq=0, send_ts_ns=0, encoding=Encoding.F16)
    assert len(frame) == nbytes, (len(frame), nbytes)
    return frame


def measure_latency(pair: Pair, frame: bytes, n: int) -> list[float]:
    """Seconds from send to arrival, one frame in flight at a time."""
    out = []
    pair.expect(len(frame))
    for _ in range(n):
        k = len(pair.arrivals)
        t0 = time.perf_counter()
        pair.send(frame)
        if pair.arrivals.wait(k + 1):
            out.append(pair.arrivals.times[k] - t0)
    return out


def measure_throughput(pair: Pair, frame: bytes, count: int) -> tuple[float, int]:
    """Bytes per second of a back-to-back burst of ``count`` frames; and how many arrived."""
    pair.expect(len(frame))
    k = len(pair.arrivals)
    t0 = time.perf_counter()
    for _ in range(count):
        pair.send(frame)
    pair.arrivals.wait(k + count)
    got = len(pair.arrivals) - k
    if got == 0:
        return 0.0, 0
    return got * len(frame) / (pair.arrivals.times[k + got - 1] - t0), got


@dataclass
class Side:
    latencies: list[float]
    throughputs: list[float]
    sent: int = 0
    received: int = 0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1e3 if self.latencies else float("nan")

    @property
    def best_mb_s(self) -> float:
        return max(self.throughputs, default=0.0) / 1e6


def run_side(pair: Pair, frame: bytes, *, plan: Plan, burst: int, side: Side) -> None:
    side.latencies += measure_latency(pair, frame, plan.latency_frames)
    bps, got = measure_throughput(pair, frame, burst)
    side.throughputs.append(bps)
    side.sent += burst
    side.received += got


PAIRS: dict[str, Callable[[Path], contextlib.AbstractContextManager[tuple[Pair, Pair]]]] = {
    "mqtt": mqtt_pairs, "ble": ble_pairs}     # serial: see bench_serial


def bench_transport(name: str, *, plan: Plan, workdir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    if name == "serial":
        return bench_serial(plan=plan, workdir=workdir, log=log)
    rows = []
    with PAIRS[name](workdir) as (raw, ours):
        for size in SIZES:
            frame = wire_frame(size)
            budget = plan.ble_burst_bytes if name == "ble" else plan.burst_bytes
            burst = max(MIN_BURST, budget // size)
            r, o = Side([], []), Side([], [])
            for _ in range(plan.rounds):
                run_side(raw, frame, plan=plan, burst=burst, side=r)
                run_side(ours, frame, plan=plan, burst=burst, side=o)
            rows.append(make_row(name, size, raw.name, r, o, ours.check()))
            log(fmt_row(rows[-1]))
    return rows


def bench_serial(*, plan: Plan, workdir: Path, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Serial: one socat pair per round; raw and ours take turns on it (pyserial opens it
    exclusively, so the two cannot be open at once)."""
    from nodes.serial_transport import SerialTransport

    if shutil.which("socat") is None:
        raise RuntimeError("socat is not installed (apt-get install socat)")
    sides = {size: (Side([], []), Side([], [])) for size in SIZES}
    again = {size: Side([], []) for size in SIZES}   # the raw pty a second time: A/A noise
    checks: dict[str, Any] = {"corrupt": 0, "send_failures": 0}
    with socat_ptys(workdir) as (a, b):
        for _ in range(plan.rounds):
            _raw_pty_round(a, b, plan=plan, into={size: sides[size][0] for size in SIZES})
            _raw_pty_round(a, b, plan=plan, into=again)
            with SerialTransport(port=b, baud=921600, receive=True) as rx, \
                    SerialTransport(port=a, baud=921600, receive=False) as tx:
                ours = _ours_pair("SerialTransport", tx, rx, Arrivals(), [])
                _prime(ours)
                for size in SIZES:
                    run_side(ours, wire_frame(size), plan=plan, burst=max(MIN_BURST, plan.burst_bytes // size),
                             side=sides[size][1])
                for k, v in ours.check().items():
                    checks[k] += v
    rows = []
    for size in SIZES:
        rows.append(make_row("serial", size, "raw pty", *sides[size], checks))
        rows[-1]["aa_ratio"] = round(again[size].best_mb_s / sides[size][0].best_mb_s, 3)
        rows[-1].update(cobs_bound(size, rows[-1]["raw_mb_s"], reps=max(5, plan.codec_reps // 4)))
        log(fmt_row(rows[-1]) + f"  [COBS enc+dec {rows[-1]['cobs_us_per_frame']:.1f} us/frame: "
            f"<= {rows[-1]['cobs_bound_ratio']:.2f}x raw; raw pty again / raw pty (A/A) "
            f"{rows[-1]['aa_ratio']:.2f}]")
    return rows


def _raw_pty_round(a: str, b: str, *, plan: Plan, into: dict[int, Side]) -> None:
    """One raw round on the pty pair: plain os.write on ``a``, os.read on ``b``, every size."""
    raw_arr = Arrivals()
    counter = ByteCounter(raw_arr)
    with _raw_fd(a) as wfd, _raw_fd(b) as rfd:
        reader = RawPtyReader(rfd, counter)
        try:
            raw = Pair("raw pty", lambda f, fd=wfd: _raw_write(fd, f), raw_arr, counter.expect)
            _prime(raw)
            for size in SIZES:
                run_side(raw, wire_frame(size), plan=plan, burst=max(MIN_BURST, plan.burst_bytes // size),
                         side=into[size])
        finally:
            reader.close()


def cobs_bound(size: int, raw_mb_s: float, *, reps: int) -> dict[str, Any]:
    """What COBS alone allows: encoding and stream-decoding one frame, in this process (the GIL
    serialises sender and receiver threads), bounds our MB/s at size / (encode + decode)."""
    from nodes import cobs

    frame = wire_frame(size)
    wire = cobs.encode_delimited(frame)
    dec = cobs.CobsStreamDecoder()
    dec.feed(b"\x00")
    us = _best_us(lambda: cobs.encode_delimited(frame), reps) + _best_us(lambda: dec.feed(wire), reps)
    bound = size / us if us else float("inf")   # bytes per us = MB/s
    return {"cobs_us_per_frame": round(us, 1), "cobs_bound_mb_s": round(bound, 2),
            "cobs_bound_ratio": round(bound / raw_mb_s, 3) if raw_mb_s else float("nan")}


def make_row(transport: str, size: int, baseline: str, raw: Side, ours: Side,
             checks: dict[str, Any]) -> dict[str, Any]:
    ratio = ours.best_mb_s / raw.best_mb_s if raw.best_mb_s else float("nan")
    return {
        "transport": transport, "frame_bytes": size, "baseline": baseline,
        "throughput_ratio": round(ratio, 3),
        "added_latency_ms_p50": round(ours.p50_ms - raw.p50_ms, 3),
        "raw_mb_s": round(raw.best_mb_s, 2), "ours_mb_s": round(ours.best_mb_s, 2),
        "raw_latency_ms_p50": round(raw.p50_ms, 3), "ours_latency_ms_p50": round(ours.p50_ms, 3),
        "raw_frames_lost": raw.sent - raw.received, "ours_frames_lost": ours.sent - ours.received,
        "frames_per_burst": raw.sent // max(1, len(raw.throughputs)),
        "meets_throughput_target": bool(ratio >= THROUGHPUT_TARGET), **checks,
    }


def fmt_row(r: dict[str, Any]) -> str:
    return (f"{r['transport']:6s} {r['frame_bytes']:6d} B  ratio {r['throughput_ratio']:5.2f}  "
            f"raw {r['raw_mb_s']:8.2f} MB/s ours {r['ours_mb_s']:8.2f} MB/s  "
            f"p50 raw {r['raw_latency_ms_p50']:7.3f} ms ours {r['ours_latency_ms_p50']:7.3f} ms  "
            f"(+{r['added_latency_ms_p50']:.3f})")


# ------------------------------------------------------------------------------ codec cost


def _best_us(fn: Callable[[], object], reps: int, *, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best * 1e6


def codec_costs(*, reps: int, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """encode_frame + decode_frame per encoding x compression, each beside the floor that any
    implementation of this frame format pays on this machine, measured in the same run:
    CRC32 (stdlib zlib) of the wire frame on both ends, plus for compressed rows the bare
    library compress + decompress of the same encoded payload. f16 rows also show numpy's own
    float32 <-> float16 casts, which ours replace."""
    x = np.maximum(np.random.default_rng(0).standard_normal(25_000), 0).astype(np.float32)
    ids = dict(run_id=1, sample_id=2, shard=3, seq=4, send_ts_ns=5)
    rows = []
    raw = x.tobytes()
    crc_us = _best_us(lambda: zlib.crc32(raw), reps)
    memcpy_us = _best_us(lambda: x.tobytes(), reps)
    h = x.astype(np.float16)
    cast_us = _best_us(lambda: x.astype(np.float16), reps) + _best_us(lambda: h.astype(np.float32), reps)
    for enc in Encoding:
        plain = encode_frame(x, encoding=enc, **ids)
        payload = plain[HEADER_SIZE:-TRAILER_SIZE]
        for comp in Compression:
            for backend in _f16_backends() if enc is Encoding.F16 else (None,):
                with _f16_backend(backend):
                    buf = encode_frame(x, encoding=enc, compression=comp, **ids)
                    decode_frame(buf)
                    e = _best_us(lambda: encode_frame(x, encoding=enc, compression=comp, **ids), reps)
                    d = _best_us(lambda: decode_frame(buf), reps)
                wire_crc = _best_us(lambda: zlib.crc32(buf), reps)
                lib = _library_us(comp, payload, reps)
                floor = 2 * wire_crc + lib
                rows.append({"encoding": enc.name.lower(), "compression": comp.name.lower(),
                             **({"f16_backend": backend, "numpy_f16_casts_us": round(cast_us, 1)}
                                if backend else {}),
                             "values": x.size, "raw_f32_bytes": x.nbytes, "wire_bytes": len(buf),
                             "encode_us": round(e, 1), "decode_us": round(d, 1), "total_us": round(e + d, 1),
                             "crc_floor_us": round(2 * wire_crc, 1), "library_us": round(lib, 1),
                             "floor_us": round(floor, 1), "ratio_to_floor": round((e + d) / floor, 2),
                             "overhead_us": round(e + d - floor, 1),
                             "meets_target": e + d <= CODEC_TARGET_US})
                log(f"codec {enc.name:12s} {comp.name:5s} {backend or '':5s} wire {len(buf):7d} B  "
                    f"encode {e:8.1f} us  decode {d:8.1f} us  total {e + d:8.1f} us  floor {floor:7.1f} us "
                    f"(crc x2 {2 * wire_crc:.1f} + library {lib:.1f})  ours over floor {e + d - floor:6.1f} us")
    log(f"codec crc32 (stdlib zlib) of 100 KB: {crc_us:.1f} us, paid once on encode and once on decode; "
        f"memcpy of 100 KB: {memcpy_us:.1f} us; numpy f32->f16 + f16->f32 casts of 25,000 values: {cast_us:.1f} us")
    rows.append({"encoding": "crc32-only", "compression": "none", "values": x.size,
                 "raw_f32_bytes": x.nbytes, "wire_bytes": x.nbytes, "encode_us": round(crc_us, 1),
                 "decode_us": round(crc_us, 1), "total_us": round(2 * crc_us, 1),
                 "memcpy_us": round(memcpy_us, 1), "numpy_f16_casts_us": round(cast_us, 1),
                 "meets_target": 2 * crc_us <= CODEC_TARGET_US})
    return rows


def _f16_backends() -> tuple[str, ...]:
    """float16 conversions to measure: numpy's paths always; torch's casts where torch is installed
    (a process that has torch chooses them with nodes.codec.use_f16_backend)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ("numpy",)
    return F16_BACKENDS


@contextlib.contextmanager
def _f16_backend(backend: str | None) -> Iterator[None]:
    """Choose the codec's float16 conversion for a measurement, then restore the one in use
    before (None: leave it as it is)."""
    if backend is None:
        yield
        return
    before = f16_backend()
    use_f16_backend(backend)
    try:
        yield
    finally:
        use_f16_backend(before)


def _library_us(comp: Compression, payload: bytes, reps: int) -> float:
    """Bare compress + decompress of ``payload`` with the codec's own settings (0 for none)."""
    if comp is Compression.NONE:
        return 0.0
    if comp is Compression.ZSTD:
        import zstandard
        cctx = zstandard.ZstdCompressor(level=1, write_content_size=True, write_checksum=False,
                                        write_dict_id=False)
        dctx = zstandard.ZstdDecompressor()
        packed = cctx.compress(payload)
        return _best_us(lambda: cctx.compress(payload), reps) + _best_us(lambda: dctx.decompress(packed), reps)
    import lz4.block
    packed = lz4.block.compress(payload, mode="default", store_size=False)
    return (_best_us(lambda: lz4.block.compress(payload, mode="default", store_size=False), reps)
            + _best_us(lambda: lz4.block.decompress(packed, uncompressed_size=len(payload)), reps))


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames and one round (< 60 s)")
    ap.add_argument("--json", action="store_true", help="last line of stdout: {\"rows\": [...], \"codec\": [...]}")
    ap.add_argument("--transports", default=",".join(TRANSPORTS), help="comma-separated subset")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    names = [t for t in args.transports.split(",") if t]
    unknown = sorted(set(names) - set(TRANSPORTS))
    if unknown:
        ap.error(f"unknown transport(s) {unknown}; expected some of {', '.join(TRANSPORTS)}")
    out = sys.stderr if args.json else sys.stdout

    def log(line: str) -> None:
        print(line, file=out, flush=True)

    t0 = time.monotonic()
    log(f"plan: {asdict(plan)}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-transport-") as tmp:
        for name in names:
            workdir = Path(tmp) / name
            workdir.mkdir()
            rows += bench_transport(name, plan=plan, workdir=workdir, log=log)
    codec = codec_costs(reps=plan.codec_reps, log=log)
    log(f"done in {time.monotonic() - t0:.1f} s")
    if args.json:
        print(json.dumps({"rows": rows, "codec": codec, "plan": asdict(plan),
                          "wall_s": round(time.monotonic() - t0, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
