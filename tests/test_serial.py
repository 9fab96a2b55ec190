"""Serial transport over real pyserial on real pty pairs (socat, and os.openpty without socat).

The transport under test opens a pty slave with pyserial, exactly as it opens /dev/ttyAMA0 on
a Pi. The far side ("raw end") is a plain file descriptor written and read with os.write /
os.read, so tests can inject garbage, truncations and bit flips between frames. The last
section runs docs/serial.md's pty-pair recipe as written: one end of a link on each pty of a
socat pair (``port`` for the wearable, ``edge_port`` for the edge).
"""
from __future__ import annotations

import contextlib
import os
import queue
import re
import select
import shlex
import shutil
import subprocess
import threading
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import serial

from nodes import cobs
from nodes.codec import HEADER_SIZE, TRAILER_SIZE, Decoder, Encoding, decode_frame, encode_frame
from nodes.errors import TransportError
from nodes.serial_transport import SerialTransport

WAIT_S = 20.0  # an upper bound against hangs, never a speed assertion
SIZES = (256, 4096, 65536)


# ---------------------------------------------------------------------------- pty pairs


@dataclass
class PtyPair:
    """``port``: a path pyserial opens; ``raw``: the far side's fd; ``peer``: a second path
    for another pyserial user (socat only)."""

    kind: str
    port: str
    raw: int
    peer: str | None = None


def socat_pair(tmp: Path) -> contextlib.AbstractContextManager[tuple[str, str]]:
    """Two linked ptys from socat (the harness's own helper, as the demo fabric uses it)."""
    from testbed.fabric import socat_pty_pair
    return socat_pty_pair(tmp, names=("a", "b"))


@contextlib.contextmanager
def open_raw(path: str) -> Iterator[int]:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def openpty_pair() -> Iterator[PtyPair]:
    """os.openpty(): the slave path for pyserial, the master fd as the raw end."""
    master, slave = os.openpty()
    try:
        tty.setraw(master)
        tty.setraw(slave)
        yield PtyPair(kind="openpty", port=os.ttyname(slave), raw=master)
    finally:
        os.close(slave)
        os.close(master)


@pytest.fixture()
def socat_paths(tmp_path: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (the openpty variants still run)")
    with socat_pair(tmp_path) as paths:
        yield paths


@pytest.fixture(params=["socat", "openpty"])
def pty_pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PtyPair]:
    if request.param == "openpty":
        with openpty_pair() as pair:
            yield pair
        return
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (the openpty variant still runs)")
    with socat_pair(tmp_path) as (a, b), open_raw(b) as fd:
        yield PtyPair(kind="socat", port=a, raw=fd)


def raw_write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class RawCollector:
    """Reads the raw end in a thread and de-frames it with a fresh CobsStreamDecoder."""

    def __init__(self, fd: int) -> None:
        self.fd, self.decoder = fd, cobs.CobsStreamDecoder()
        self.packets: queue.Queue[bytes] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RawCollector:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(WAIT_S)

    def _run(self) -> None:
        while not self._stop.is_set():
            if select.select([self.fd], [], [], 0.05)[0]:
                for p in self.decoder.feed(os.read(self.fd, 1 << 16)):
                    self.packets.put(p)

    def take(self, n: int) -> list[bytes]:
        return [self.packets.get(timeout=WAIT_S) for _ in range(n)]


@contextlib.contextmanager
def receiver(port: str, **kw: object) -> Iterator[tuple[SerialTransport, queue.Queue[bytes]]]:
    got: queue.Queue[bytes] = queue.Queue()
    with SerialTransport(port=port, receive=True, **{"baud": 921600, **kw}) as tr:  # type: ignore[arg-type]
        tr.on_frame(got.put)
        yield tr, got  # type: ignore[misc]


def take(q: queue.Queue[bytes], n: int) -> list[bytes]:
    return [q.get(timeout=WAIT_S) for _ in range(n)]


def assert_nothing_more(q: queue.Queue[bytes]) -> None:
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)


