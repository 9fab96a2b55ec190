"""COBS: canonical encodings, round trips, and the stream decoder's resync and drop counting."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import cobs
from nodes.cobs import CobsError, CobsStreamDecoder

# Published examples (Wikipedia "Consistent Overhead Byte Stuffing", without the delimiter).
VECTORS = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), VECTORS)
def test_published_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs.encode(raw) == encoded
    assert cobs.decode(encoded) == raw


def _runs() -> list[bytes]:
    rng = random.Random(5)
    cases = [b"", b"\x00", bytes(1000), bytes(65536), b"\x07" * 65536, os_random(rng, 65536)]
    for n in (253, 254, 255, 256, 508, 509, 762):
        nz = bytes(rng.randrange(1, 256) for _ in range(n))
        cases += [nz, b"\x00" + nz, nz + b"\x00", b"\x00" + nz + b"\x00", nz + b"\x00" + nz]
    cases += [os_random(rng, rng.randrange(0, 3000)) for _ in range(200)]
    return cases


def os_random(rng: random.Random, n: int) -> bytes:
    return rng.randbytes(n)


@pytest.mark.parametrize("raw", _runs(), ids=lambda b: f"{len(b)}B")
def test_round_trip_has_no_zero_and_bounded_overhead(raw: bytes) -> None:
    enc = cobs.encode(raw)
    assert b"\x00" not in enc
    assert len(raw) < len(enc) <= cobs.max_encoded_len(len(raw))
    assert cobs.decode(enc) == raw
    assert cobs.decode(bytearray(enc)) == cobs.decode(memoryview(enc)) == raw


def test_final_full_run_gets_no_trailing_block_but_decoder_accepts_one() -> None:
    raw = b"\x01" * 254
    assert cobs.encode(raw) == b"\xff" + raw
    assert cobs.decode(b"\xff" + raw + b"\x01") == raw  # as the 1999 paper's encoder emits it


@pytest.mark.parametrize("bad", [b"", b"\x00", b"\x02", b"\x03\x41\x00", b"\x05\x11\x22", b"\xff" + b"\x01" * 10])
def test_decode_rejects_invalid(bad: bytes) -> None:
    with pytest.raises(CobsError):
        cobs.decode(bad)


def test_int_is_not_bytes() -> None:
    with pytest.raises(TypeError):
        cobs.encode(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- stream decoder


def framed(*packets: bytes) -> bytes:
    return b"".join(b"\x00" + cobs.encode(p) + b"\x00" for p in packets)


PACKETS = [b"first", b"", bytes(300), bytes(range(256)) * 3, b"\x00last\x00"]


def test_garbage_prefix_is_discarded_and_counted() -> None:
    dec = CobsStreamDecoder()
    garbage = b"\x05\x11\x22noise from before we listened"
    out = dec.feed(garbage + framed(*PACKETS))
    assert out == PACKETS
    assert dec.stats.garbage_bytes == len(garbage)
    assert dec.stats.as_dict() == {"packets": 5, "bytes_in": len(garbage) + len(framed(*PACKETS)),
                                   "dropped_invalid": 0, "dropped_oversize": 0,
                                   "garbage_bytes": len(garbage)}


def test_first_packet_without_leading_delimiter_is_lost_as_garbage() -> None:
    dec = CobsStreamDecoder()
    stream = cobs.encode(b"a") + b"\x00" + cobs.encode(b"b") + b"\x00"
    assert dec.feed(stream) == [b"b"]
    assert dec.stats.garbage_bytes == 2


def test_split_feeds_at_every_byte_boundary() -> None:
    stream = b"junk" + framed(*PACKETS)
    for cut in range(len(stream) + 1):
        dec = CobsStreamDecoder()
        assert dec.feed(stream[:cut]) + dec.feed(stream[cut:]) == PACKETS, cut
        assert dec.stats.packets == len(PACKETS) and dec.stats.garbage_bytes == 4


def test_one_byte_at_a_time() -> None:
    dec = CobsStreamDecoder()
    stream = framed(*PACKETS)
    out = [p for i in range(len(stream)) for p in dec.feed(stream[i:i + 1])]
    assert out == PACKETS and dec.stats.bytes_in == len(stream)


def test_truncated_packet_is_dropped_and_counted_next_is_fine() -> None:
    enc = cobs.encode(b"\x01" * 100 + b"\x00" + b"\x02" * 100)
    truncated = enc[:50]  # the first block announces 100 bytes: cannot decode
    dec = CobsStreamDecoder()
    out = dec.feed(b"\x00" + truncated + b"\x00" + cobs.encode(b"next") + b"\x00")
    assert out == [b"next"]
    assert dec.stats.dropped_invalid == 1
    assert dec.stats.garbage_bytes == 50


def test_oversize_packet_is_dropped_without_unbounded_buffering() -> None:
    dec = CobsStreamDecoder(max_packet=100)
    big = cobs.encode(bytes(range(1, 256)) * 40)
    out: list[bytes] = []
    out += dec.feed(b"\x00")
    for i in range(0, len(big), 7):
        out += dec.feed(big[i:i + 7])
        assert dec.buffered <= dec.max_encoded
    out += dec.feed(b"\x00" + framed(b"x" * 100, b"after"))
    assert out == [b"x" * 100, b"after"]
    assert dec.stats.dropped_oversize == 1
    assert dec.stats.garbage_bytes == len(big)


def test_decoded_length_over_max_is_oversize() -> None:
    """101 zeros encode in 102 bytes, within max_encoded_len(100): the decoded length decides."""
    dec = CobsStreamDecoder(max_packet=100)
    assert dec.feed(framed(bytes(101), bytes(100))) == [bytes(100)]
    assert dec.stats.dropped_oversize == 1 and dec.stats.packets == 1


def test_idle_delimiters_are_not_packets() -> None:
    dec = CobsStreamDecoder()
    assert dec.feed(b"\x00" * 50 + framed(b"a") + b"\x00" * 50) == [b"a"]
    assert dec.stats.as_dict()["garbage_bytes"] == 0 and dec.stats.dropped_invalid == 0


def test_reset_waits_for_the_next_delimiter() -> None:
    dec = CobsStreamDecoder()
    dec.feed(b"\x00" + cobs.encode(b"half")[:3])
    dec.reset()
    assert dec.feed(cobs.encode(b"lost") + b"\x00" + cobs.encode(b"kept") + b"\x00") == [b"kept"]
    assert dec.stats.garbage_bytes == len(cobs.encode(b"lost"))


def test_rejects_bad_max_packet() -> None:
    with pytest.raises(ValueError, match="max_packet"):
        CobsStreamDecoder(max_packet=-1)


# ---------------------------------------------------------------------------- property fuzz

# A stream is a list of delimited chunks; each is a sent packet (intact or truncated) or noise.
_item = st.one_of(
    st.tuples(st.just("packet"), st.binary(max_size=700)),
    st.tuples(st.just("truncated"), st.binary(min_size=1, max_size=700), st.floats(0.0, 0.999)),
    st.tuples(st.just("noise"), st.binary(min_size=1, max_size=300)),
)


def _chunks(items: list[tuple]) -> list[tuple[str, bytes, bytes | None]]:
    """(kind, chunk on the wire without delimiters, packet that was sent or None)."""
    out: list[tuple[str, bytes, bytes | None]] = []
    for item in items:
        if item[0] == "packet":
            out.append(("packet", cobs.encode(item[1]), item[1]))
        elif item[0] == "truncated":
            enc = cobs.encode(item[1])
            out.append(("truncated", enc[:int(len(enc) * item[2])], item[1]))
        else:
            out += [("noise", piece, None) for piece in item[1].split(b"\x00")]
    return out


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_item, max_size=12), prefix=st.binary(max_size=40),
       max_packet=st.integers(0, 600), cuts=st.lists(st.integers(0, 20000), max_size=8))
def test_stream_decoder_property(items: list[tuple], prefix: bytes, max_packet: int,
                                 cuts: list[int]) -> None:
    """Never raises; every intact packet within the limit comes out, in order and exact;
    every other delimited chunk either is counted as dropped or (noise, truncations that
    happen to decode: COBS has no checksum) comes out as exactly its own decoding; the
    counters add up."""
    prefix = prefix.replace(b"\x00", b"")
    chunks = _chunks(items)
    stream = prefix + b"\x00" + b"\x00".join(c for _, c, _ in chunks) + b"\x00"
    dec = CobsStreamDecoder(max_packet=max_packet)
    out: list[bytes] = []
    bounds = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    for a, b in zip(bounds, bounds[1:]):
        out += dec.feed(stream[a:b])
        assert dec.buffered <= dec.max_encoded

    expected: list[bytes] = []
    invalid = oversize = garbage = 0
    for kind, chunk, sent in chunks:
        if not chunk:
            continue  # idle
        if kind == "packet" and len(sent) <= max_packet:
            expected.append(sent)  # an intact packet is never lost
            continue
        try:
            decoded = cobs.decode(chunk)
        except CobsError:
            decoded = None
        if len(chunk) > dec.max_encoded or (decoded is not None and len(decoded) > max_packet):
            oversize += 1
            garbage += len(chunk)
        elif decoded is None:
            assert kind != "packet"
            invalid += 1
            garbage += len(chunk)
        else:
            expected.append(decoded)
    assert out == expected
    assert dec.stats.as_dict() == {"packets": len(expected), "bytes_in": len(stream),
                                   "dropped_invalid": invalid, "dropped_oversize": oversize,
                                   "garbage_bytes": garbage + len(prefix)}


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=2000))
def test_stream_decoder_never_raises_on_random_bytes(data: bytes) -> None:
    dec = CobsStreamDecoder(max_packet=512)
    out = dec.feed(data) + dec.feed(data[::-1])
    s = dec.stats
    assert s.packets == len(out)
    assert all(len(p) <= 512 for p in out)
    assert s.bytes_in == 2 * len(data)
    delimiters = 2 * data.count(0)
    assert s.garbage_bytes + dec.buffered + delimiters <= s.bytes_in


@settings(max_examples=1500, deadline=None)
@given(data=st.binary(max_size=3000))
def test_round_trip_property(data: bytes) -> None:
    enc = cobs.encode(data)
    assert b"\x00" not in enc and len(enc) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(enc) == data


# ---------------------------------------------------------------------------- fast paths
# Packets with hundreds of short blocks take the numpy paths (pointer doubling + a C-level
# walk); few or long blocks take the loops. Both must agree byte for byte with each other.


def _relu_f16(n_values: int, seed: int) -> bytes:
    """An activation as the wire carries it: ReLU-like float16, a zero byte every 2-4 bytes."""
    import numpy as np
    x = np.maximum(np.random.default_rng(seed).standard_normal(n_values), 0)
    return x.astype(np.float16).tobytes()


def _long_runs_and_zeros(seed: int) -> bytes:
    """64 KiB mixing zero-free runs of 254-3000 bytes (full 0xFF blocks) with zero-heavy stretches."""
    rng = random.Random(seed)
    parts = []
    while sum(map(len, parts)) < 65536:
        if rng.random() < 0.5:
            parts.append(bytes(rng.randrange(1, 256) for _ in range(rng.randrange(254, 3000))))
        else:
            parts.append(_relu_f16(rng.randrange(100, 2000), rng.randrange(1 << 30)))
    return b"".join(parts)[:65536]


FAST_CASES = {
    "relu64k": _relu_f16(32768, 1),
    "relu4k": _relu_f16(2048, 2),
    "long_runs64k": _long_runs_and_zeros(3),
    "zeros64k": bytes(65536),
    "dense64k": random.Random(4).randbytes(65536).replace(b"\x00", b"\x01"),
    "full_run_end": _relu_f16(2048, 5) + b"\x07" * 254,
}


@contextlib.contextmanager
def python_paths() -> Iterator[None]:
    """Hide the C extension so ``encode``/``decode`` take our numpy and loop paths."""
    saved, cobs._c = cobs._c, None  # noqa: SLF001
    try:
        yield
    finally:
        cobs._c = saved  # noqa: SLF001


@pytest.mark.parametrize("name", sorted(FAST_CASES))
def test_fast_paths_agree_with_the_loops(name: str) -> None:
    with python_paths():
        _fast_paths_agree(FAST_CASES[name])


def _fast_paths_agree(raw: bytes) -> None:
    enc = cobs.encode(raw)
    assert enc == cobs._encode_loop(raw)  # noqa: SLF001
    assert cobs.encode_delimited(raw) == b"\x00" + enc + b"\x00"
    assert cobs.decode(enc) == cobs._decode_loop(enc) == raw  # noqa: SLF001
    assert cobs._decode_vectorised(enc, len(enc) / 2) == raw  # noqa: SLF001 - forced numpy path
    if enc.endswith(b"\xff" + b"\x07" * 254):  # the trailing 0x01 block some encoders emit
        assert cobs._decode_vectorised(enc + b"\x01", len(enc) / 2) == raw  # noqa: SLF001


@pytest.mark.parametrize("name", ["relu64k", "long_runs64k", "relu4k"])
def test_fast_path_rejects_every_truncation_the_loop_rejects(name: str) -> None:
    enc = cobs.encode(FAST_CASES[name])
    rng = random.Random(6)
    for cut in [len(enc) - 1, len(enc) // 2, *(rng.randrange(300, len(enc)) for _ in range(40))]:
        try:
            expected = cobs._decode_loop(enc[:cut])  # noqa: SLF001
        except CobsError:
            expected = None
        try:
            got = cobs._decode_vectorised(enc[:cut], cut / 2)  # noqa: SLF001
        except CobsError:
            got = None
        assert got == expected, cut


def test_big_frames_split_across_many_reads_with_garbage_between() -> None:
    """As a tty delivers them: 4 KiB reads (and odd cuts) that split packets anywhere, noise
    between packets; whole packets inside one read are decoded in place, split ones buffered."""
    packets = [FAST_CASES["relu64k"], b"short", FAST_CASES["long_runs64k"], FAST_CASES["relu4k"]]
    noise = [b"\xfe\xfd noise", b"\x80\x81\x82"]  # cannot decode: the blocks overrun
    stream = (b"\x00" + cobs.encode(packets[0]) + b"\x00" + noise[0] + b"\x00"
              + b"".join(cobs.encode_delimited(p) for p in packets[1:3]) + noise[1]
              + cobs.encode_delimited(packets[3]))
    for step in (4095, 1000, 65536, 7):
        dec = CobsStreamDecoder()
        out = [p for i in range(0, len(stream), step) for p in dec.feed(stream[i:i + step])]
        assert out == packets, step
        assert dec.stats.as_dict() == {"packets": 4, "bytes_in": len(stream), "dropped_invalid": 2,
                                       "dropped_oversize": 0,
                                       "garbage_bytes": sum(map(len, noise))}, step
        assert dec.buffered == 0


def test_whole_oversize_packet_inside_one_read_is_counted_like_a_split_one() -> None:
    big = cobs.encode(FAST_CASES["relu4k"])
    for step in (len(big) + 10, 100):
        dec = CobsStreamDecoder(max_packet=1000)
        stream = b"\x00" + big + b"\x00" + cobs.encode(b"ok") + b"\x00"
        out = [p for i in range(0, len(stream), step) for p in dec.feed(stream[i:i + step])]
        assert out == [b"ok"]
        assert dec.stats.dropped_oversize == 1 and dec.stats.garbage_bytes == len(big)


@settings(max_examples=300, deadline=None)
@given(data=st.lists(st.one_of(st.binary(min_size=1, max_size=300),
                               st.sampled_from([b"\x00\x00", b"\x00", b"\x01\x02\x03" * 100])),
                     min_size=1, max_size=60))
def test_round_trip_property_zero_heavy(data: list[bytes]) -> None:
    """Zero-heavy packets long enough for the numpy paths, with 0xFF blocks mixed in."""
    raw = b"".join(data)
    with python_paths():
        enc = cobs.encode(raw)
        assert enc == cobs._encode_loop(raw)  # noqa: SLF001
        assert cobs.decode(enc) == raw
        if enc:
            assert cobs._decode_vectorised(enc, len(enc) / 2) == raw  # noqa: SLF001
    assert cobs.encode(raw) == enc and cobs.decode(enc) == raw   # and the C extension, when present


def test_c_extension_and_python_paths_agree_on_packets_and_garbage(monkeypatch: pytest.MonkeyPatch) -> None:
    """The C extension (PyPI "cobs") and our numpy/loop paths: same encodings, same packets,
    same rejections, and the stream decoder counts the same drops either way."""
    import nodes.cobs as mod
    if mod._c is None:
        pytest.skip("the cobs C extension is not installed; only the Python paths run here")
    rng = np.random.default_rng(7)
    packets = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(0, 3000, 150)]
    packets += [(np.maximum(rng.standard_normal(32768), 0).astype(np.float16)).tobytes(), bytes(range(1, 255)),
                bytes(300), b""]
    garbage = [rng.integers(1, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 400, 300)]
    stream = b"".join(mod.encode_delimited(p) for p in packets) + b"\x00".join(garbage) + b"\x00"

    def run() -> tuple[list[bytes], list[bytes | None], list[bytes], object]:
        enc = [mod.encode(p) for p in packets]
        dec = []
        for g in garbage:
            try:
                dec.append(mod.decode(g))
            except mod.CobsError:
                dec.append(None)
        d = mod.CobsStreamDecoder(max_packet=1 << 17)
        got = [p for i in range(0, len(stream), 977) for p in d.feed(stream[i:i + 977])]
        return enc, dec, got, d.stats

    with_c = run()
    monkeypatch.setattr(mod, "_c", None)
    without_c = run()
    assert with_c[0] == without_c[0] and with_c[1] == without_c[1]
    assert with_c[2] == without_c[2] and with_c[3] == without_c[3]
    assert with_c[2][:len(packets)] == packets   # every packet came back first, then nothing of the garbage
