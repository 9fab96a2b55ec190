"""BLE transport: fragment format and reassembly (pure), then the whole link over bumble.

The link tests run our GATT peripheral and our bleak central (bleak's ``BleakClient`` with the
``BumbleBleakClient`` backend) on bumble's emulated controllers joined by one in-process
``LocalLink``: real HCI, real ATT/GATT, real MTU exchange, real disconnects. Nothing of ours
is mocked; faults are injected at the peripheral (a suppressed notification) or on the air
(an HCI disconnect). Waits are bounded but never asserted on.
"""
from __future__ import annotations

import queue
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.ble_frag import (FIRST_HEADER_SIZE, HEADER_SIZE, MIN_PAYLOAD_SIZE, Reassembler, fragment,
                            fragment_count)
from nodes.codec import HEADER_SIZE as FRAME_HEADER, TRAILER_SIZE, Decoder, encode_frame
from nodes.errors import TransportError

ROOT = Path(__file__).resolve().parent.parent
PERIPHERAL = "F0:00:00:00:00:01"
WAIT_S = 20.0


# ------------------------------------------------------------------------------ fragments


def test_fragment_layout_and_round_trip() -> None:
    frame = bytes(range(256)) * 4
    frags = fragment(frame, seq=7, payload_size=20)
    assert len(frags) == fragment_count(len(frame), payload_size=20) == 1 + -(-(1024 - 12) // 16)
    assert all(len(f) <= 20 for f in frags)
    assert frags[0][:FIRST_HEADER_SIZE] == bytes([7, 0, 0, 0]) + (1024).to_bytes(4, "little")
    assert frags[1][:HEADER_SIZE] == bytes([7, 1, 0, 0])
    r = Reassembler(1.0)
    out = [r.feed(f, 0.0) for f in frags]
    assert out[:-1] == [None] * (len(frags) - 1) and out[-1] == frame
    assert r.counters.frames_ok == 1 and r.counters.fragments == len(frags)
    assert not r.pending


@pytest.mark.parametrize("size", [0, 1, 11, 12, 13, 28, 29, 1000])
def test_fragment_edges(size: int) -> None:
    frame = bytes(i % 251 for i in range(size))
    frags = fragment(frame, seq=300, payload_size=20)   # seq is taken modulo 256
    assert len(frags) == fragment_count(size, payload_size=20)
    assert all(f[0] == 300 % 256 for f in frags)
    r = Reassembler(1.0)
    results = [r.feed(f, 0.0) for f in frags]
    assert results[-1] == frame


def test_fragment_refuses_payload_too_small() -> None:
    with pytest.raises(ValueError, match="payload_size"):
        fragment(b"abc", seq=0, payload_size=MIN_PAYLOAD_SIZE - 1)


def test_missing_middle_fragment_drops_that_frame_only() -> None:
    a, b = b"A" * 100, b"B" * 100
    fa, fb = fragment(a, seq=1, payload_size=20), fragment(b, seq=2, payload_size=20)
    r = Reassembler(1.0)
    got = [x for f in fa[:3] + fa[4:] + fb if (x := r.feed(f, 0.0)) is not None]
    assert got == [b]
    assert r.counters.dropped_missing == 1 and r.counters.frames_ok == 1
    assert r.counters.fragments_ignored == len(fa) - 5   # after the one that revealed the gap


def test_lost_tail_is_noticed_by_the_next_first_fragment() -> None:
    a, b = b"A" * 100, b"B" * 50
    r = Reassembler(1.0)
    fa = fragment(a, seq=1, payload_size=20)
    got = [x for f in fa[:-1] + fragment(b, seq=2, payload_size=20) if (x := r.feed(f, 0.0))]
    assert got == [b] and r.counters.dropped_missing == 1


def test_lost_first_fragment_counts_the_frame_once() -> None:
    fa = fragment(b"A" * 100, seq=1, payload_size=20)
    r = Reassembler(1.0)
    assert all(r.feed(f, 0.0) is None for f in fa[1:])
    assert r.counters.dropped_missing == 1 and r.counters.fragments_ignored == len(fa) - 2


def test_out_of_order_fragments_drop_the_frame() -> None:
    fa = fragment(b"A" * 100, seq=1, payload_size=20)
    r = Reassembler(1.0)
    order = [fa[0], fa[2], fa[1], *fa[3:]]
    assert all(r.feed(f, 0.0) is None for f in order)
    assert r.counters.dropped_missing == 1 and r.counters.frames_ok == 0


def test_stale_partial_expires_and_is_counted() -> None:
    fa = fragment(b"A" * 100, seq=1, payload_size=20)
    r = Reassembler(0.5)
    r.feed(fa[0], 10.0)
    assert r.pending and r.expire(10.4) == 0 and r.pending
    assert r.expire(10.6) == 1 and not r.pending
    assert r.counters.dropped_timeout == 1
    assert all(r.feed(f, 10.7) is None for f in fa[1:])   # the tail no longer makes a frame


def test_progress_keeps_a_slow_frame_alive() -> None:
    fa = fragment(b"A" * 100, seq=1, payload_size=20)
    r = Reassembler(0.5)
    out = [r.feed(f, 10.0 + 0.4 * i) for i, f in enumerate(fa)]
    assert out[-1] == b"A" * 100 and r.counters.dropped_timeout == 0


def test_reset_abandons_the_partial_frame() -> None:
    fa = fragment(b"A" * 100, seq=1, payload_size=20)
    r = Reassembler(1.0)
    r.feed(fa[0], 0.0)
    assert r.reset() == 1 and r.counters.dropped_missing == 1 and not r.pending


@pytest.mark.parametrize("garbage", [b"", b"\x01", b"\x00\x00\x00", b"\x05\x00\x00\x00\x01",
                                     b"\x05\x00\x00\x00" + (2**31).to_bytes(4, "little") + b"x",
                                     b"\x05\x00\x00\x00" + (2).to_bytes(4, "little") + b"xyz"])
def test_garbage_is_counted_malformed_never_raised(garbage: bytes) -> None:
    r = Reassembler(1.0)
    assert r.feed(garbage, 0.0) is None
    assert r.counters.dropped_malformed == 1 and r.counters.frames_ok == 0


def test_chunk_overrunning_the_announced_length_is_malformed() -> None:
    fa = fragment(b"A" * 30, seq=1, payload_size=20)
    r = Reassembler(1.0)
    r.feed(fa[0], 0.0)
    assert r.feed(fa[1][:HEADER_SIZE] + b"Z" * 19, 0.0) is None   # 12 + 19 > 30
    assert r.counters.dropped_malformed == 1 and not r.pending


_frames = st.lists(st.binary(max_size=300), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=_frames, payload=st.integers(MIN_PAYLOAD_SIZE, 64), data=st.data())
def test_fuzz_reassembler_never_raises_and_never_invents_frames(
        frames: list[bytes], payload: int, data: st.DataObject) -> None:
    stream = [f for seq, fr in enumerate(frames) for f in fragment(fr, seq=seq, payload_size=payload)]
    ops = data.draw(st.lists(st.tuples(st.sampled_from(["keep", "drop", "dup", "swap", "flip", "junk"]),
                                       st.integers(0, 255)), min_size=len(stream), max_size=len(stream)))
    mangled: list[bytes] = []
    for frag, (op, n) in zip(stream, ops):
        if op == "keep":
            mangled.append(frag)
        elif op == "dup":
            mangled += [frag, frag]
        elif op == "swap" and mangled:
            mangled.insert(len(mangled) - 1, frag)
        elif op == "flip":
            b = bytearray(frag)
            b[n % len(b)] ^= 1 << (n % 8)
            mangled.append(bytes(b))
        elif op == "junk":
            mangled.append(bytes([n]) * (n % 12))
    r = Reassembler(5.0)
    out = [x for i, f in enumerate(mangled) if (x := r.feed(f, i * 0.01)) is not None]
    c = r.counters
    assert c.fragments == len(mangled)
    sent = set(frames)
    # a bit flip inside a chunk is the wire frame's CRC's job; everything else must be a sent frame
    if all(op != "flip" for op, _ in ops):
        assert all(x in sent for x in out)
    if all(op == "keep" for op, _ in ops):
        assert out == frames and c.frames_dropped == 0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=50))