# ---------------------------------------------------------------------------- frames


def frame_of(nbytes: int, *, seq: int) -> bytes:
    """A real wire frame of exactly ``nbytes`` (f16 payload)."""
    n = (nbytes - HEADER_SIZE - TRAILER_SIZE) // 2
    values = np.random.default_rng(seq).standard_normal(n).astype(np.float32)
    values[::3] = 0.0  # ReLU-like zeros, so COBS has work to do
    frame = encode_frame(values, run_id=7, sample_id=seq, shard=1, seq=seq, send_ts_ns=seq,
                         encoding=Encoding.F16)
    assert len(frame) == nbytes
    return frame


def frames(rounds: int = 2) -> list[bytes]:
    return [frame_of(size, seq=i * len(SIZES) + j) for i in range(rounds) for j, size in enumerate(SIZES)]


def wire(frame: bytes) -> bytes:
    return b"\x00" + cobs.encode(frame) + b"\x00"


def assert_valid_frames(received: list[bytes], sent: list[bytes]) -> None:
    dec = Decoder()
    assert received == sent
    assert [dec.decode(f).seq for f in received] == [decode_frame(f).seq for f in sent]  # type: ignore[union-attr]
    assert dec.stats.ok == len(sent) and dec.stats.total_dropped == 0


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("baud", [921600, 3000000])
def test_receives_frames_in_order(pty_pair: PtyPair, baud: int) -> None:
    sent = frames()
    with receiver(pty_pair.port, baud=baud) as (tr, got):
        for f in sent:
            raw_write(pty_pair.raw, wire(f))
        assert_valid_frames(take(got, len(sent)), sent)
        assert_nothing_more(got)
        assert tr.decoder_stats() == {"packets": len(sent), "bytes_in": sum(len(wire(f)) for f in sent),
                                      "dropped_invalid": 0, "dropped_oversize": 0, "garbage_bytes": 0,
                                      "read_errors": 0, "handler_errors": 0}
        assert tr.counters.frames_received == len(sent)
        assert tr.counters.bytes_received == sum(map(len, sent))


@pytest.mark.parametrize("baud", [921600, 3000000])
def test_sends_frames_in_order(pty_pair: PtyPair, baud: int) -> None:
    sent = frames()
    with RawCollector(pty_pair.raw) as raw, \
            SerialTransport(port=pty_pair.port, baud=baud, receive=False) as tr:
        assert all(tr.send(f) for f in sent)
        assert_valid_frames(raw.take(len(sent)), sent)
        assert tr.counters.frames_sent == len(sent) and tr.counters.send_failures == 0
        assert tr.counters.bytes_sent == sum(map(len, sent))
        assert not tr.reader_alive
    # on the wire: a delimiter before and after every COBS packet, nothing else
    assert raw.decoder.stats.bytes_in == sum(len(wire(f)) for f in sent)
    assert raw.decoder.stats.garbage_bytes == 0


@pytest.mark.parametrize("baud", [921600, 3000000])
def test_transport_to_transport_over_socat(socat_paths: tuple[str, str], baud: int) -> None:
    a, b = socat_paths
    sent = frames(rounds=3)
    with receiver(b, baud=baud, rtscts=False) as (rx, got), \
            SerialTransport(port=a, baud=baud, receive=False) as tx:
        senders = [threading.Thread(target=lambda k=k: [tx.send(f) for f in sent[k::2]]) for k in (0, 1)]
        assert all(tx.send(f) for f in sent)
        assert_valid_frames(take(got, len(sent)), sent)
        # two threads sending at once: the write lock keeps frames whole
        for t in senders:
            t.start()
        for t in senders:
            t.join(WAIT_S)
        second = take(got, len(sent))
        assert sorted(second) == sorted(sent)
        assert rx.decoder_stats()["dropped_invalid"] == rx.decoder_stats()["garbage_bytes"] == 0
        assert tx.counters.frames_sent == 2 * len(sent)


