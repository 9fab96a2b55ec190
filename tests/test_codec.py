"""Tests of nodes.codec: round trips, and a decoder that counts and drops every bad buffer."""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes.codec import (
    HEADER_SIZE, TRAILER_SIZE, Decoder, Encoding, FrameError, FrameType, decode_frame,
    encode_frame, run_id_hash,
)

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
    assert frame.wire_bytes == len(buf)
    if encoding is Encoding.F32:
        np.testing.assert_array_equal(frame.array, x)
    elif encoding is Encoding.F16:
        np.testing.assert_allclose(frame.array, x, rtol=1e-3, atol=0)
    else:
        scale = struct.unpack_from("<f", buf, HEADER_SIZE)[0]
        tol = scale / 2 + 1e-6 * float(np.abs(x).max(initial=0))
        assert np.all(np.abs(frame.array - x) <= tol)


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


def test_decoder_accepts_bytearray_and_memoryview_and_counts_ok():
    buf = _frame()
    dec = Decoder()
    assert dec.decode(bytearray(buf)) is not None
    assert dec.decode(memoryview(buf)) is not None
    assert dec.decode("not bytes") is None  # type: ignore[arg-type]
    assert dec.stats.as_dict() == dict(ok=2, bad_magic=0, bad_version=0, truncated=0,
                                       bad_crc=0, malformed=1, total_dropped=1)


# ------------------------------------------------------------------------- fuzz

FUZZ = settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
        assert _crc_ok(data) and flags < 16 and dtype == 0


@FUZZ
@given(st.sampled_from(list(Encoding)),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_valid_frames_are_never_accepted_with_bad_crc(encoding, mutations):
    buf = bytearray(_frame(encoding=encoding))
    for pos, xor in mutations:
        buf[pos % len(buf)] ^= xor
    frame = Decoder().decode(bytes(buf))
    assert frame is None or _crc_ok(bytes(buf))