def test_fuzz_pure_garbage_never_raises(chunks: list[bytes]) -> None:
    r = Reassembler(0.1, max_frame_bytes=4096)
    for i, c in enumerate(chunks):
        r.feed(c, i * 0.05)
        r.expire(i * 0.05)
    assert r.counters.fragments == len(chunks)


# ------------------------------------------------------------------------------ settings


def test_ble_modules_import_without_any_bluetooth_stack() -> None:
    code = ("import sys, nodes.ble_frag, nodes.ble_transport\n"
            "print(','.join(sorted(m for m in ('bumble', 'bleak', 'bless', 'testbed', 'nodes.ble_bleak_bumble')"
            " if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_settings_are_checked_and_named() -> None:
    from nodes.ble_transport import BleTransport

    with pytest.raises(TransportError, match="unknown setting.*'?baud"):
        BleTransport(receive=True, hci="usb:0", address=PERIPHERAL, baud=9600)
    with pytest.raises(TransportError, match="stack must be one of bumble, bluez, got 'zephyr'"):
        BleTransport(receive=True, stack="zephyr", address=PERIPHERAL)
    with pytest.raises(TransportError, match="mtu applies to stack 'bumble' only"):
        BleTransport(receive=True, stack="bluez", address=PERIPHERAL, mtu=185)
    with pytest.raises(TransportError, match="exactly one of 'hci'"):
        BleTransport(receive=True, address=PERIPHERAL)
    with pytest.raises(TransportError, match="needs 'address'"):
        BleTransport(receive=False, hci="usb:0")
    with pytest.raises(TransportError, match="connect_timeout_s"):
        BleTransport(receive=True, hci="usb:0", address=PERIPHERAL, connect_timeout_s=0)
    with pytest.raises(TransportError, match=r"mtu must be an int in \[12, 517\], got 600"):
        BleTransport(receive=True, hci="usb:0", address=PERIPHERAL, mtu=600)


# ------------------------------------------------------------------------------ over bumble


@pytest.fixture
def vlink() -> Iterator[object]:
    from nodes.ble_transport import VirtualBleLink

    with VirtualBleLink() as link:
        yield link


@contextmanager
def ble_link(link: object, *, central_mtu: int = 247, peripheral_mtu: int = 247,
             **settings: object) -> Iterator[tuple[object, object, queue.Queue[bytes]]]:
    """A wearable (peripheral) and an edge (central) on ``link``, connected."""
    from nodes.ble_transport import BleTransport

    tx = BleTransport(receive=False, link=link, address=PERIPHERAL, mtu=peripheral_mtu, **settings)
    rx = BleTransport(receive=True, link=link, address=PERIPHERAL, mtu=central_mtu, **settings)
    got: queue.Queue[bytes] = queue.Queue()
    rx.on_frame(got.put)
    with tx, rx:
        assert tx.wait_connected(WAIT_S) and rx.wait_connected(WAIT_S), rx.counters.last_error
        yield tx, rx, got


def wait_for(cond: Callable[[], bool], what: str) -> None:
    end = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.01)


