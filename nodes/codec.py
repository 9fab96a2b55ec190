"""Data-plane wire frame: encode arrays into frames and decode them back.

A frame is a fixed little-endian header, a payload and a CRC32 trailer::

    magic "HB" | version u8 | type u8 | flags u16 | run_id u32 | sample_id u32 |
    shard u16 | seq u32 | send_ts_ns u64 | dtype u8 | ndim u8 | shape 4 x u32 |
    payload_len u32 || payload || crc32(header + payload) u32

flags: bits 0-3 are the payload `Encoding`, bits 4-5 its `Compression` (value 3 is
unknown); a frame with an unknown value or any of bits 6-15 set is dropped as malformed.

Compression applies to the encoded payload (for INT8_AFFINE its scale/zero-point prefix
included); ``payload_len`` is the on-wire, compressed length, and the CRC covers the
compressed bytes. Formats, chosen so that any stock decoder reads them:

- ``ZSTD``: one standard zstd frame (level 1 by default: the sender is a Pi's egress), with
  its content size written and neither checksum nor dictionary id (the frame CRC32 covers it).
- ``LZ4``: one raw LZ4 *block* (no LZ4 frame header, no stored size: ``LZ4_decompress_safe``
  with the size the header implies). The frame format's 7-19 bytes of header, end mark and
  checksums would repeat what our header and CRC already carry.

The encoder compresses whenever asked, even when that does not shrink the payload, so the
header always says what the link was configured with.

The decoder knows the exact decoded size from shape + encoding and never inflates past it:
a zstd frame declaring another content size, an LZ4 block that overruns or falls short, a
payload that is not one whole compressed stream, or a size above the decoder's
``max_decompressed_bytes`` (a tiny frame claiming a huge shape) is ``malformed``.

A receiver that knows what its frames must hold (the edge: every part is ``part_dim``
values) gives its `Decoder` ``max_values``: a frame whose header declares more values than
that is ``too_large``, refused from its header alone, before anything is inflated or
allocated, and no compressed payload may inflate past ``max_values`` values in the frame's
declared encoding. Without it, only ``max_decompressed_bytes`` (64 MiB by default) bounds a frame.

The `Decoder` never raises on garbage: it counts the reason and returns None.
`decode_frame` is the strict variant for tests and tools.

This module must import only numpy and the standard library at import time: ``zstandard``
and ``lz4`` are imported lazily, when a frame uses them, so a board that never compresses
needs neither. float16 conversions use numpy paths unless the process chooses torch's
vectorised casts, once, with ``use_f16_backend("torch")`` (the agent does when its runtime is
torch; a laptop-side tool with torch loaded anyway may); both give the same bits, and
``f16_backend()`` says which one runs. The codec imports torch only when that choice is made and
never switches backend by itself, except back to numpy (where it stays) when a torch cast fails. It
must do no I/O: framing for a byte stream (COBS) or fragmenting for BLE belongs to the transports.
"""
from __future__ import annotations

import importlib
import math
import struct
import threading
import zlib
from dataclasses import asdict, dataclass
from enum import IntEnum
from types import ModuleType
from typing import Any

import numpy as np

