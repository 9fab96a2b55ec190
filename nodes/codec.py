"""Data-plane wire frame: encode arrays into frames and decode them back.

A frame is a fixed little-endian header, a payload and a CRC32 trailer::

    magic "HB" | version u8 | type u8 | flags u16 | run_id u32 | sample_id u32 |
    shard u16 | seq u32 | send_ts_ns u64 | dtype u8 | ndim u8 | shape 4 x u32 |
    payload_len u32 || payload || crc32(header + payload) u32

flags: bits 0-3 are the payload `Encoding`; bits 4-5 are reserved for compression and
every other bit is unknown, so a frame with any of bits 4-15 set is dropped as malformed.

The `Decoder` never raises on garbage: it counts the reason and returns None.
`decode_frame` is the strict variant for tests and tools.

This module must import only numpy and the standard library, and must do no I/O: framing
for a byte stream (COBS) or fragmenting for BLE belongs to the transports.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import asdict, dataclass
from enum import IntEnum

import numpy as np

__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "TRAILER_SIZE", "MAX_NDIM",
    "FrameType", "Encoding", "Frame", "FrameError", "DecodeStats", "Decoder",
    "run_id_hash", "encode_frame", "decode_frame",
]

MAGIC = b"HB"
VERSION = 1
MAX_NDIM = 4
DTYPE_FLOAT32 = 0

_HEADER = struct.Struct("<2sBBHIIHIQBB4II")
_TRAILER = struct.Struct("<I")
HEADER_SIZE: int = _HEADER.size
TRAILER_SIZE: int = _TRAILER.size

_ENCODING_MASK = 0x000F
_INT8_PARAMS = struct.Struct("<fi")  # scale f32, zero_point i32

_U16 = 0xFFFF
_U32 = 0xFFFF_FFFF
_U64 = 0xFFFF_FFFF_FFFF_FFFF


class FrameType(IntEnum):
    ACTIVATION = 1
    HEARTBEAT = 2


class Encoding(IntEnum):
    F32 = 0
    F16 = 1
    INT8_AFFINE = 2


_ITEMSIZE = {Encoding.F32: 4, Encoding.F16: 2, Encoding.INT8_AFFINE: 1}
_PAYLOAD_PREFIX = {Encoding.F32: 0, Encoding.F16: 0, Encoding.INT8_AFFINE: _INT8_PARAMS.size}


class FrameError(ValueError):
    """A buffer is not a valid frame; `.reason` is one of the `DecodeStats` drop counters."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame. `array` is always float32 with the header's shape."""

    frame_type: FrameType
    run_id: int
    sample_id: int
    shard: int
    seq: int
    send_ts_ns: int
    encoding: Encoding
    array: np.ndarray
    wire_bytes: int


@dataclass
class DecodeStats:
    """Counters of a `Decoder`: one accepted counter and one per drop reason."""

    ok: int = 0
    bad_magic: int = 0
    bad_version: int = 0
    truncated: int = 0
    bad_crc: int = 0
    malformed: int = 0

    @property
    def total_dropped(self) -> int:
        return self.bad_magic + self.bad_version + self.truncated + self.bad_crc + self.malformed

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_dropped": self.total_dropped}


def run_id_hash(run: str) -> int:
    """The u32 run id carried in frames for a run named `run`."""
    return zlib.crc32(run.encode("utf-8")) & _U32


# ---------------------------------------------------------------------------- encoding


