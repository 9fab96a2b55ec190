"""Consistent Overhead Byte Stuffing (COBS) and a resynchronising stream decoder.

Holds `encode` / `decode` (pure functions: a packet of any bytes <-> an encoding with no
0x00 byte, at most ``1 + len // 254`` bytes longer) and `CobsStreamDecoder`, which splits a
byte stream on the 0x00 delimiter and decodes each packet, counting everything it throws
away in `CobsStats`. The encoding is the canonical one (Cheshire & Baker 1999; a final run
of exactly 254 non-zero bytes gets no trailing 0x01 block); the decoder also accepts that
block, as several embedded implementations emit it.

Stream rules (what `CobsStreamDecoder.feed` does with each delimited chunk):

- bytes before the first delimiter after construction or `reset()` are a partial packet
  from before we listened: discarded and counted in ``garbage_bytes``;
- an empty chunk (two delimiters in a row) is idle fill, not a packet; senders may put a
  delimiter before every packet so that line noise never joins the next packet;
- a chunk that does not decode (its last block runs past the delimiter: the packet was
  truncated, or noise hit it) is dropped: ``dropped_invalid`` + 1, its bytes added to
  ``garbage_bytes``;
- a chunk longer than the largest encoding of ``max_packet`` bytes is dropped as soon as
  it grows past that bound, without buffering the rest: ``dropped_oversize`` + 1;
- everything else is returned as a packet.

COBS has no checksum: a packet corrupted in transit may still decode. Integrity is the
wire frame's CRC32 (`nodes.codec`); here packets are opaque bytes.

This module must stay pure: no I/O, no threads, and the stream decoder must never raise on
any bytes-like input. numpy (a base dependency of ``nodes``) vectorises the common case: a
packet whose zero-free runs are all shorter than 254 bytes, which is what activations are.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["CobsError", "CobsStats", "CobsStreamDecoder", "encode", "decode", "max_encoded_len"]

DELIMITER = b"\x00"
_MAX_RUN = 254  # non-zero bytes a single block can carry
_CODE = [bytes((i,)) for i in range(256)]
_EMPTY_BLOCK = _CODE[1]
_ZERO_RUN = re.compile(rb"\x00+")
_EMPTY_RUN = re.compile(rb"\x01+")


class CobsError(ValueError):
    """A buffer is not a valid COBS encoding."""


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as bytes; a non-bytes-like argument (an int!) is a TypeError, not zeros."""
    return data if type(data) is bytes else memoryview(data).tobytes()


def max_encoded_len(n: int) -> int:
    """Largest COBS encoding (without delimiter) of an ``n``-byte packet."""
    return n + n // _MAX_RUN + 1


def _long_blocks(segment: bytes, *, last: bool) -> list[bytes]:
    """Blocks of one zero-free segment; the last segment gets no empty trailing block."""
    n = len(segment)
    parts: list[bytes] = []
    start = 0
    while n - start >= _MAX_RUN:
        parts += (_CODE[0xFF], segment[start:start + _MAX_RUN])
        start += _MAX_RUN
    if start < n or n == 0 or not last:  # canonical: no empty block after a final full run
        parts += (_CODE[n - start + 1], segment[start:])
    return parts


def _encode_short_runs(buf: bytes) -> bytes | None:
    """Vectorised encoding when every zero-free run is < 254 bytes (else None).

    Then each block is exactly one run: the output is the input shifted by one byte, with the
    code of each run written where its preceding zero was (and at offset 0).
    """
    arr = np.frombuffer(buf, dtype=np.uint8)
    zeros = np.flatnonzero(arr == 0)
    codes = np.diff(np.concatenate(([-1], zeros, [len(buf)])))
    if codes.size and int(codes.max()) >= 0xFF:
        return None
    out = np.empty(len(buf) + 1, dtype=np.uint8)
    out[1:] = arr
    out[np.concatenate(([0], zeros + 1))] = codes
    return out.tobytes()