def test_rtscts_setting_opens_and_carries_frames() -> None:
    with openpty_pair() as pair, receiver(pair.port, rtscts=True) as (_tr, got):
        sent = frames(rounds=1)
        for f in sent:
            raw_write(pair.raw, wire(f))
        assert take(got, len(sent)) == sent


# ---------------------------------------------------------------------------- resync and drops


def test_garbage_before_and_between_frames_is_dropped_and_counted(pty_pair: PtyPair) -> None:
    sent = frames(rounds=1)
    before = b"\x13\x37 tail of a frame sent before we listened"  # no 0x00: unsynchronised prefix
    noise = [b"\xfe\xfd line noise \r\n", b"\x80\x81\x82"]  # blocks overrun: cannot decode
    with receiver(pty_pair.port) as (tr, got):
        raw_write(pty_pair.raw, before + wire(sent[0]) + b"\x00".join(noise) + wire(sent[1]) + wire(sent[2]))
        assert take(got, 3) == sent
        assert_nothing_more(got)
        stats = tr.decoder_stats()
        assert stats["garbage_bytes"] == len(before) + sum(map(len, noise))
        assert stats["dropped_invalid"] == len(noise)
        assert stats["packets"] == 3


def test_random_garbage_never_costs_a_frame(pty_pair: PtyPair) -> None:
    """Noise that happens to decode comes out as a packet, and the codec drops it."""
    rng = np.random.default_rng(11)
    sent, last = frames(), frame_of(256, seq=99)
    with receiver(pty_pair.port) as (tr, got):
        stream = b"".join(wire(f) + rng.bytes(int(rng.integers(1, 2000))) for f in sent) + wire(last)
        raw_write(pty_pair.raw, stream)
        received: list[bytes] = []
        while not received or received[-1] != last:  # delivery is in order: then all is in
            received.append(got.get(timeout=WAIT_S))
        stats = tr.decoder_stats()
    assert stats["bytes_in"] == len(stream)
    assert [p for p in received if p in sent] == sent
    dec = Decoder()
    junk = [p for p in received[:-1] if p not in sent]
    assert all(dec.decode(p) is None for p in junk)
    assert stats["packets"] == len(received)
    assert stats["dropped_invalid"] + stats["dropped_oversize"] + len(junk) > 0
    assert stats["garbage_bytes"] > 0


def test_truncated_frame_is_dropped_and_counted_next_is_fine(pty_pair: PtyPair) -> None:
    first, nxt = frame_of(4096, seq=1), frame_of(4096, seq=2)
    enc = cobs.encode(first)
    cut = len(enc) // 2
    with pytest.raises(cobs.CobsError):
        cobs.decode(enc[:cut])  # precondition: this cut lands inside a block
    with receiver(pty_pair.port) as (tr, got):
        raw_write(pty_pair.raw, b"\x00" + enc[:cut] + b"\x00" + wire(nxt))
        assert take(got, 1) == [nxt]
        assert_nothing_more(got)
        assert tr.decoder_stats()["dropped_invalid"] == 1
        assert tr.decoder_stats()["garbage_bytes"] == cut