def wire_frame(nbytes: int, *, seq: int) -> tuple[bytes, np.ndarray]:
    n = (nbytes - FRAME_HEADER - TRAILER_SIZE) // 4
    arr = np.random.default_rng(seq).standard_normal(n).astype(np.float32)
    return encode_frame(arr, run_id=1, sample_id=seq, shard=0, seq=seq, send_ts_ns=seq), arr


@pytest.mark.parametrize("central_mtu, peripheral_mtu, expected_mtu",
                         [(23, 517, 23), (247, 517, 247), (247, 100, 100)])
def test_mtu_is_negotiated_and_sets_the_fragment_size(vlink: object, central_mtu: int, peripheral_mtu: int,
                                                      expected_mtu: int) -> None:
    with ble_link(vlink, central_mtu=central_mtu, peripheral_mtu=peripheral_mtu) as (tx, rx, got):
        for end in (tx, rx):
            assert end.counters.att_mtu == expected_mtu
            assert end.counters.payload_size == expected_mtu - 3
        frame, _ = wire_frame(4096, seq=0)
        assert tx.send(frame)
        assert got.get(timeout=WAIT_S) == frame
        n = fragment_count(len(frame), payload_size=expected_mtu - 3)
        assert tx.counters.fragments_sent == n
        assert rx.counters.reassembly.fragments == n