def _decode_short_runs(buf: bytes) -> bytes | None:
    """Vectorised decoding when no block is a full 0xFF block (else None); CobsError if invalid."""
    n = len(buf)
    starts: list[int] = []
    append = starts.append
    i = 0
    while i < n:  # one step per block: only the block starts are found in Python
        code = buf[i]
        if code == 0xFF:
            return None
        append(i)
        i += code
    if i > n:
        last = starts[-1]
        raise CobsError(f"block at offset {last} announces {buf[last] - 1} bytes, {n - last - 1} left")
    out = np.frombuffer(buf, dtype=np.uint8)[1:].copy()
    if len(starts) > 1:
        out[np.asarray(starts[1:], dtype=np.int64) - 1] = 0
    return out.tobytes()


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode one packet; the result has no 0x00 byte and no delimiter.

    Loops once per run of zeros (never per byte), finding zeros with ``bytes.find``: sparse
    activations with long runs of 0.0 encode as fast as dense ones.
    """
    buf = _as_bytes(data)
    if len(buf) >= 64 and (fast := _encode_short_runs(buf)) is not None:
        return fast
    parts: list[bytes] = []
    append, find, run_end = parts.append, buf.find, _ZERO_RUN.match
    pos = 0
    while (z := find(0, pos)) >= 0:
        if z - pos < _MAX_RUN:
            append(_CODE[z - pos + 1])
            append(buf[pos:z])
        else:
            parts += _long_blocks(buf[pos:z], last=False)
        end = run_end(buf, z).end()  # type: ignore[union-attr]
        if end - z > 1:
            append(_EMPTY_BLOCK * (end - z - 1))  # the empty segments between the zeros
        pos = end
    parts += _long_blocks(buf[pos:], last=True)
    return b"".join(parts)


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS encoding (without delimiter); raises CobsError when invalid.

    Loops once per block, and once per run of empty (0x01) blocks.
    """
    buf = _as_bytes(data)
    n = len(buf)
    if n == 0:
        raise CobsError("empty input; the shortest encoding is 1 byte (0x01)")
    if (z := buf.find(DELIMITER)) >= 0:
        raise CobsError(f"0x00 at offset {z} inside an encoding")
    if n >= 64 and (fast := _decode_short_runs(buf)) is not None:
        return fast
    parts: list[bytes] = []
    append, empty_run = parts.append, _EMPTY_RUN.match
    i = 0
    while i < n:
        code = buf[i]
        if code == 1:  # a run of empty blocks: one zero each, except at the very end
            end = empty_run(buf, i).end()  # type: ignore[union-attr]
            append(DELIMITER * (end - i if end < n else end - i - 1))
        else:
            end = i + code
            if end > n:
                raise CobsError(f"block at offset {i} announces {code - 1} bytes, "
                                f"{n - i - 1} left")
            append(buf[i + 1:end])
            if code != 0xFF and end < n:
                append(DELIMITER)
        i = end
    return b"".join(parts)


@dataclass
class CobsStats:
    """Counters of a `CobsStreamDecoder`.

    ``garbage_bytes`` counts every byte thrown away: the unsynchronised prefix and the bytes
    of dropped chunks (delimiters are never counted).
    """

    packets: int = 0
    bytes_in: int = 0
    dropped_invalid: int = 0
    dropped_oversize: int = 0
    garbage_bytes: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class CobsStreamDecoder:
    """Incremental COBS de-framer: ``feed(chunk) -> [packet, ...]``; never raises."""

    def __init__(self, *, max_packet: int = 1 << 20) -> None:
        if isinstance(max_packet, bool) or not isinstance(max_packet, int) or max_packet < 0:
            raise ValueError(f"max_packet must be an int >= 0, got {max_packet!r}")
        self.max_packet = max_packet
        self.max_encoded = max_encoded_len(max_packet)
        self.stats = CobsStats()
        self._buf = bytearray()
        self._synced = False
        self._discarding = False

    @property
    def buffered(self) -> int:
        """Bytes of the packet in progress (never more than ``max_encoded``)."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget the packet in progress and wait for the next delimiter (counters kept)."""
        self._buf.clear()
        self._synced = False
        self._discarding = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        """Consume ``data``; return the packets completed by it, in order."""
        chunk = _as_bytes(data)
        self.stats.bytes_in += len(chunk)
        out: list[bytes] = []
        start, n = 0, len(chunk)
        while start < n:
            z = chunk.find(DELIMITER, start)
            if z < 0:
                self._absorb(chunk, start, n)
                break
            self._absorb(chunk, start, z)
            self._end_of_packet(out)
            start = z + 1
        return out

    def _absorb(self, chunk: bytes, start: int, end: int) -> None:
        """Append ``chunk[start:end]`` (no delimiter in it) to the packet in progress."""
        size = end - start
        if not size:
            return
        if not self._synced or self._discarding:
            self.stats.garbage_bytes += size
        elif len(self._buf) + size > self.max_encoded:
            self.stats.garbage_bytes += len(self._buf) + size
            self.stats.dropped_oversize += 1
            self._buf.clear()
            self._discarding = True
        else:
            self._buf += chunk[start:end]

    def _end_of_packet(self, out: list[bytes]) -> None:
        """A delimiter arrived: close the packet in progress."""
        if not self._synced or self._discarding:
            self._synced, self._discarding = True, False
            return
        if not self._buf:
            return  # idle fill between delimiters
        try:
            packet = decode(self._buf)
        except CobsError:
            self.stats.dropped_invalid += 1
            self.stats.garbage_bytes += len(self._buf)
        else:
            if len(packet) > self.max_packet:
                self.stats.dropped_oversize += 1
                self.stats.garbage_bytes += len(self._buf)
            else:
                self.stats.packets += 1
                out.append(packet)
        self._buf.clear()