def _check_range(value: int, *, name: str, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int in [0, {limit}], got {value!r}")
    if not 0 <= int(value) <= limit:
        raise ValueError(f"{name} must be in [0, {limit}], got {value}")
    return int(value)


def _quantise_int8(values: np.ndarray) -> bytes:
    """Per-tensor affine int8 with zero inside the range (so 0.0 is exact)."""
    if values.size == 0:
        return _INT8_PARAMS.pack(1.0, 0)
    if not np.all(np.isfinite(values)):
        raise ValueError("INT8_AFFINE needs finite values; use F32 for arrays with NaN/inf")
    lo = min(float(values.min()), 0.0)
    hi = max(float(values.max()), 0.0)
    scale = float(np.float32((hi - lo) / 255.0))
    if scale == 0.0 or not math.isfinite(scale):
        scale = 1.0
    zero_point = int(np.clip(round(-128.0 - lo / scale), -128, 127))
    q = np.clip(np.rint(values.astype(np.float64) / scale) + zero_point, -128, 127)
    return _INT8_PARAMS.pack(scale, zero_point) + q.astype(np.int8).tobytes()


def _encode_payload(values: np.ndarray, encoding: Encoding) -> bytes:
    if encoding is Encoding.F32:
        return values.astype("<f4").tobytes()
    if encoding is Encoding.F16:
        finite = values[np.isfinite(values)]
        if finite.size and float(np.abs(finite).max()) > float(np.finfo(np.float16).max):
            raise ValueError("values exceed the float16 range (65504); use F32 or INT8_AFFINE")
        return values.astype("<f2").tobytes()
    return _quantise_int8(values)


def encode_frame(array: np.ndarray, *, run_id: int, sample_id: int, shard: int, seq: int,
                 send_ts_ns: int, encoding: Encoding = Encoding.F32,
                 frame_type: FrameType = FrameType.ACTIVATION) -> bytes:
    """Encode `array` (any real dtype, converted to float32) as one frame.

    Raises ValueError for ndim > 4, dims or payloads that do not fit a u32, ids out of
    their field's range, and values the encoding cannot carry (non-finite for int8,
    beyond +-65504 for f16). A heartbeat conventionally carries an empty array.
    """
    encoding = Encoding(encoding)
    frame_type = FrameType(frame_type)
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"array must hold real numbers, got dtype {values.dtype}")
    if values.ndim > MAX_NDIM:
        raise ValueError(f"array must have ndim <= {MAX_NDIM}, got shape {values.shape}")
    shape = [_check_range(d, name="shape dim", limit=_U32) for d in values.shape]
    values = values.astype(np.float32, copy=False)
    payload = _encode_payload(values, encoding)
    _check_range(len(payload), name="payload length", limit=_U32)
    header = _HEADER.pack(
        MAGIC, VERSION, int(frame_type), int(encoding),
        _check_range(run_id, name="run_id", limit=_U32),
        _check_range(sample_id, name="sample_id", limit=_U32),
        _check_range(shard, name="shard", limit=_U16),
        _check_range(seq, name="seq", limit=_U32),
        _check_range(send_ts_ns, name="send_ts_ns", limit=_U64),
        DTYPE_FLOAT32, len(shape), *(shape + [0] * (MAX_NDIM - len(shape))), len(payload),
    )
    body = header + payload
    return body + _TRAILER.pack(zlib.crc32(body) & _U32)


# ---------------------------------------------------------------------------- decoding


def _check_envelope(data: bytes) -> tuple:
    """Magic, version, length and CRC; returns the unpacked header fields."""
    if len(data) < len(MAGIC) and MAGIC.startswith(data):
        raise FrameError(f"{len(data)} bytes is shorter than the magic", reason="truncated")
    if data[:len(MAGIC)] != MAGIC:
        raise FrameError(f"expected magic {MAGIC!r}, got {data[:2]!r}", reason="bad_magic")
    if len(data) < 3:
        raise FrameError("no version byte", reason="truncated")
    if data[2] != VERSION:
        raise FrameError(f"expected version {VERSION}, got {data[2]}", reason="bad_version")
    if len(data) < HEADER_SIZE + TRAILER_SIZE:
        raise FrameError(f"{len(data)} bytes is shorter than header + trailer "
                         f"({HEADER_SIZE + TRAILER_SIZE})", reason="truncated")
    fields = _HEADER.unpack_from(data)
    expected_len = HEADER_SIZE + fields[-1] + TRAILER_SIZE
    if len(data) < expected_len:
        raise FrameError(f"header announces {expected_len} bytes, got {len(data)}",
                         reason="truncated")
    if len(data) > expected_len:
        raise FrameError(f"header announces {expected_len} bytes, got {len(data)} "
                         f"(trailing bytes)", reason="malformed")
    (crc,) = _TRAILER.unpack_from(data, expected_len - TRAILER_SIZE)
    if zlib.crc32(data[:expected_len - TRAILER_SIZE]) & _U32 != crc:
        raise FrameError("CRC32 mismatch", reason="bad_crc")
    return fields