def test_wire_frames_cross_in_order_and_decode(vlink: object) -> None:
    decoder = Decoder()
    with ble_link(vlink) as (tx, rx, got):
        sent = [wire_frame(size, seq=i) for i, size in enumerate([256, 4096, 65536] * 2)]
        for frame, _ in sent:
            assert tx.send(frame)
        for i, (frame, arr) in enumerate(sent):
            decoded = decoder.decode(got.get(timeout=WAIT_S))
            assert decoded is not None and decoded.seq == i
            np.testing.assert_array_equal(decoded.array, arr)
        assert decoder.stats.total_dropped == 0
        assert rx.counters.frames_received == len(sent) and rx.counters.reassembly.frames_dropped == 0
        assert tx.counters.send_failures == 0


def test_a_lost_notification_drops_that_frame_only(vlink: object) -> None:
    with ble_link(vlink) as (tx, rx, got):
        frames = [wire_frame(4096, seq=i)[0] for i in range(3)]
        tx.fragment_filter = lambda seq, index, _frag: not (seq == 1 and index == 2)
        for f in frames:
            assert tx.send(f)
        assert got.get(timeout=WAIT_S) == frames[0]
        assert got.get(timeout=WAIT_S) == frames[2]
        assert got.empty()
        assert tx.counters.fragments_suppressed == 1
        assert rx.counters.reassembly.dropped_missing == 1
        assert rx.counters.reassembly.frames_ok == 2


def test_a_stalled_frame_times_out_and_is_counted(vlink: object) -> None:
    with ble_link(vlink, reassembly_timeout_s=0.2) as (tx, rx, got):
        frame = wire_frame(4096, seq=0)[0]
        last = fragment_count(len(frame), payload_size=tx.counters.payload_size) - 1
        tx.fragment_filter = lambda _seq, index, _frag: index != last
        assert tx.send(frame)
        wait_for(lambda: rx.counters.reassembly.dropped_timeout == 1, "the reassembly timeout")
        assert got.empty() and rx.counters.reassembly.frames_ok == 0
        tx.fragment_filter = None
        assert tx.send(frame) and got.get(timeout=WAIT_S) == frame


@pytest.mark.parametrize("side", ["peripheral", "central"])
def test_disconnect_mid_run_drops_counts_and_reconnects(vlink: object, side: str) -> None:
    # the central waits 1 s before reconnecting, so the frames sent right after the drop find
    # the link down (the link state is what is asserted, not the delay)
    with ble_link(vlink, reconnect_delay_s=1.0) as (tx, rx, got):
        before = [wire_frame(4096, seq=i)[0] for i in range(3)]
        for f in before:
            assert tx.send(f)
        assert [got.get(timeout=WAIT_S) for _ in before] == before
        (tx if side == "peripheral" else rx).drop_connection()
        wait_for(lambda: not tx.connected, "the peripheral to see the disconnect")
        during = [wire_frame(256, seq=10 + i)[0] for i in range(4)]
        assert [tx.send(f) for f in during] == [False] * 4
        assert tx.counters.frames_dropped_down == 4 and tx.counters.send_failures == 4
        assert tx.wait_connected(WAIT_S) and rx.wait_connected(WAIT_S)
        after = [wire_frame(65536, seq=20 + i)[0] for i in range(2)]
        for f in after:
            assert tx.send(f)
        assert [got.get(timeout=WAIT_S) for _ in after] == after
        assert got.empty()
        for end in (tx, rx):
            assert end.counters.disconnects == 1 and end.counters.connects == 2
            assert end.counters.link_down_s(None) > 0
            assert end.counters.as_dict()["link_down_s"] > 0


def test_frames_before_any_central_are_counted_not_raised(vlink: object) -> None:
    from nodes.ble_transport import BleTransport

    with BleTransport(receive=False, link=vlink, address=PERIPHERAL) as tx:
        assert not tx.connected
        assert tx.send(b"frame") is False
        assert tx.counters.frames_dropped_down == 1 and tx.counters.frames_sent == 0


