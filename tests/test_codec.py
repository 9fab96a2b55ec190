"""Tests of nodes.codec: round trips, and a decoder that counts and drops every bad buffer.

Compression runs the real zstandard and lz4 libraries; bombs are built with them too.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.codec import (
    HEADER_SIZE, MAX_DECOMPRESSED_BYTES, TRAILER_SIZE, Compression, Decoder, Encoding, FrameError,
    FrameType, decode_frame, encode_frame, run_id_hash,
)

ROOT = Path(__file__).resolve().parent.parent

IDS = dict(run_id=0xDEADBEEF, sample_id=42, shard=3, seq=7, send_ts_ns=1_700_000_000_123_456_789)
SHAPES = [(), (5,), (3, 4), (2, 3, 4), (1, 2, 3, 4), (0,), (2, 0, 3)]


def _frame(array=None, **kw) -> bytes:
    if array is None:
        array = np.linspace(-3, 5, 24, dtype=np.float32).reshape(2, 3, 4)
    return encode_frame(array, **{**IDS, **kw})


def _crc_ok(buf: bytes) -> bool:
    return len(buf) >= 4 and zlib.crc32(buf[:-4]) == struct.unpack("<I", buf[-4:])[0]


def _recrc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def _forge(payload: bytes, *, shape: tuple[int, ...], encoding: Encoding = Encoding.F32,
           compression: Compression = Compression.ZSTD, flags: int | None = None) -> bytes:
    """A CRC-valid frame around ``payload`` whose header claims ``shape`` and the given flags."""
    dims = list(shape) + [0] * (4 - len(shape))
    if flags is None:
        flags = int(encoding) | int(compression) << 4
    head = struct.pack("<2sBBHIIHIQBB4II", b"HB", 1, 1, flags, 1, 2, 3, 4, 5, 0, len(shape),
                       *dims, len(payload))
    return _recrc(head + payload)


def _assert_close(encoding: Encoding, got: np.ndarray, x: np.ndarray, plain: bytes) -> None:
    """``got`` is ``x`` within ``encoding``'s tolerance (int8: the scale read from ``plain``,
    the uncompressed frame)."""
    if encoding is Encoding.F32:
        np.testing.assert_array_equal(got, x)
    elif encoding is Encoding.F16:
        np.testing.assert_allclose(got, x, rtol=1e-3, atol=0)
    else:
        scale = struct.unpack_from("<f", plain, HEADER_SIZE)[0]
        tol = scale / 2 + 1e-6 * float(np.abs(x).max(initial=0))
        assert np.all(np.abs(got - x) <= tol)


# ------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("encoding", list(Encoding))
def test_round_trip_every_encoding_and_shape(shape, encoding):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 10).astype(np.float32)
    buf = encode_frame(x, encoding=encoding, **IDS)
    frame = decode_frame(buf)
    assert frame.array.dtype == np.float32 and frame.array.shape == shape
    assert (frame.run_id, frame.sample_id, frame.shard, frame.seq, frame.send_ts_ns) == (
        IDS["run_id"], IDS["sample_id"], IDS["shard"], IDS["seq"], IDS["send_ts_ns"])
    assert frame.encoding is encoding and frame.frame_type is FrameType.ACTIVATION
    assert frame.compression is Compression.NONE
    assert frame.wire_bytes == len(buf)
    _assert_close(encoding, frame.array, x, buf)


@pytest.mark.parametrize("shape", [(), (0,), (7,), (1, 16), (1, 512), (2, 3, 4, 5)])
@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("encoding", list(Encoding))
def test_round_trip_every_encoding_and_compression(shape, encoding, compression):
    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal(shape) * 4, 0).astype(np.float32)   # ReLU-like
    buf = encode_frame(x, encoding=encoding, compression=compression, **IDS)
    frame = decode_frame(buf)
    assert frame.array.dtype == np.float32 and frame.array.shape == shape
    assert (frame.encoding, frame.compression) == (encoding, compression)
    assert (frame.run_id, frame.sample_id, frame.shard, frame.seq, frame.send_ts_ns) == tuple(IDS.values())
    flags, = struct.unpack_from("<H", buf, 4)
    assert flags == int(encoding) | int(compression) << 4
    (payload_len,) = struct.unpack_from("<I", buf, HEADER_SIZE - 4)
    assert payload_len == len(buf) - HEADER_SIZE - TRAILER_SIZE == frame.wire_bytes - HEADER_SIZE - TRAILER_SIZE
    uncompressed = encode_frame(x, encoding=encoding, **IDS)
    _assert_close(encoding, frame.array, x, uncompressed)
    np.testing.assert_array_equal(frame.array, decode_frame(uncompressed).array)


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.LZ4])
def test_compression_shrinks_a_sparse_activation_and_header_carries_wire_length(compression):
    x = np.zeros((1, 4096), dtype=np.float32)
    x[0, ::16] = np.arange(256, dtype=np.float32)
    plain = encode_frame(x, **IDS)
    packed = encode_frame(x, compression=compression, **IDS)
    assert len(packed) < len(plain) // 4
    (payload_len,) = struct.unpack_from("<I", packed, HEADER_SIZE - 4)
    assert payload_len == len(packed) - HEADER_SIZE - TRAILER_SIZE
    np.testing.assert_array_equal(decode_frame(packed).array, x)


def test_wire_formats_are_the_stock_ones():
    """ZSTD is one standard zstd frame with its content size; LZ4 a raw block, no stored size."""
    import lz4.block
    import zstandard

    x = np.arange(64, dtype=np.float32)
    raw = x.astype("<f4").tobytes()
    zbuf = encode_frame(x, compression=Compression.ZSTD, **IDS)
    zpayload = zbuf[HEADER_SIZE:-TRAILER_SIZE]
    assert zpayload[:4] == b"\x28\xb5\x2f\xfd" and zstandard.frame_content_size(zpayload) == len(raw)
    assert zstandard.ZstdDecompressor().decompress(zpayload) == raw
    lbuf = encode_frame(x, compression=Compression.LZ4, **IDS)
    assert lz4.block.decompress(lbuf[HEADER_SIZE:-TRAILER_SIZE], uncompressed_size=len(raw)) == raw


@pytest.mark.parametrize("compression, level", [(Compression.ZSTD, -5), (Compression.ZSTD, 19),
                                                (Compression.LZ4, 1), (Compression.LZ4, 12)])
def test_compression_levels_round_trip(compression, level):
    x = np.maximum(np.random.default_rng(2).standard_normal(512), 0).astype(np.float32)
    buf = encode_frame(x, compression=compression, compression_level=level, **IDS)
    np.testing.assert_array_equal(decode_frame(buf).array, x)


@pytest.mark.parametrize("bad", [
    dict(compression=Compression.NONE, compression_level=1),
    dict(compression=Compression.ZSTD, compression_level=23),
    dict(compression=Compression.ZSTD, compression_level=1.5),
    dict(compression=Compression.LZ4, compression_level=0),
    dict(compression=Compression.LZ4, compression_level=13),
    dict(compression=3),
])
def test_encode_rejects_bad_compression_settings(bad):
    with pytest.raises(ValueError):
        _frame(**bad)


@pytest.mark.parametrize("value", [0.0, 2.5, -7.0])
def test_int8_constant_tensor(value):
    x = np.full((3, 3), value, dtype=np.float32)
    frame = decode_frame(encode_frame(x, encoding=Encoding.INT8_AFFINE, **IDS))
    np.testing.assert_allclose(frame.array, x, atol=abs(value) / 255 / 2 + 1e-6)


def test_int8_keeps_zero_exact_and_uses_one_byte_per_value():
    x = np.array([0.0, 0.0, 1.0, 3.0, -2.0], dtype=np.float32)
    buf = encode_frame(x, encoding=Encoding.INT8_AFFINE, **IDS)
    assert len(buf) == HEADER_SIZE + 8 + x.size + TRAILER_SIZE
    assert decode_frame(buf).array[0] == 0.0


def test_f32_carries_nan_and_inf():
    x = np.array([np.nan, np.inf, -np.inf, 1.0], dtype=np.float32)
    np.testing.assert_array_equal(decode_frame(encode_frame(x, **IDS)).array, x)


def test_heartbeat_and_non_float_input():
    frame = decode_frame(_frame(np.empty(0), frame_type=FrameType.HEARTBEAT))
    assert frame.frame_type is FrameType.HEARTBEAT and frame.array.shape == (0,)
    frame = decode_frame(_frame(np.arange(6, dtype=np.int64).reshape(2, 3)))
    np.testing.assert_array_equal(frame.array, np.arange(6).reshape(2, 3))


def test_run_id_hash_is_stable_u32():
    assert run_id_hash("run-1") == zlib.crc32(b"run-1")
    assert 0 <= run_id_hash("é" * 100) <= 0xFFFFFFFF


@pytest.mark.parametrize("bad", [
    dict(array=np.zeros((1, 1, 1, 1, 1))),
    dict(array=np.array([np.nan]), encoding=Encoding.INT8_AFFINE),
    dict(array=np.array([1e6]), encoding=Encoding.F16),
    dict(array=np.array(["a"])),
    dict(shard=70000), dict(seq=-1), dict(run_id=2**32), dict(send_ts_ns=2**64),
])
def test_encode_rejects(bad):
    with pytest.raises(ValueError):
        _frame(**bad)


# ------------------------------------------------------------------------- bad buffers


def test_truncation_at_every_offset_is_counted_as_truncated():
    buf = _frame()
    dec = Decoder()
    for cut in range(len(buf)):
        assert dec.decode(buf[:cut]) is None
    assert dec.stats.truncated == len(buf) and dec.stats.ok == 0
    assert dec.stats.total_dropped == len(buf)


@pytest.mark.parametrize("encoding", list(Encoding))
def test_every_single_bit_flip_is_dropped(encoding):
    buf = _frame(encoding=encoding)
    dec = Decoder()
    for bit in range(len(buf) * 8):
        mutated = bytearray(buf)
        mutated[bit // 8] ^= 1 << (bit % 8)
        assert dec.decode(mutated) is None, f"bit {bit} flip accepted"
    assert dec.stats.ok == 0 and dec.stats.total_dropped == len(buf) * 8
    assert dec.stats.bad_crc > 0 and dec.stats.bad_magic == 16 and dec.stats.bad_version == 8


def test_wrong_magic_and_version():
    buf = _frame()
    dec = Decoder()
    assert dec.decode(b"XY" + buf[2:]) is None
    assert dec.decode(buf[:2] + b"\x02" + buf[3:]) is None
    assert dec.decode(b"X") is None
    assert (dec.stats.bad_magic, dec.stats.bad_version) == (2, 1)
    with pytest.raises(FrameError, match="magic") as info:
        decode_frame(b"XY" + buf[2:])
    assert info.value.reason == "bad_magic"


@pytest.mark.parametrize("flag_bit", range(4, 16))
def test_unknown_flag_bits_are_malformed(flag_bit):
    """Bits 6-15 are unknown; bits 4-5 say 'compressed', which a raw payload is not."""
    buf = _frame()
    flags = struct.unpack_from("<H", buf, 4)[0] | (1 << flag_bit)
    body = buf[:4] + struct.pack("<H", flags) + buf[6:-4]
    dec = Decoder()
    assert dec.decode(_recrc(body)) is None
    assert dec.stats.malformed == 1 and dec.stats.bad_crc == 0


@pytest.mark.parametrize("offset,value", [
    (3, 9),           # unknown frame type
    (4, 7),           # unknown encoding
    (28, 1),          # dtype not float32
    (29, 5),          # ndim > 4
])
def test_crc_valid_but_malformed_header(offset, value):
    buf = bytearray(_frame())
    buf[offset] = value
    with pytest.raises(FrameError) as info:
        decode_frame(_recrc(bytes(buf[:-4])))
    assert info.value.reason == "malformed"


def test_payload_len_mismatch_and_trailing_bytes_are_malformed():
    buf = _frame()
    (payload_len,) = struct.unpack_from("<I", buf, HEADER_SIZE - 4)
    body = buf[:HEADER_SIZE - 4] + struct.pack("<I", payload_len + 4) + buf[HEADER_SIZE:-4] + b"\0" * 4
    dec = Decoder()
    assert dec.decode(_recrc(body)) is None
    assert dec.decode(buf + b"\0") is None
    assert dec.stats.malformed == 2


# ------------------------------------------------------------------------- compressed payloads


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("encoding", list(Encoding))
def test_every_single_bit_flip_of_a_compressed_frame_is_dropped(encoding, compression):
    buf = encode_frame(np.linspace(0, 3, 12, dtype=np.float32), encoding=encoding,
                       compression=compression, **IDS)
    dec = Decoder()
    for bit in range(len(buf) * 8):
        mutated = bytearray(buf)
        mutated[bit // 8] ^= 1 << (bit % 8)
        assert dec.decode(mutated) is None, f"bit {bit} flip accepted"
    assert dec.stats.ok == 0 and dec.stats.total_dropped == len(buf) * 8


def test_unknown_compression_value_is_malformed():
    buf = _frame(compression=Compression.LZ4)
    flags = struct.unpack_from("<H", buf, 4)[0] | 0x30       # compression 3
    dec = Decoder()
    assert dec.decode(_recrc(buf[:4] + struct.pack("<H", flags) + buf[6:-4])) is None
    assert dec.stats.malformed == 1 and "unknown compression 3" in (dec.last_error or "")


@pytest.mark.parametrize("compression", [Compression.ZSTD, Compression.LZ4])
@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\xff" * 7, bytes(range(256)),
                                     b"\x28\xb5\x2f\xfd" + b"\x00" * 20])
def test_garbage_compressed_payload_is_malformed(compression, garbage):
    dec = Decoder()
    assert dec.decode(_forge(garbage, shape=(4,), compression=compression)) is None
    assert dec.stats.malformed == 1 and dec.stats.total_dropped == 1
    with pytest.raises(FrameError) as info:
        decode_frame(_forge(garbage, shape=(4,), compression=compression))
    assert info.value.reason == "malformed"


def _zstd(raw: bytes, *, content_size: bool = True) -> bytes:
    import zstandard

    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    if content_size:
        return cctx.compress(raw)
    obj = cctx.compressobj()
    return obj.compress(raw) + obj.flush()


def _lz4(raw: bytes) -> bytes:
    import lz4.block

    return lz4.block.compress(raw, store_size=False)


@pytest.mark.parametrize("make", [lambda raw: _zstd(raw), lambda raw: _zstd(raw, content_size=False),
                                  _lz4], ids=["zstd", "zstd-streamed", "lz4"])
@pytest.mark.parametrize("raw_len", [12, 20])        # the header implies 16 bytes
def test_payload_that_inflates_to_another_size_is_malformed(make, raw_len):
    compression = Compression.LZ4 if make is _lz4 else Compression.ZSTD
    buf = _forge(make(bytes(range(raw_len))), shape=(4,), compression=compression)
    dec = Decoder()
    assert dec.decode(buf) is None and dec.stats.malformed == 1


def test_zstd_payload_with_trailing_bytes_or_two_frames_is_malformed():
    raw = np.arange(4, dtype="<f4").tobytes()
    dec = Decoder()
    assert dec.decode(_forge(_zstd(raw) + b"\x00", shape=(4,))) is None
    assert dec.decode(_forge(_zstd(raw[:8]) + _zstd(raw[8:]), shape=(4,))) is None
    assert dec.stats.malformed == 2 and dec.stats.ok == 0


BOMB_BYTES = 32 << 20   # what the bombs inflate to; each is a few KiB (zstd) to 128 KiB (lz4) on the wire


@pytest.fixture(scope="module")
def bombs() -> dict[str, tuple[bytes, Compression]]:
    zeros = bytes(BOMB_BYTES)
    return {"zstd": (_zstd(zeros), Compression.ZSTD),
            "zstd-streamed": (_zstd(zeros, content_size=False), Compression.ZSTD),
            "lz4": (_lz4(zeros), Compression.LZ4)}


@pytest.mark.parametrize("kind", ["zstd", "zstd-streamed", "lz4"])
def test_decompression_bomb_is_malformed_and_never_inflated(bombs, kind):
    """A tiny frame claiming a 4 KiB shape whose payload inflates to 32 MiB."""
    payload, compression = bombs[kind]
    buf = _forge(payload, shape=(1, 1024), compression=compression)
    assert len(buf) < BOMB_BYTES // 200          # LZ4 tops out near 255:1, zstd far above
    dec = Decoder()
    tracemalloc.start()
    try:
        assert dec.decode(buf) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert dec.stats.malformed == 1 and dec.stats.ok == 0
    assert peak < 4 << 20, f"decoder allocated {peak} bytes for a 4 KiB frame"


@pytest.mark.parametrize("kind", ["zstd", "zstd-streamed", "lz4"])
def test_bomb_claiming_a_huge_shape_is_refused_before_inflating(bombs, kind):
    payload, compression = bombs[kind]
    for shape in [(65535, 65535, 65535, 65535), (BOMB_BYTES // 4,)]:
        buf = _forge(payload, shape=shape, compression=compression)
        dec = Decoder(max_decompressed_bytes=1 << 20)
        tracemalloc.start()
        try:
            assert dec.decode(buf) is None
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert dec.stats.malformed == 1 and "max_decompressed_bytes" in (dec.last_error or "")
        assert peak < 1 << 20


def test_max_decompressed_bytes_is_the_decoders_knob():
    x = np.ones(2048, dtype=np.float32)                   # 8 KiB decoded
    buf = encode_frame(x, compression=Compression.ZSTD, **IDS)
    assert Decoder(max_decompressed_bytes=8 << 10).decode(buf) is not None
    assert Decoder(max_decompressed_bytes=(8 << 10) - 1).decode(buf) is None
    assert MAX_DECOMPRESSED_BYTES >= 1 << 20
    plain = encode_frame(x, **IDS)                        # the cap is about inflation only
    assert Decoder(max_decompressed_bytes=16).decode(plain) is not None
    with pytest.raises(ValueError):
        Decoder(max_decompressed_bytes=-1)


def test_compression_libraries_are_imported_only_when_a_frame_uses_them():
    code = """if True:
        import sys
        sys.modules["zstandard"] = None; sys.modules["lz4"] = None   # as if not installed
        import numpy as np
        from nodes.codec import Compression, Decoder, decode_frame, encode_frame
        ids = dict(run_id=1, sample_id=2, shard=3, seq=4, send_ts_ns=5)
        x = np.arange(8, dtype=np.float32)
        assert (decode_frame(encode_frame(x, **ids)).array == x).all()
        for comp, pkg in ((Compression.ZSTD, "zstandard"), (Compression.LZ4, "lz4")):
            try:
                encode_frame(x, compression=comp, **ids)
            except ModuleNotFoundError as exc:
                assert pkg in str(exc), exc
            else:
                raise AssertionError("encoded without the library")
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    code_rx = """if True:
        import sys
        from nodes.codec import Compression, Decoder, encode_frame
        import numpy as np
        ids = dict(run_id=1, sample_id=2, shard=3, seq=4, send_ts_ns=5)
        frame = encode_frame(np.arange(8.0), compression=Compression.LZ4, **ids)
        assert "zstandard" not in sys.modules
        sys.modules["lz4"] = None; sys.modules["lz4.block"] = None   # receiver without lz4
        dec = Decoder()
        assert dec.decode(frame) is None and dec.stats.malformed == 1
        assert "pip install lz4" in dec.last_error, dec.last_error
        print("ok")
    """
    out = subprocess.run([sys.executable, "-c", code_rx], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_decoder_accepts_bytearray_and_memoryview_and_counts_ok():
    buf = _frame()
    dec = Decoder()
    assert dec.decode(bytearray(buf)) is not None
    assert dec.decode(memoryview(buf)) is not None
    assert dec.decode("not bytes") is None  # type: ignore[arg-type]
    assert dec.decode(12) is None  # type: ignore[arg-type]  (not 12 zero bytes)
    assert dec.stats.as_dict() == dict(ok=2, bad_magic=0, bad_version=0, truncated=0,
                                       bad_crc=0, malformed=2, too_large=0, internal_errors=0,
                                       total_dropped=2)


# ------------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SMALL = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_never_raise(data):
    dec = Decoder()
    frame = dec.decode(data)
    assert frame is None or _crc_ok(data)
    assert dec.stats.ok + dec.stats.total_dropped == 1


@FUZZ
@given(st.binary(min_size=0, max_size=200), st.binary(max_size=200))
def test_fuzz_magic_prefixed_bytes_never_raise(header, payload):
    data = b"HB\x01" + header + payload
    frame = Decoder().decode(data)
    assert frame is None or _crc_ok(data)


@FUZZ
@given(st.integers(0, 3), st.integers(0, 0x3F), st.integers(0, 1), st.integers(0, 5),
       st.lists(st.integers(0, 4), min_size=4, max_size=4), st.binary(max_size=80),
       st.integers(-2, 2))
def test_fuzz_crc_valid_random_headers_never_raise(ftype, flags, dtype, ndim, dims, payload,
                                                   len_skew):
    """Near-valid header fields with a correct CRC exercise every semantic check."""
    payload_len = max(0, len(payload) + len_skew)
    body = struct.pack("<2sBBHIIHIQBB4II", b"HB", 1, ftype, flags, 1, 2, 3, 4, 5, dtype, ndim,
                       *dims, payload_len) + payload
    data = _recrc(body)
    dec = Decoder()
    frame = dec.decode(data)
    assert dec.stats.ok + dec.stats.total_dropped == 1
    if frame is not None:
        assert frame.array.dtype == np.float32 and frame.array.ndim == ndim <= 4
        assert _crc_ok(data) and flags < 0x30 and flags & 0xF < 3 and dtype == 0


@FUZZ_SMALL
@given(st.sampled_from([Compression.ZSTD, Compression.LZ4]), st.sampled_from(list(Encoding)),
       st.lists(st.integers(0, 64), min_size=0, max_size=2), st.binary(max_size=120))
def test_fuzz_garbage_compressed_payloads_never_raise(compression, encoding, shape, payload):
    dec = Decoder()
    frame = dec.decode(_forge(payload, shape=tuple(shape), encoding=encoding,
                              compression=compression))
    assert dec.stats.ok + dec.stats.total_dropped == 1
    if frame is not None:   # only a genuine compressed stream of exactly the implied size
        assert frame.array.shape == tuple(shape) and frame.compression is compression


@FUZZ_SMALL
@given(st.sampled_from([Compression.ZSTD, Compression.LZ4]), st.sampled_from(list(Encoding)),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_compressed_payloads_with_fixed_crc_never_raise(compression, encoding, mutations):
    """Corrupt the compressed bytes and repair the CRC, so the decompressors see the damage."""
    x = np.maximum(np.random.default_rng(3).standard_normal(300), 0).astype(np.float32)
    buf = bytearray(encode_frame(x, encoding=encoding, compression=compression, **IDS))
    body_len = len(buf) - HEADER_SIZE - TRAILER_SIZE
    for pos, xor in mutations:
        buf[HEADER_SIZE + pos % body_len] ^= xor
    dec = Decoder()
    frame = dec.decode(_recrc(bytes(buf[:-TRAILER_SIZE])))
    assert dec.stats.ok + dec.stats.total_dropped == 1
    if frame is not None:
        assert frame.array.shape == x.shape and frame.array.dtype == np.float32


@FUZZ
@given(st.sampled_from(list(Encoding)), st.sampled_from(list(Compression)),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_valid_frames_are_never_accepted_with_bad_crc(encoding, compression, mutations):
    buf = bytearray(_frame(encoding=encoding, compression=compression))
    for pos, xor in mutations:
        buf[pos % len(buf)] ^= xor
    frame = Decoder().decode(bytes(buf))
    assert frame is None or _crc_ok(bytes(buf))


# ------------------------------------------------------------------------- fast paths


def _f16_hard_cases() -> np.ndarray:
    """Every finite float16 as float32, one float32 ulp either side, and every midpoint between
    neighbouring float16 values (the round-half-to-even ties) with its neighbours, both signs."""
    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    f = every[np.isfinite(every)].astype(np.float32)
    u = f.view(np.uint32)
    pos = np.unique(np.abs(f))
    mid = ((pos[:-1].astype(np.float64) + pos[1:]) / 2).astype(np.float32)
    mu = mid.view(np.uint32)
    x = np.concatenate([f, (u + 1).view(np.float32), (u - 1).view(np.float32),
                        mid, (mu + 1).view(np.float32), (mu - 1).view(np.float32)])
    x = np.concatenate([x, -x]).astype(np.float32)
    return x[np.isfinite(x) & (np.abs(x) <= 65504)]


@pytest.fixture(params=["numpy", "torch"])
def f16_backend(request):
    """Run a test with each float16 conversion, chosen as a process chooses it; back to the
    default (numpy) afterwards."""
    import nodes.codec as codec
    if request.param == "torch":
        pytest.importorskip("torch")
    codec.use_f16_backend(request.param)
    assert codec.f16_backend() == request.param
    yield request.param
    codec.use_f16_backend("numpy")


def test_f16_fast_path_is_bit_identical_to_numpys_cast():
    from nodes.codec import _to_f16_bits
    x = _f16_hard_cases()
    np.testing.assert_array_equal(_to_f16_bits(x), x.astype(np.float16).view(np.uint16))


def test_f16_encoding_is_bit_identical_to_numpys_cast(f16_backend):
    x = _f16_hard_cases()
    buf = encode_frame(x, encoding=Encoding.F16, **IDS)
    assert buf[HEADER_SIZE:-TRAILER_SIZE] == x.astype("<f2").tobytes()


def test_f16_decoding_matches_numpys_cast_for_every_bit_pattern(f16_backend):
    every = np.arange(1 << 16, dtype=np.uint32).astype("<u2")
    ref = every.view("<f2").astype(np.float32)
    head = struct.pack("<2sBBHIIHIQBB4II", b"HB", 1, 1, int(Encoding.F16), 0, 0, 0, 0, 0, 0, 1,
                       every.size, 0, 0, 0, every.nbytes)
    body = head + every.tobytes()
    got = decode_frame(body + struct.pack("<I", zlib.crc32(body))).array
    nan = np.isnan(ref)
    np.testing.assert_array_equal(got[~nan].view(np.uint32), ref[~nan].view(np.uint32))
    assert np.isnan(got[nan]).all()
    if f16_backend == "numpy":   # the table keeps NaN payloads; torch quiets signalling NaNs
        np.testing.assert_array_equal(got.view(np.uint32), ref.view(np.uint32))


@pytest.mark.parametrize("values", [[np.nan, 1.0], [np.inf, -2.0], [-np.inf], [65504.0, -65504.0]])
def test_f16_non_finite_and_extreme_values_take_numpys_cast(values, f16_backend):
    x = np.array(values, dtype=np.float32)
    buf = encode_frame(x, encoding=Encoding.F16, **IDS)
    assert buf[HEADER_SIZE:-TRAILER_SIZE] == x.astype("<f2").tobytes()


def test_f16_round_trip_of_a_read_only_array_warns_nothing(f16_backend):
    import warnings
    x = decode_frame(encode_frame(np.linspace(-3, 3, 64, dtype=np.float32), **IDS)).array
    assert not x.flags.writeable   # a decoded f32 frame, re-encoded as f16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = decode_frame(encode_frame(x, encoding=Encoding.F16, **IDS))
    np.testing.assert_array_equal(frame.array, x.astype(np.float16).astype(np.float32))


def test_f16_falls_back_to_numpy_when_torchs_numpy_bridge_is_broken(monkeypatch):
    torch = pytest.importorskip("torch")
    import nodes.codec as codec

    def broken(*_a, **_k):
        raise RuntimeError("Numpy is not available")

    monkeypatch.setattr(torch, "from_numpy", broken)
    x = np.linspace(-3, 3, 50, dtype=np.float32)
    try:
        codec.use_f16_backend("torch")
        buf = encode_frame(x, encoding=Encoding.F16, **IDS)
        assert buf[HEADER_SIZE:-TRAILER_SIZE] == x.astype("<f2").tobytes()
        assert codec.f16_backend() == "numpy"   # and it stays there
        assert encode_frame(x, encoding=Encoding.F16, **IDS) == buf
        codec.use_f16_backend("torch")   # the decode side on its own
        frame = Decoder().decode(buf)
        assert frame is not None and codec.f16_backend() == "numpy"
        np.testing.assert_array_equal(frame.array, x.astype(np.float16).astype(np.float32))
    finally:
        codec.use_f16_backend("numpy")


def test_f16_backend_is_numpy_until_chosen_even_with_torch_loaded(monkeypatch):
    """A torch in sys.modules (imported by anyone) does not switch the codec: only a choice does."""
    import types

    import nodes.codec as codec
    fake = types.ModuleType("torch")
    fake.from_numpy = lambda a: (_ for _ in ()).throw(AssertionError("torch used without being chosen"))
    monkeypatch.setitem(sys.modules, "torch", fake)
    assert codec.f16_backend() == "numpy"
    x = np.arange(10, dtype=np.float32)
    frame = decode_frame(encode_frame(x, encoding=Encoding.F16, **IDS))
    np.testing.assert_array_equal(frame.array, x)
    assert codec.f16_backend() == "numpy"


def test_choosing_torch_without_torch_is_refused_and_keeps_numpy(monkeypatch):
    import nodes.codec as codec
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch raises ImportError
    with pytest.raises(ModuleNotFoundError, match="float16 backend 'torch' needs the 'torch' package") as err:
        codec.use_f16_backend("torch")
    assert err.value.name == "torch"
    assert codec.f16_backend() == "numpy"


def test_an_unknown_f16_backend_is_refused_naming_the_known_ones():
    import nodes.codec as codec
    with pytest.raises(ValueError, match="unknown float16 backend 'cuda'; expected one of numpy, torch"):
        codec.use_f16_backend("cuda")
    assert codec.f16_backend() == "numpy"


def test_f16_out_of_range_is_refused_by_both_backends(f16_backend):
    with pytest.raises(ValueError, match="float16 range"):
        encode_frame(np.array([1.0, 70000.0], dtype=np.float32), encoding=Encoding.F16, **IDS)


def _codec_in_a_fresh_process(choose: str) -> list[str]:
    code = ("import sys, numpy as np\n"
            "from nodes.codec import encode_frame, decode_frame, Encoding, f16_backend, use_f16_backend\n"
            f"{choose}\n"
            "f = encode_frame(np.ones(8, np.float32), encoding=Encoding.F16, run_id=1, sample_id=0,"
            " shard=0, seq=0, send_ts_ns=0)\n"
            "decode_frame(f)\n"
            "print(f16_backend(), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    return out.stdout.split()


def test_codec_never_imports_torch_itself():
    assert _codec_in_a_fresh_process("pass") == ["numpy", "False"]
    assert _codec_in_a_fresh_process("use_f16_backend('numpy')") == ["numpy", "False"]


def test_choosing_the_torch_backend_imports_torch():
    pytest.importorskip("torch")
    assert _codec_in_a_fresh_process("use_f16_backend('torch')") == ["torch", "True"]


def test_f32_decode_is_a_read_only_view_of_the_frame():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    frame = decode_frame(encode_frame(x, **IDS))
    np.testing.assert_array_equal(frame.array, x)
    assert not frame.array.flags.writeable
    copy = frame.array.copy()
    copy += 1  # a copy is the way to write


def test_encode_accepts_non_contiguous_and_other_dtypes():
    base = np.arange(40, dtype=np.float64).reshape(5, 8)
    for enc in Encoding:
        x = base[:, ::2]
        frame = decode_frame(encode_frame(x, encoding=enc, **IDS))
        assert frame.array.shape == x.shape
        np.testing.assert_allclose(frame.array, x, atol=0.1)