def _parse_layout(fields: tuple) -> tuple[FrameType, Encoding, tuple[int, ...]]:
    """Semantic checks of a CRC-valid header: type, flags, dtype, shape, payload length."""
    _, _, ftype, flags, *_, dtype, ndim = fields[:11]
    dims, payload_len = fields[11:15], fields[15]
    if ftype not in FrameType._value2member_map_:
        raise FrameError(f"unknown frame type {ftype}", reason="malformed")
    if flags & ~_ENCODING_MASK:
        raise FrameError(f"unknown flag bits 0x{flags & ~_ENCODING_MASK:04x}", reason="malformed")
    if flags & _ENCODING_MASK not in Encoding._value2member_map_:
        raise FrameError(f"unknown encoding {flags & _ENCODING_MASK}", reason="malformed")
    if dtype != DTYPE_FLOAT32:
        raise FrameError(f"expected dtype {DTYPE_FLOAT32} (float32), got {dtype}",
                         reason="malformed")
    if ndim > MAX_NDIM or any(dims[ndim:]):
        raise FrameError(f"bad shape: ndim {ndim}, dims {dims}", reason="malformed")
    encoding = Encoding(flags & _ENCODING_MASK)
    shape = tuple(dims[:ndim])
    expected = _PAYLOAD_PREFIX[encoding] + math.prod(shape) * _ITEMSIZE[encoding]
    if payload_len != expected:
        raise FrameError(f"payload_len {payload_len} but shape {shape} in {encoding.name} "
                         f"needs {expected}", reason="malformed")
    return FrameType(ftype), encoding, shape


def _decode_payload(payload: bytes, encoding: Encoding, shape: tuple[int, ...]) -> np.ndarray:
    if encoding is Encoding.F32:
        flat = np.frombuffer(payload, dtype="<f4").astype(np.float32)
    elif encoding is Encoding.F16:
        flat = np.frombuffer(payload, dtype="<f2").astype(np.float32)
    else:
        scale, zero_point = _INT8_PARAMS.unpack_from(payload)
        if not (math.isfinite(scale) and scale > 0) or not -128 <= zero_point <= 127:
            raise FrameError(f"bad int8 parameters scale={scale} zero_point={zero_point}",
                             reason="malformed")
        q = np.frombuffer(payload, dtype=np.int8, offset=_INT8_PARAMS.size)
        flat = ((q.astype(np.float64) - zero_point) * scale).astype(np.float32)
    return flat.reshape(shape)


def decode_frame(buf: bytes | bytearray | memoryview) -> Frame:
    """Decode one whole frame; raises FrameError (a ValueError) saying why it is invalid."""
    data = bytes(buf)
    fields = _check_envelope(data)
    frame_type, encoding, shape = _parse_layout(fields)
    payload = data[HEADER_SIZE:HEADER_SIZE + fields[15]]
    return Frame(
        frame_type=frame_type, run_id=fields[4], sample_id=fields[5], shard=fields[6],
        seq=fields[7], send_ts_ns=fields[8], encoding=encoding,
        array=_decode_payload(payload, encoding, shape), wire_bytes=len(data),
    )


class Decoder:
    """Lenient decoder: returns a Frame or None, counting every drop in `stats`."""

    def __init__(self) -> None:
        self.stats = DecodeStats()

    def decode(self, buf: bytes | bytearray | memoryview) -> Frame | None:
        """Decode one whole frame; never raises."""
        try:
            frame = decode_frame(buf)
        except FrameError as exc:
            setattr(self.stats, exc.reason, getattr(self.stats, exc.reason) + 1)
            return None
        except Exception:  # noqa: BLE001 - garbage must never take a receiver down
            self.stats.malformed += 1
            return None
        self.stats.ok += 1
        return frame