def test_the_bleak_client_api_works_over_the_bumble_backend(vlink: object) -> None:
    """Our bleak backend as bleak sees it: discovery, MTU, write, notify, disconnect."""
    from bleak import BleakClient

    from nodes.ble_bleak_bumble import BumbleBleakClient
    from nodes.ble_transport import CONTROL_UUID, DATA_UUID, HELLO, SERVICE_UUID, BleTransport

    async def scenario(tx: BleTransport) -> dict[str, object]:
        from bumble.controller import Controller
        from bumble.device import Device
        from bumble.host import Host
        from bumble.transport.common import AsyncPipeSink
        import asyncio

        controller = Controller("probe", link=vlink.local_link)
        device = Device(name="probe", address="C0:00:00:00:00:42",
                        host=Host(controller, AsyncPipeSink(controller)))
        await device.power_on()
        notes: asyncio.Queue[bytes] = asyncio.Queue()
        client = BleakClient(PERIPHERAL, backend=BumbleBleakClient, bumble_device=device, mtu=185)
        try:
            await client.connect()
            char = client.services.get_characteristic(DATA_UUID)
            result = {"backend": client.backend_id, "mtu": client.mtu_size,
                      "wwr": char.max_write_without_response_size, "props": char.properties,
                      "service": char.service_uuid}
            await client.start_notify(char, lambda _c, data: notes.put_nowait(bytes(data)))
            await client.write_gatt_char(CONTROL_UUID, HELLO.pack(1, 100), response=True)
            result["fragment"] = await asyncio.wait_for(notes.get(), WAIT_S)
            await client.disconnect()
            result["connected_after"] = client.is_connected
            return result
        finally:
            vlink.local_link.controllers.discard(controller)

    with BleTransport(receive=False, link=vlink, address=PERIPHERAL, mtu=517) as tx:
        fut = vlink.submit(scenario(tx))
        assert tx.wait_connected(WAIT_S)
        assert tx.counters.payload_size == 100          # min(hello, ATT_MTU - 3)
        assert tx.send(b"x" * 50)
        res = fut.result(WAIT_S)
        wait_for(lambda: not tx.connected, "the peripheral to see the disconnect")
    assert res["backend"] == "BumbleBleakClient"
    assert res["mtu"] == 185 and res["wwr"] == 182
    assert "notify" in res["props"] and res["service"] == SERVICE_UUID
    assert res["fragment"] == fragment(b"x" * 50, seq=0, payload_size=100)[0]
    assert res["connected_after"] is False


@pytest.fixture
def controllers_app(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """bumble's two-controller app in its own process, each controller behind a TCP HCI port."""
    import socket

    if not Path("/proc/net/tcp").exists():
        pytest.skip("needs Linux /proc/net/tcp to see when the app listens")

    def free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    ports = [free_port(), free_port()]
    log = tmp_path / "controllers.log"

    def listening(port: int) -> bool:
        """True once the port is in LISTEN state (read from /proc: a probe connection would be
        taken by the app as its host and then lost)."""
        assert proc.poll() is None, log.read_text()
        rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
        return any(r.split()[1].endswith(f":{port:04X}") and r.split()[3] == "0A" for r in rows)

    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bumble.apps.controllers",
                                 *(f"tcp-server:127.0.0.1:{p}" for p in ports)],
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            for port in ports:
                wait_for(lambda port=port: listening(port), f"the controllers app on port {port}")
            yield f"tcp-client:127.0.0.1:{ports[0]}", f"tcp-client:127.0.0.1:{ports[1]}"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def test_hci_transport_spec_path_on_private_loops(controllers_app: tuple[str, str]) -> None:
    """Each end owns its loop thread and reaches its controller through an HCI transport spec."""
    import threading

    from nodes.ble_transport import BleTransport

    spec_tx, spec_rx = controllers_app
    tx = BleTransport(receive=False, hci=spec_tx, address=PERIPHERAL)
    rx = BleTransport(receive=True, hci=spec_rx, address=PERIPHERAL)
    got: queue.Queue[bytes] = queue.Queue()
    rx.on_frame(got.put)
    with tx, rx:
        assert tx.wait_connected(WAIT_S) and rx.wait_connected(WAIT_S), rx.counters.last_error
        frame = wire_frame(4096, seq=3)[0]
        assert tx.send(frame) and got.get(timeout=WAIT_S) == frame
    assert not [t for t in threading.enumerate() if t.name.startswith("ble-")]