def test_truncation_at_a_block_boundary_passes_cobs_and_the_codec_drops_it(pty_pair: PtyPair) -> None:
    first, nxt = frame_of(4096, seq=1), frame_of(4096, seq=2)
    enc = cobs.encode(first)
    cut = _block_starts(enc)[len(_block_starts(enc)) // 2]
    with receiver(pty_pair.port) as (_tr, got):
        raw_write(pty_pair.raw, b"\x00" + enc[:cut] + b"\x00" + wire(nxt))
        short, good = take(got, 2)
    dec = Decoder()
    assert dec.decode(short) is None and dec.stats.truncated == 1
    assert good == nxt and dec.decode(good) is not None


def _block_starts(enc: bytes) -> list[int]:
    starts, i = [], 0
    while i < len(enc):
        starts.append(i)
        i += enc[i]
    return starts


def test_bit_flip_in_transit_passes_cobs_and_fails_the_crc(pty_pair: PtyPair) -> None:
    frame, nxt = frame_of(4096, seq=3), frame_of(256, seq=4)
    enc = bytearray(cobs.encode(frame))
    codes = set(_block_starts(bytes(enc)))
    pos = next(i for i in range(len(enc) // 2, len(enc)) if i not in codes)
    enc[pos] ^= 0x01 if enc[pos] != 0x01 else 0x02  # a data byte stays non-zero
    with receiver(pty_pair.port) as (tr, got):
        raw_write(pty_pair.raw, b"\x00" + bytes(enc) + b"\x00" + wire(nxt))
        corrupted, good = take(got, 2)
        assert tr.decoder_stats()["dropped_invalid"] == 0  # COBS cannot tell
    assert corrupted != frame and len(corrupted) == len(frame)
    dec = Decoder()
    assert dec.decode(corrupted) is None and dec.stats.bad_crc == 1
    assert dec.decode(good) is not None and dec.stats.ok == 1


def test_every_single_bit_flip_of_a_framed_frame_is_rejected_and_counted() -> None:
    """No pty needed: COBS + the frame CRC32 never accept a 256 B frame with one bit flipped
    anywhere on the wire (delimiters included), the loss is counted, and the next frame lives."""
    frame = frame_of(256, seq=9)
    stream = bytearray(wire(frame))
    for pos in range(len(stream)):
        for bit in range(8):
            stream[pos] ^= 1 << bit
            deframer, dec = cobs.CobsStreamDecoder(), Decoder()
            packets = deframer.feed(bytes(stream) + wire(frame))
            stream[pos] ^= 1 << bit
            accepted = [f for p in packets if (f := dec.decode(p)) is not None]
            assert len(accepted) == 1 and accepted[0].seq == 9, (pos, bit)
            lost = (deframer.stats.dropped_invalid + deframer.stats.garbage_bytes
                    + dec.stats.total_dropped)
            assert lost > 0, (pos, bit)


def test_oversize_packet_is_dropped_without_buffering_it(pty_pair: PtyPair) -> None:
    big, small = frame_of(65536, seq=5), frame_of(256, seq=6)
    with receiver(pty_pair.port, max_frame=4096) as (tr, got):
        raw_write(pty_pair.raw, wire(big) + wire(small))
        assert take(got, 1) == [small]
        assert tr.decoder_stats()["dropped_oversize"] == 1
        assert tr._decoder.buffered == 0  # noqa: SLF001


def test_sender_refuses_a_frame_over_max_frame() -> None:
    with openpty_pair() as pair, SerialTransport(port=pair.port, baud=921600, receive=False,
                                                 max_frame=1000) as tr:
        assert tr.send(frame_of(4096, seq=1)) is False
        assert tr.counters.send_failures == 1 and "max_frame" in str(tr.last_error)


def test_write_timeout_is_a_counted_send_failure_not_an_exception() -> None:
    """Nobody reads the far side: the pty fills up and writes time out."""
    frame = frame_of(65536, seq=1)
    with openpty_pair() as pair, SerialTransport(port=pair.port, baud=921600, receive=False,
                                                 write_timeout=0.2) as tr:
        results = [tr.send(frame) for _ in range(200) if not tr.counters.send_failures]
    assert results[-1] is False
    assert tr.counters.send_failures == 1
    assert "write" in str(tr.last_error).lower()


def test_handler_exception_does_not_stop_the_reader() -> None:
    sent = frames(rounds=1)
    got: queue.Queue[bytes] = queue.Queue()

    def handler(frame: bytes) -> None:
        if frame == sent[0]:
            raise RuntimeError("handler bug")
        got.put(frame)

    with openpty_pair() as pair, SerialTransport(port=pair.port, baud=921600, receive=True) as tr:
        tr.on_frame(handler)
        for f in sent:
            raw_write(pair.raw, wire(f))
        assert take(got, 2) == sent[1:]
        assert tr.decoder_stats()["handler_errors"] == 1 and tr.reader_alive


# ---------------------------------------------------------------------------- lifecycle and errors


def _rx_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("serial-rx")]


def test_close_joins_the_reader_and_closes_the_port(pty_pair: PtyPair) -> None:
    before = _rx_threads()
    tr = SerialTransport(port=pty_pair.port, baud=921600, receive=True).open()
    ser = tr._serial  # noqa: SLF001
    assert ser is not None and ser.is_open and tr.reader_alive
    assert len(_rx_threads()) == len(before) + 1
    tr.close()
    assert not tr.reader_alive and not ser.is_open
    assert _rx_threads() == before
    tr.close()  # idempotent
    assert tr.send(b"x") is False and tr.counters.send_failures == 1
    # the port is free again
    with SerialTransport(port=pty_pair.port, baud=921600, receive=True):
        pass


def test_port_is_opened_exclusively(pty_pair: PtyPair) -> None:
    with SerialTransport(port=pty_pair.port, baud=921600, receive=True) as first:
        with pytest.raises(TransportError, match=re.escape(pty_pair.port)):
            SerialTransport(port=pty_pair.port, baud=921600, receive=True).open()
        assert first.reader_alive


def test_unknown_setting_is_named() -> None:
    with pytest.raises(TransportError, match=r"unknown setting\(s\) 'parity', 'stop_bits'; expected only port, baud"):
        SerialTransport(port="/dev/null", baud=9600, receive=False, parity="E", stop_bits=2)  # type: ignore[call-arg]


@pytest.mark.parametrize(("kw", "phrase"), [
    ({"baud": 0}, "baud must be a positive int, got 0"),
    ({"baud": "fast"}, "baud must be a positive int, got 'fast'"),
    ({"port": ""}, "port must be a device path"),
    ({"max_frame": -1}, "max_frame must be a positive int"),
    ({"write_timeout": 0}, "write_timeout must be seconds > 0"),
    ({"xonxoff": True}, "xonxoff is not supported"),
])
def test_bad_settings_say_what_was_expected(kw: dict[str, object], phrase: str) -> None:
    with pytest.raises(TransportError, match=phrase):
        SerialTransport(**{"port": "/dev/ttyAMA0", "baud": 9600, "receive": False, **kw})  # type: ignore[arg-type]


def test_unopenable_port_names_the_port_and_the_os_error(tmp_path: Path) -> None:
    missing = tmp_path / "ttyNOPE"
    tr = SerialTransport(port=str(missing), baud=2000000, receive=True)
    with pytest.raises(TransportError, match=rf"cannot open {missing} at 2000000 baud: .*No such file"):
        tr.open()
    assert not tr.reader_alive
    tr.close()


def test_xonxoff_really_eats_bytes_that_frames_contain() -> None:
    """Why xonxoff is refused: on a real tty with IXON, 0x11 and 0x13 never arrive."""
    with openpty_pair() as pair:
        ser = serial.Serial(pair.port, 921600, timeout=0.5, xonxoff=True)
        try:
            raw_write(pair.raw, bytes(range(1, 32)))
            got = ser.read(31)
        finally:
            ser.close()
    assert set(range(1, 32)) - set(got) == {0x11, 0x13}
    assert b"\x11" in cobs.encode(frame_of(4096, seq=1))


def test_lazy_registration_target_resolves() -> None:
    """The string nodes/transport.py registers: the backend is imported only when asked for."""
    from nodes.registry import Registry

    reg: Registry[object] = Registry("transport", error=TransportError)
    reg.register_lazy("serial", "nodes.serial_transport:SerialTransport")
    assert reg.get("serial") is SerialTransport
    assert SerialTransport.type_name == "serial"


# ---------------------------------------------------------------------------- fast receive path


def frame_with_long_runs(seq: int) -> bytes:
    """A ~64 KiB f32 wire frame whose payload mixes zero-free runs of > 254 bytes (full 0xFF COBS
    blocks, the encoder's loop path) with zero-heavy stretches (the numpy decode path)."""
    n = (65536 - HEADER_SIZE - TRAILER_SIZE) // 4
    values = np.random.default_rng(seq).uniform(1.0, 2.0, n).astype(np.float32)  # no zero bytes...
    values[: n // 2][np.random.default_rng(seq + 1).random(n // 2) < 0.5] = 0.0  # ...except here
    frame = encode_frame(values, run_id=7, sample_id=seq, shard=1, seq=seq, send_ts_ns=seq)
    assert len(frame) > 65500 and b"\xff" in cobs.encode(frame)
    return frame


def test_big_frames_split_across_many_reads_with_garbage_between(pty_pair: PtyPair) -> None:
    """The stream arrives in small pieces (a slow UART), so every 64 KiB frame spans many reads
    and garbage sits between frames; all frames come out, the garbage is counted."""
    sent = [frame_of(65536, seq=21), frame_with_long_runs(22), frame_of(4096, seq=23),
            frame_of(65536, seq=24)]
    noise = b"\xfe\xfd noise \r\n"
    stream = b"".join(wire(f) + noise for f in sent[:2]) + b"".join(wire(f) for f in sent[2:])
    with receiver(pty_pair.port) as (tr, got):
        for i in range(0, len(stream), 1500):
            raw_write(pty_pair.raw, stream[i:i + 1500])
            if i % 15000 == 0:
                threading.Event().wait(0.002)  # pacing only, so reads see partial frames
        assert_valid_frames(take(got, len(sent)), sent)
        assert_nothing_more(got)
        stats = tr.decoder_stats()
    assert stats["dropped_invalid"] == 2 and stats["garbage_bytes"] == 2 * len(noise)
    assert stats["bytes_in"] == len(stream) and stats["packets"] == len(sent)


def test_transport_pair_carries_long_run_frames_over_socat(socat_paths: tuple[str, str]) -> None:
    a, b = socat_paths
    sent = [frame_with_long_runs(31), frame_of(65536, seq=32), frame_with_long_runs(33)]
    with receiver(b) as (rx, got), SerialTransport(port=a, baud=921600, receive=False) as tx:
        assert all(tx.send(f) for f in sent)
        assert_valid_frames(take(got, len(sent)), sent)
        assert rx.decoder_stats()["garbage_bytes"] == 0


def test_close_while_idle_stops_the_reader_promptly_via_the_cancel_pipe() -> None:
    """The reader waits in select on the port and pyserial's cancel pipe: close() wakes it."""
    with openpty_pair() as pair:
        tr = SerialTransport(port=pair.port, baud=921600, receive=True).open()
        reader = tr._reader  # noqa: SLF001
        tr.close()
        assert reader is not None and not reader.is_alive()
        assert tr.decoder_stats()["read_errors"] == 0


# ---------------------------------------------------------------------------- the docs' pty-pair recipe

SERIAL_DOC = Path(__file__).resolve().parent.parent / "docs" / "serial.md"
RECIPE_PTYS = ("/tmp/ttyA", "/tmp/ttyB")   # the paths docs/serial.md uses; the test puts them in tmp_path


def recipe() -> tuple[list[str], str]:
    """The socat command and the transport line of docs/serial.md's "Without boards" recipe, as written."""
    section = SERIAL_DOC.read_text().split("## Without boards", 1)[1]
    socat_line = next(ln for ln in section.splitlines() if ln.startswith("socat "))
    transport = next(ln for ln in section.splitlines() if ln.strip().startswith("transport: {type: serial"))
    return shlex.split(socat_line.rstrip("& ")), transport


@contextlib.contextmanager
def recipe_socat(argv: list[str], paths: tuple[str, str]) -> Iterator[None]:
    """Run the recipe's socat command with its two pty paths moved to ``paths``."""
    argv = [a.replace(RECIPE_PTYS[0], paths[0]).replace(RECIPE_PTYS[1], paths[1]) for a in argv]
    assert argv[0] == "socat" and all(p in " ".join(argv) for p in paths), argv
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT_S
        while not all(os.path.exists(p) for p in paths):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.02)
        yield
    finally:
        proc.terminate()
        proc.wait(WAIT_S)


def recipe_inventory(tmp_path: Path, transport_line: str) -> Path:
    """The recipe's inventory: the demo's, its wrist-edge transport replaced by the recipe's line.
    (The chest link goes over mqtt here only so that the fabric starts no bumble controllers.)"""
    from conftest import DEMO_INVENTORY

    text = DEMO_INVENTORY.read_text()
    for old, new in (("    transport: {type: serial, port: pty, baud: 3000000}\n", transport_line + "\n"),
                     ("    transport: {type: ble, hci: virtual}\n", "    transport: {type: mqtt}\n")):
        assert old in text
        text = text.replace(old, new, 1)
    path = tmp_path / "pty-inventory.yaml"
    path.write_text(text)
    return path


def test_the_docs_pty_recipe_puts_each_end_of_the_link_on_its_own_pty(tmp_path: Path) -> None:
    """docs/serial.md's recipe exactly: its socat pair, its transport line (port for the wearable,
    edge_port for the edge); the inventory loads, the fabric gives each end its own pty, and the
    two ends (opened as an agent opens them) carry frames over real pyserial."""
    from nodes.agentconfig import TransportEnd
    from nodes.transport import open_transport
    from nodes.transport_settings import end_settings
    from testbed.config import load_inventory
    from testbed.fabric import LocalFabric

    if shutil.which("socat") is None:
        pytest.skip("socat is not installed")
    argv, transport_line = recipe()
    a, b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
    moved = transport_line.replace(RECIPE_PTYS[0], a).replace(RECIPE_PTYS[1], b)
    assert moved != transport_line and "edge_port" in moved
    inv = load_inventory(recipe_inventory(tmp_path, moved))
    link = inv.link("wrist-edge")
    assert dict(link.transport.settings) == {"port": a, "edge_port": b, "baud": 3000000}
    assert end_settings("serial", link.transport.settings, "tx") == {"port": a, "baud": 3000000}
    assert end_settings("serial", link.transport.settings, "rx") == {"port": b, "baud": 3000000}

    sent = frames()
    fabric = LocalFabric(inventory=inv, workdir=tmp_path / "links", broker_host="127.0.0.1", broker_port=1883)
    with recipe_socat(argv, (a, b)), fabric as fab:
        tx_end, rx_end = (TransportEnd.of(fab.endpoint(link, end)) for end in ("tx", "rx"))
        assert (tx_end.type, dict(tx_end.settings)) == ("serial", {"port": a, "baud": 3000000})
        assert (rx_end.type, dict(rx_end.settings)) == ("serial", {"port": b, "baud": 3000000})
        assert not any("pty pair" in n for n in fab.notes)   # the fabric made nothing: the ptys are the user's
        got: queue.Queue[bytes] = queue.Queue()
        with open_transport(rx_end.type, receive=True, **rx_end.settings) as rx, \
                open_transport(tx_end.type, receive=False, **tx_end.settings) as tx:
            rx.on_frame(got.put)
            assert all(tx.send(f) for f in sent)
            assert_valid_frames(take(got, len(sent)), sent)
            assert_nothing_more(got)
            assert rx.decoder_stats()["garbage_bytes"] == 0   # type: ignore[attr-defined]


def test_without_edge_port_both_ends_get_one_port_and_the_second_cannot_lock_it(tmp_path: Path) -> None:
    """What the issue saw before edge_port: one port for both ends; on a pty pair (or two boards
    whose devices differ) the second end to open fails on the exclusive lock."""
    from nodes.transport_settings import end_settings

    settings = {"port": "/dev/ttyAMA0", "baud": 2000000}
    assert end_settings("serial", settings, "tx") == end_settings("serial", settings, "rx") == settings
    with openpty_pair() as pair, SerialTransport(port=pair.port, baud=921600, receive=True):
        with pytest.raises(TransportError, match=r"Could not exclusively lock port"):
            SerialTransport(port=pair.port, baud=921600, receive=False).open()