__all__ = [
    "MAGIC", "VERSION", "HEADER_SIZE", "TRAILER_SIZE", "MAX_NDIM",
    "DEFAULT_ZSTD_LEVEL", "ZSTD_LEVELS", "LZ4_HC_LEVELS", "MAX_DECOMPRESSED_BYTES",
    "FrameType", "Encoding", "Compression", "Frame", "FrameError", "DecodeStats", "Decoder",
    "run_id_hash", "encode_frame", "decode_frame", "F16_BACKENDS", "use_f16_backend", "f16_backend",
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
_COMPRESSION_SHIFT = 4
_COMPRESSION_MASK = 0x0030
_KNOWN_FLAGS = _ENCODING_MASK | _COMPRESSION_MASK
DEFAULT_ZSTD_LEVEL = 1
MAX_DECOMPRESSED_BYTES = 64 << 20   # default cap on what one compressed frame may inflate to
ZSTD_LEVELS = (-(1 << 17), 22)       # zstd's own bounds (negative levels: "fast" mode)
LZ4_HC_LEVELS = (1, 12)              # LZ4-HC; no level: plain fast LZ4
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


class Compression(IntEnum):
    """Flags bits 4-5: how the encoded payload is compressed on the wire."""

    NONE = 0
    ZSTD = 1
    LZ4 = 2


_ITEMSIZE = {Encoding.F32: 4, Encoding.F16: 2, Encoding.INT8_AFFINE: 1}
_PAYLOAD_PREFIX = {Encoding.F32: 0, Encoding.F16: 0, Encoding.INT8_AFFINE: _INT8_PARAMS.size}


class FrameError(ValueError):
    """A buffer is not a valid frame; `.reason` is one of the `DecodeStats` drop counters."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Frame:
    """A decoded frame. `array` is always float32 with the header's shape.

    For an uncompressed F32 frame, `array` is a read-only view of the frame's bytes (no copy);
    copy it before writing to it.
    """

    frame_type: FrameType
    run_id: int
    sample_id: int
    shard: int
    seq: int
    send_ts_ns: int
    encoding: Encoding
    array: np.ndarray
    wire_bytes: int
    compression: Compression = Compression.NONE


@dataclass
class DecodeStats:
    """Counters of a `Decoder`: one accepted counter and one per drop reason.

    ``too_large`` counts valid frames that declare more values than the decoder's
    ``max_values`` (refused before inflating or allocating them).

    ``internal_errors`` counts inputs on which the decoder itself raised something other than
    its documented rejection (`FrameError`): a bug in this module, counted so that it shows.
    Such an input is also counted as ``malformed`` (and so in ``total_dropped``).
    """

    ok: int = 0
    bad_magic: int = 0
    bad_version: int = 0
    truncated: int = 0
    bad_crc: int = 0
    malformed: int = 0
    too_large: int = 0
    internal_errors: int = 0

    @property
    def total_dropped(self) -> int:
        return (self.bad_magic + self.bad_version + self.truncated + self.bad_crc + self.malformed
                + self.too_large)

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_dropped": self.total_dropped}


def run_id_hash(run: str) -> int:
    """The u32 run id carried in frames for a run named `run`."""
    return zlib.crc32(run.encode("utf-8")) & _U32


# ---------------------------------------------------------------------------- compression

_PACKAGES = {Compression.ZSTD: ("zstandard", "zstandard"), Compression.LZ4: ("lz4.block", "lz4")}
_local = threading.local()   # zstd (de)compressor objects are not safe to share between threads


def _library(compression: Compression) -> ModuleType:
    """The compression library for ``compression``, imported on first use.

    Raises ModuleNotFoundError naming the package to install on this board.
    """
    module, package = _PACKAGES[compression]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModuleNotFoundError(f"compression {compression.name} needs the {package!r} package "
                                  f"on this board: pip install {package}", name=package) from exc


def _zstd_compressor(level: int) -> Any:
    cache = _local.__dict__.setdefault("zstd_compressors", {})
    if level not in cache:
        zstd = _library(Compression.ZSTD)
        cache[level] = zstd.ZstdCompressor(level=level, write_content_size=True,
                                           write_checksum=False, write_dict_id=False)
    return cache[level]


def _zstd_decompressor() -> Any:
    if not hasattr(_local, "zstd_decompressor"):
        _local.zstd_decompressor = _library(Compression.ZSTD).ZstdDecompressor()
    return _local.zstd_decompressor


def _check_level(compression: Compression, level: int | None) -> int | None:
    """Validate ``compression_level``: zstd level, or LZ4-HC level (None: plain fast LZ4)."""
    if level is None:
        return DEFAULT_ZSTD_LEVEL if compression is Compression.ZSTD else None
    if compression is Compression.NONE:
        raise ValueError("compression_level needs a compression (ZSTD or LZ4), got NONE")
    lo, hi = ZSTD_LEVELS if compression is Compression.ZSTD else LZ4_HC_LEVELS
    what = "zstd level" if compression is Compression.ZSTD else "LZ4-HC level"
    return _check_range_signed(level, name=f"compression_level ({what})", lo=lo, hi=hi)


def _check_range_signed(value: int, *, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in [{lo}, {hi}], got {value!r}")
    return int(value)


def _compress(raw: bytes, compression: Compression, level: int | None) -> bytes:
    if compression is Compression.ZSTD:
        return _zstd_compressor(int(level if level is not None else DEFAULT_ZSTD_LEVEL)).compress(raw)
    if compression is Compression.LZ4:
        block = _library(Compression.LZ4)
        if level is None:
            return block.compress(raw, mode="default", store_size=False)
        return block.compress(raw, mode="high_compression", compression=level, store_size=False)
    return raw


def _inflate_zstd(payload: memoryview, expected: int) -> bytes:
    zstd = _library(Compression.ZSTD)
    try:
        declared = zstd.frame_content_size(payload)
        if declared not in (-1, expected):   # -1: the frame does not say (a streaming encoder)
            raise FrameError(f"zstd frame declares {declared} bytes, the header implies {expected}",
                             reason="malformed")
        # With no declared size, max_output_size bounds the output; with one, zstd itself stops
        # at it (and we just checked it is ``expected``). Trailing bytes are refused.
        return _zstd_decompressor().decompress(payload, max_output_size=max(expected, 1),
                                               allow_extra_data=False)
    except zstd.ZstdError as exc:
        raise FrameError(f"zstd payload does not inflate to {expected} bytes: {exc}",
                         reason="malformed") from exc


def _inflate_lz4(payload: memoryview, expected: int) -> bytes:
    block = _library(Compression.LZ4)
    try:   # the destination buffer is exactly ``expected`` bytes: an overrun is an error
        return block.decompress(payload, uncompressed_size=expected)
    except block.LZ4BlockError as exc:
        raise FrameError(f"LZ4 block does not inflate to {expected} bytes: {exc}",
                         reason="malformed") from exc


def _decompress(payload: memoryview, compression: Compression, *, expected: int,
                limit: int) -> memoryview | bytes:
    """The raw encoded payload; FrameError(malformed) unless it is exactly ``expected`` bytes."""
    if compression is Compression.NONE:
        return payload
    if expected > limit:
        raise FrameError(f"a {compression.name} payload that inflates to {expected} bytes exceeds "
                         f"this decoder's max_decompressed_bytes ({limit})", reason="malformed")
    try:
        inflate = _inflate_zstd if compression is Compression.ZSTD else _inflate_lz4
        raw = inflate(payload, expected)
    except ModuleNotFoundError as exc:
        raise FrameError(str(exc), reason="malformed") from exc
    if len(raw) != expected:
        raise FrameError(f"{compression.name} payload inflates to {len(raw)} bytes, the header "
                         f"implies {expected}", reason="malformed")
    return raw


# ---------------------------------------------------------------------------- encoding


def _check_range(value: int, *, name: str, limit: int) -> int:
    if type(value) is int and 0 <= value <= limit:   # the common case, without isinstance
        return value
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an int in [0, {limit}], got {value!r}")
    if not 0 <= int(value) <= limit:
        raise ValueError(f"{name} must be in [0, {limit}], got {value}")
    return int(value)


def _quantise_int8(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    """Per-tensor affine int8 of 1-D float32 ``values``, zero inside the range (so 0.0 is
    exact): (packed scale and zero point, int8 array).

    One min and one max pass (NaN or inf in the input shows in them), then float32 divide,
    rint and clip in place, and one cast to int8.
    """
    if values.size == 0:
        return _INT8_PARAMS.pack(1.0, 0), np.empty(0, dtype=np.int8)
    lo, hi = float(values.min()), float(values.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("INT8_AFFINE needs finite values; use F32 for arrays with NaN/inf")
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = float(np.float32((hi - lo) / 255.0))
    if scale == 0.0 or not math.isfinite(scale):
        scale = 1.0
    zero_point = int(np.clip(round(-128.0 - lo / scale), -128, 127))
    q = np.divide(values, np.float32(scale), dtype=np.float32)
    np.rint(q, out=q)
    q += np.float32(zero_point)
    np.clip(q, -128, 127, out=q)
    return _INT8_PARAMS.pack(scale, zero_point), q.astype(np.int8)


_F16_MAX = float(np.finfo(np.float16).max)   # 65504
_F32_U32 = np.dtype("<u4")


def _to_f16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> IEEE half bits (uint16), round to nearest even, for finite |x| <= 65504.

    Bit-identical to ``astype(float16)`` on that domain, but built from ~17 whole-array
    integer/float32 ops that numpy vectorises, where numpy's own float16 cast is a scalar loop
    on this build (no F16C dispatch): ~2-3x faster. The float math does the rounding: scaling by
    2**112 then 2**-110 and adding a power of two aligned with the value's f16 exponent leaves
    the rounded f16 mantissa in the low bits (M. Maratyszcza, FP16 library, MIT licence).
    """
    u = values.view(_F32_U32)
    base = np.abs(values)
    base *= np.float32(2.0 ** 112)
    base *= np.float32(2.0 ** -110)
    bias = np.left_shift(u, 1)
    bias &= np.uint32(0xFF000000)
    np.maximum(bias, np.uint32(0x71000000), out=bias)
    bias >>= np.uint32(1)
    bias += np.uint32(0x07800000)
    base += bias.view(np.float32)
    bits = base.view(np.uint32)
    out = np.right_shift(bits, np.uint32(13))
    out &= np.uint32(0x7C00)
    bits &= np.uint32(0x0FFF)
    out += bits
    sign = np.right_shift(u, np.uint32(16))
    sign &= np.uint32(0x8000)
    out |= sign
    return out.astype("<u2")


F16_BACKENDS = ("numpy", "torch")
_f16_torch: Any = None   # torch, once this process chose its casts; None: the numpy paths


def use_f16_backend(name: str) -> None:
    """Choose this process's float16 conversion: ``"numpy"`` (the default) or ``"torch"``.

    torch's float16 casts are vectorised (F16C on x86, NEON fp16 on ARM): ~3.5 us per 25,000
    values either way here, where numpy's are scalar loops; both give the same bits. A process
    that has torch anyway (a torch-runtime board, the edge, the laptop) chooses it once at
    start-up; a LiteRT-only board keeps the default and never imports torch.

    ``"torch"`` imports torch here: ModuleNotFoundError (naming the package) when this process
    cannot import it, ValueError for an unknown name. Should a torch cast later fail (a torch
    built against another numpy), the codec goes back to numpy and stays there.
    """
    global _f16_torch
    if name not in F16_BACKENDS:
        raise ValueError(f"unknown float16 backend {name!r}; expected one of {', '.join(F16_BACKENDS)}")
    if name == "numpy":
        _f16_torch = None
        return
    try:
        torch = importlib.import_module("torch")
    except ImportError as exc:
        raise ModuleNotFoundError(f"float16 backend 'torch' needs the 'torch' package in this process "
                                  f"({exc}); pip install torch, or keep the 'numpy' backend",
                                  name="torch") from exc
    _f16_torch = torch


def f16_backend() -> str:
    """Which float16 conversion this process uses now: ``"torch"`` or ``"numpy"``."""
    return "numpy" if _f16_torch is None else "torch"


def _torch_failed() -> None:
    """A torch cast raised: back to the numpy paths for the rest of this process's life (until
    it chooses again)."""
    global _f16_torch
    _f16_torch = None


def _encode_f16(values: np.ndarray) -> np.ndarray:
    """1-D float32 ``values`` as little-endian float16 bits (raises beyond +-65504; NaN/inf
    pass through numpy's own cast)."""
    if values.size:
        lo, hi = float(values.min()), float(values.max())
        if math.isfinite(lo) and math.isfinite(hi):
            if max(-lo, hi) > _F16_MAX:
                raise ValueError("values exceed the float16 range (65504); use F32 or INT8_AFFINE")
            torch = _f16_torch
            if torch is not None:   # round to nearest even, as numpy (tested bit for bit)
                if not values.flags.writeable:   # torch warns on read-only arrays (a decoded frame)
                    values = values.copy()
                try:
                    half = torch.from_numpy(values).to(torch.float16).numpy()
                    return half.view(np.uint16).astype("<u2", copy=False)
                except Exception:  # noqa: BLE001 - a torch without a numpy bridge: numpy path
                    _torch_failed()
            return _to_f16_bits(values)
    finite = values[np.isfinite(values)]
    if finite.size and float(np.abs(finite).max()) > _F16_MAX:
        raise ValueError("values exceed the float16 range (65504); use F32 or INT8_AFFINE")
    return values.astype("<f2")


def _encode_payload(values: np.ndarray, encoding: Encoding) -> list[bytes | memoryview]:
    """The encoded payload as pieces to join (array memory is used in place, not copied)."""
    flat = np.ascontiguousarray(values, dtype="<f4").reshape(-1)
    if encoding is Encoding.F32:
        return [_byte_view(flat)]
    if encoding is Encoding.F16:
        return [_byte_view(_encode_f16(flat))]
    params, q = _quantise_int8(flat)
    return [params, _byte_view(q)]


def _byte_view(arr: np.ndarray) -> memoryview:
    """The bytes of a C-contiguous array, in place."""
    return memoryview(arr.reshape(-1).view(np.uint8))


def encode_frame(array: np.ndarray, *, run_id: int, sample_id: int, shard: int, seq: int,
                 send_ts_ns: int, encoding: Encoding = Encoding.F32,
                 frame_type: FrameType = FrameType.ACTIVATION,
                 compression: Compression = Compression.NONE,
                 compression_level: int | None = None) -> bytes:
    """Encode `array` (any real dtype, converted to float32) as one frame.

    ``compression`` compresses the encoded payload (see the module docstring for the
    formats); ``compression_level`` is the zstd level for ZSTD (default 1, zstd's range
    -131072..22) or, for LZ4, an LZ4-HC level 1..12 (default: plain fast LZ4).

    Raises ValueError for ndim > 4, dims or payloads that do not fit a u32, ids out of
    their field's range, values the encoding cannot carry (non-finite for int8, beyond
    +-65504 for f16) and bad compression levels; ModuleNotFoundError (naming the package)
    when the compression's library is not installed. A heartbeat conventionally carries an
    empty array.
    """
    encoding = encoding if type(encoding) is Encoding else Encoding(encoding)
    frame_type = frame_type if type(frame_type) is FrameType else FrameType(frame_type)
    compression = compression if type(compression) is Compression else Compression(compression)
    level = _check_level(compression, compression_level)
    values = np.asarray(array)
    if values.dtype.kind not in "biuf":
        raise ValueError(f"array must hold real numbers, got dtype {values.dtype}")
    if values.ndim > MAX_NDIM:
        raise ValueError(f"array must have ndim <= {MAX_NDIM}, got shape {values.shape}")
    shape = [_check_range(d, name="shape dim", limit=_U32) for d in values.shape]
    values = values.astype(np.float32, copy=False)
    pieces = _encode_payload(values, encoding)
    if compression is not Compression.NONE:
        pieces = [_compress(b"".join(pieces), compression, level)]
    payload_len = _check_range(sum(map(len, pieces)), name="payload length", limit=_U32)
    header = _HEADER.pack(
        MAGIC, VERSION, int(frame_type), int(encoding) | int(compression) << _COMPRESSION_SHIFT,
        _check_range(run_id, name="run_id", limit=_U32),
        _check_range(sample_id, name="sample_id", limit=_U32),
        _check_range(shard, name="shard", limit=_U16),
        _check_range(seq, name="seq", limit=_U32),
        _check_range(send_ts_ns, name="send_ts_ns", limit=_U64),
        DTYPE_FLOAT32, len(shape), *(shape + [0] * (MAX_NDIM - len(shape))), payload_len,
    )
    crc = zlib.crc32(header)
    for piece in pieces:   # zlib reads the array memory in place: no copy for the CRC
        crc = zlib.crc32(piece, crc)
    return b"".join((header, *pieces, _TRAILER.pack(crc & _U32)))


# ---------------------------------------------------------------------------- decoding


@dataclass(frozen=True)
class _Layout:
    frame_type: FrameType
    encoding: Encoding
    compression: Compression
    shape: tuple[int, ...]
    raw_len: int          # the encoded payload's size before compression


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
    if zlib.crc32(memoryview(data)[:expected_len - TRAILER_SIZE]) & _U32 != crc:
        raise FrameError("CRC32 mismatch", reason="bad_crc")
    return fields


def _parse_flags(flags: int) -> tuple[Encoding, Compression]:
    if flags & ~_KNOWN_FLAGS:
        raise FrameError(f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:04x}", reason="malformed")
    encoding = Encoding._value2member_map_.get(flags & _ENCODING_MASK)
    if encoding is None:
        raise FrameError(f"unknown encoding {flags & _ENCODING_MASK}", reason="malformed")
    comp = (flags & _COMPRESSION_MASK) >> _COMPRESSION_SHIFT
    compression = Compression._value2member_map_.get(comp)
    if compression is None:
        raise FrameError(f"unknown compression {comp}", reason="malformed")
    return encoding, compression  # type: ignore[return-value]


def _parse_layout(fields: tuple, max_values: int | None = None) -> _Layout:
    """Semantic checks of a CRC-valid header: type, flags, dtype, shape (no more than
    ``max_values`` values: else ``too_large``), payload length."""
    _, _, ftype, flags, *_, dtype, ndim = fields[:11]
    dims, payload_len = fields[11:15], fields[15]
    frame_type = FrameType._value2member_map_.get(ftype)
    if frame_type is None:
        raise FrameError(f"unknown frame type {ftype}", reason="malformed")
    encoding, compression = _parse_flags(flags)
    if dtype != DTYPE_FLOAT32:
        raise FrameError(f"expected dtype {DTYPE_FLOAT32} (float32), got {dtype}",
                         reason="malformed")
    if ndim > MAX_NDIM or any(dims[ndim:]):
        raise FrameError(f"bad shape: ndim {ndim}, dims {dims}", reason="malformed")
    shape = tuple(dims[:ndim])
    raw_len = _PAYLOAD_PREFIX[encoding] + math.prod(shape) * _ITEMSIZE[encoding]
    if max_values is not None:
        _check_values(shape, encoding, raw_len, max_values)
    if compression is Compression.NONE and payload_len != raw_len:
        raise FrameError(f"payload_len {payload_len} but shape {shape} in {encoding.name} "
                         f"needs {raw_len}", reason="malformed")
    return _Layout(frame_type, encoding, compression, shape, raw_len)  # type: ignore[arg-type]


def _check_values(shape: tuple[int, ...], encoding: Encoding, raw_len: int, max_values: int) -> None:
    """FrameError(too_large) when ``shape`` holds more than ``max_values`` values."""
    declared = math.prod(shape)
    if declared > max_values:
        raise FrameError(f"shape {shape} declares {declared} values ({raw_len} bytes in "
                         f"{encoding.name}); this receiver takes at most {max_values} values per "
                         f"frame", reason="too_large")


def _part_bytes(encoding: Encoding, max_values: int) -> int:
    """The encoded size of ``max_values`` values in ``encoding``: the most a payload may inflate to."""
    return _PAYLOAD_PREFIX[encoding] + max_values * _ITEMSIZE[encoding]


_F16_TABLE: np.ndarray | None = None


def _f16_table() -> np.ndarray:
    """float32 value of every float16 bit pattern (256 KiB, built once, by numpy's own cast)."""
    global _F16_TABLE
    if _F16_TABLE is None:
        table = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
        _F16_TABLE = table.astype(np.float32)
    return _F16_TABLE


def _decode_f16(payload: memoryview | bytes) -> np.ndarray:
    """float16 payload -> float32: torch's vectorised cast when the process chose it (exact; a
    NaN stays a NaN, a signalling one comes back quiet), else one lookup in the exact table."""
    torch = _f16_torch
    if torch is not None:
        # a writable copy (~1 us per 50 KB): torch warns on read-only buffers, and frames are read-only
        half = np.frombuffer(payload, dtype="<f2").astype(np.float16)   # native order, copied
        try:
            return torch.from_numpy(half).to(torch.float32).numpy()
        except Exception:  # noqa: BLE001 - a torch without a numpy bridge: the table
            _torch_failed()
    return np.take(_f16_table(), np.frombuffer(payload, dtype="<u2"))


def _decode_payload(payload: memoryview | bytes, encoding: Encoding,
                    shape: tuple[int, ...]) -> np.ndarray:
    if encoding is Encoding.F32:   # a read-only view of the frame's bytes: no copy
        flat = np.frombuffer(payload, dtype="<f4")
    elif encoding is Encoding.F16:
        flat = _decode_f16(payload)
    else:
        scale, zero_point = _INT8_PARAMS.unpack_from(payload)
        if not (math.isfinite(scale) and scale > 0) or not -128 <= zero_point <= 127:
            raise FrameError(f"bad int8 parameters scale={scale} zero_point={zero_point}",
                             reason="malformed")
        q = np.frombuffer(payload, dtype=np.int8, offset=_INT8_PARAMS.size)
        # (q - zp) is an exact small integer in float32, so one float32 multiply gives the
        # correctly rounded product, the same value float64 arithmetic would round to.
        flat = q.astype(np.float32)
        flat -= np.float32(zero_point)
        flat *= np.float32(scale)
    return flat.reshape(shape)


def _frame_bytes(buf: object) -> bytes:
    """A bytes-like ``buf`` as bytes; anything else (a str, an int) is a FrameError."""
    try:
        return memoryview(buf).tobytes()   # type: ignore[arg-type]
    except TypeError:
        raise FrameError(f"expected a bytes-like frame, got {type(buf).__name__}",
                         reason="malformed") from None


def decode_frame(buf: bytes | bytearray | memoryview, *,
                 max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
                 max_values: int | None = None) -> Frame:
    """Decode one whole frame; raises FrameError (a ValueError) saying why it is invalid.

    A compressed payload is inflated to exactly the size its shape and encoding imply, and
    never past ``max_decompressed_bytes``. With ``max_values``, a frame whose header declares
    more values is refused (``too_large``) before its payload is inflated or decoded, and no
    payload inflates past ``max_values`` values in the frame's encoding.
    """
    data = buf if type(buf) is bytes else _frame_bytes(buf)
    fields = _check_envelope(data)
    layout = _parse_layout(fields, max_values)
    limit = max_decompressed_bytes
    if max_values is not None:
        limit = min(limit, _part_bytes(layout.encoding, max_values))
    wire_payload = memoryview(data)[HEADER_SIZE:HEADER_SIZE + fields[15]]
    payload = _decompress(wire_payload, layout.compression, expected=layout.raw_len,
                          limit=limit)
    return Frame(
        frame_type=layout.frame_type, run_id=fields[4], sample_id=fields[5], shard=fields[6],
        seq=fields[7], send_ts_ns=fields[8], encoding=layout.encoding,
        array=_decode_payload(payload, layout.encoding, layout.shape), wire_bytes=len(data),
        compression=layout.compression,
    )


class Decoder:
    """Lenient decoder: returns a Frame or None, counting every drop in `stats`.

    ``max_values`` (None: no limit but ``max_decompressed_bytes``) is the most values one frame
    may carry, e.g. the edge's ``part_dim``: a frame declaring more is counted ``too_large`` and
    dropped from its header alone, and no payload inflates past that many values.
    ``last_error`` keeps the message of the latest drop (for logs; counters are the record).
    """

    def __init__(self, *, max_decompressed_bytes: int = MAX_DECOMPRESSED_BYTES,
                 max_values: int | None = None) -> None:
        self.stats = DecodeStats()
        self.max_decompressed_bytes = _check_range(
            max_decompressed_bytes, name="max_decompressed_bytes", limit=_U64)
        self.max_values = (None if max_values is None
                           else _check_range(max_values, name="max_values", limit=_U64))
        self.last_error: str | None = None

    def decode(self, buf: bytes | bytearray | memoryview) -> Frame | None:
        """Decode one whole frame; never raises."""
        try:
            frame = decode_frame(buf, max_decompressed_bytes=self.max_decompressed_bytes,
                                 max_values=self.max_values)
        except FrameError as exc:
            setattr(self.stats, exc.reason, getattr(self.stats, exc.reason) + 1)
            self.last_error = str(exc)
            return None
        except Exception as exc:  # noqa: BLE001 - garbage must never take a receiver down
            self.stats.malformed += 1
            self.stats.internal_errors += 1
            self.last_error = f"malformed (internal error): {type(exc).__name__}: {exc}"
            return None
        self.stats.ok += 1
        return frame
