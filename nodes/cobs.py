"""Consistent Overhead Byte Stuffing (COBS) and a resynchronising stream decoder.

Holds `encode` / `decode` (pure functions: a packet of any bytes <-> an encoding with no
0x00 byte, at most ``1 + len // 254`` bytes longer), `encode_delimited` (the same with the
0x00 delimiter before and after, in one buffer) and `CobsStreamDecoder`, which splits a
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

Speed (activations are full of zero bytes, so a packet has a block every 2-3 bytes): packets
with more than a few dozen zeros/blocks take numpy paths. Encoding: when every zero-free run
is shorter than 254 bytes, one shifted copy plus one scatter of the run lengths. Decoding:
block starts form a chain (each code byte says where the next block starts), which is walked
in C by a list feeding its own ``map``, after a few levels of numpy pointer doubling have
shortened it; the output is then the input with every block start zeroed, minus the first
byte (and minus the code bytes after full 0xFF blocks). Packets with few blocks, and encodings
with long zero-free runs, take plain loops with one Python step per block or run.

When the C extension of the PyPI package ``cobs`` is importable (a base dependency; it builds
on any board with a C compiler and has wheels for common platforms), `encode` and the packet
decoder use it: 50-150x faster than the paths above for 256 B-4 KiB packets and 2-7x at
64 KiB. It produces the same canonical encoding and accepts and rejects exactly what the
Python decoder does (a cross-check over 30,000 random packets and garbage chunks agreed byte
for byte; tests/test_cobs.py keeps checking both). Without it the numpy/loop paths run.

This module must stay pure: no I/O, no threads (a thread-local scratch space only), and the
stream decoder must never raise on any bytes-like input. numpy is a base dependency of ``nodes``.
"""
from __future__ import annotations

import contextlib
import math
import re
import threading
from dataclasses import asdict, dataclass

import numpy as np

try:  # the C extension of PyPI's "cobs" package; the pure-Python paths below otherwise
    from cobs import cobs as _c
except ImportError:  # pragma: no cover - exercised by tests that hide it
    _c = None

__all__ = ["CobsError", "CobsStats", "CobsStreamDecoder", "encode", "encode_delimited", "decode",
           "max_encoded_len"]

DELIMITER = b"\x00"
_MAX_RUN = 254  # non-zero bytes a single block can carry
_CODE = [bytes((i,)) for i in range(256)]
_EMPTY_BLOCK = _CODE[1]
_ZERO_RUN = re.compile(rb"\x00+")
_EMPTY_RUN = re.compile(rb"\x01+")
_VECTOR_MIN_ZEROS = 64    # packets with more zeros than this encode with numpy
_VECTOR_MIN_BLOCKS = 256  # and packets with more blocks than this, averaging < 64 B, decode so
_VECTOR_MAX_BLOCK = 64
_PROBE = 32              # blocks walked in Python to estimate a packet's block count
_INDEX = np.int32        # block offsets: half the memory of intp, and faster here
_MAX_LEVELS = 8          # pointer-doubling levels at most (2**8-fold shorter chains)


class CobsError(ValueError):
    """A buffer is not a valid COBS encoding."""


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    """``data`` as bytes; a non-bytes-like argument (an int!) is a TypeError, not zeros."""
    return data if type(data) is bytes else memoryview(data).tobytes()


def max_encoded_len(n: int) -> int:
    """Largest COBS encoding (without delimiter) of an ``n``-byte packet."""
    return n + n // _MAX_RUN + 1


# ---------------------------------------------------------------------------- encoding


def encode(data: bytes | bytearray | memoryview) -> bytes:
    """COBS-encode one packet; the result has no 0x00 byte and no delimiter.

    Packets with many zeros whose zero-free runs are all under 254 bytes (activations) are
    encoded with numpy; others loop once per run of zeros (never per byte), finding zeros with
    ``bytes.find``.
    """
    buf = _as_bytes(data)
    if _c is not None:
        return _c.encode(buf)
    fast = _encode_short_runs(buf) if len(buf) >= _VECTOR_MIN_ZEROS else None
    return fast if fast is not None else _encode_loop(buf)


def encode_delimited(data: bytes | bytearray | memoryview) -> bytes:
    """``0x00 || encode(data) || 0x00`` in one buffer: a packet as it goes on a byte stream."""
    buf = _as_bytes(data)
    if _c is not None:
        return b"".join((DELIMITER, _c.encode(buf), DELIMITER))
    fast = _encode_short_runs(buf, pad=1) if len(buf) >= _VECTOR_MIN_ZEROS else None
    return fast if fast is not None else b"".join((DELIMITER, _encode_loop(buf), DELIMITER))


def _encode_short_runs(buf: bytes, *, pad: int = 0) -> bytes | None:
    """Vectorised encoding of a packet with many zeros, all its zero-free runs < 254 bytes;
    None otherwise (numpy's ~10 us fixed cost pays only past a few dozen zeros; the loop costs
    ~0.15 us per zero).

    Then each block is exactly one run: the output is the input shifted by one byte, with the
    code of each run written where its preceding zero was (and at offset 0). ``pad`` = 1 puts
    a 0x00 delimiter before and after the encoding, in the same buffer (no extra copy).
    """
    n = len(buf)
    arr = np.frombuffer(buf, dtype=np.uint8)
    zeros = np.flatnonzero(arr == 0)
    if zeros.size < _VECTOR_MIN_ZEROS:
        return None
    codes = np.empty(zeros.size + 1, dtype=np.intp)   # run lengths + 1
    codes[0] = zeros[0] + 1
    np.subtract(zeros[1:], zeros[:-1], out=codes[1:-1])
    codes[-1] = n - zeros[-1]
    if int(codes.max()) >= 0xFF:
        return None
    out = np.empty(n + 1 + 2 * pad, dtype=np.uint8)
    out[1 + pad:n + 1 + pad] = arr
    out[pad] = codes[0]
    zeros += 1 + pad
    out[zeros] = codes[1:].astype(np.uint8)
    if pad:
        out[0] = out[-1] = 0
    return out.tobytes()


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


def _encode_loop(buf: bytes) -> bytes:
    """The general encoder: one Python step per run of zeros."""
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


# ---------------------------------------------------------------------------- decoding


def decode(data: bytes | bytearray | memoryview) -> bytes:
    """Decode one COBS encoding (without delimiter); raises CobsError when invalid."""
    buf = _as_bytes(data)
    if not buf:
        raise CobsError("empty input; the shortest encoding is 1 byte (0x01)")
    if (z := buf.find(DELIMITER)) >= 0:
        raise CobsError(f"0x00 at offset {z} inside an encoding")
    return _decode_packet(buf)


def _decode_packet(view: bytes | memoryview) -> bytes:
    """Decode a non-empty encoding known to hold no 0x00, with the C extension when present."""
    if _c is not None:
        try:
            # the extension takes bytes, not a formatted memoryview slice (one C-speed copy)
            return _c.decode(view if type(view) is bytes else bytes(view))
        except _c.DecodeError as exc:
            raise CobsError(f"invalid encoding ({exc})") from None
    return _decode_packet_py(view)


def _decode_packet_py(view: bytes | memoryview) -> bytes:
    """Decode a non-empty encoding known to hold no 0x00 (a chunk between two delimiters).

    The first ``_PROBE`` blocks are walked here to estimate how many blocks there are. The loop
    costs ~0.1 us per block, numpy ~20 us plus ~1.5 ns per byte (measured on the CI machine):
    numpy wins for hundreds of short blocks, the loop for few or long ones.
    """
    n, i, steps = len(view), 0, 0
    while i < n and steps < _PROBE:
        i += view[i]
        steps += 1
    blocks = steps * n / i
    if i >= n or blocks < _VECTOR_MIN_BLOCKS or blocks * _VECTOR_MAX_BLOCK < n:
        return _decode_loop(_as_bytes(view))
    return _decode_vectorised(view, blocks)


def _decode_loop(buf: bytes) -> bytes:
    """The general decoder: one Python step per block, and per run of empty (0x01) blocks."""
    n = len(buf)
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


def _decode_vectorised(view: bytes | memoryview, blocks: float) -> bytes:
    """Decode a zero-free encoding of about ``blocks`` blocks with numpy; CobsError if invalid.

    Each block's implicit zero takes the place of the next block's code byte, so the output is
    the input with every block start set to 0, minus the first byte and minus the code bytes
    that follow a full 0xFF block (which carries no zero).
    """
    arr = np.frombuffer(view, dtype=np.uint8)
    starts = _block_starts(arr, blocks)
    out = arr.copy()
    out[starts] = 0
    if int(arr.max()) < 0xFF:
        return out[1:].tobytes()
    after_full = starts[arr[starts] == 0xFF] + 0xFF
    keep = np.ones(arr.size + 0x100, dtype=bool)   # room for a start past the end
    keep[0] = False
    keep[after_full] = False
    return out[keep[:arr.size]].tobytes()


def _block_starts(arr: np.ndarray, blocks: float) -> np.ndarray:
    """Offsets of the blocks of a zero-free encoding, unordered (CobsError if it is truncated).

    ``k`` levels of pointer doubling (``nxt`` composed with itself) shorten the chain 2**k-fold;
    `_walk` runs the short chain in C; k vectorised gathers fill the skipped nodes back in.
    All large arrays live in this thread's reused scratch space (`_scratch`).
    """
    n = arr.size
    k = _levels_for(n, blocks)
    ramp, *levels, nodes = _scratch(n, k)
    nxt = levels[0]
    np.add(ramp[:n], arr, out=nxt[:n])
    nxt[n] = n
    np.minimum(nxt, n, out=nxt)   # the chain ends at n; a last block that overshoots: below
    for prev, jump in zip(levels, levels[1:]):
        np.take(prev, prev, out=jump, mode="clip")   # in range: clip only skips the buffering
    path = _walk(levels[-1], n)
    m = len(path)
    nodes[:m] = path
    for jump in reversed(levels[:-1]):
        np.take(jump, nodes[:m], out=nodes[m:2 * m], mode="clip")
        m *= 2
    starts = nodes[:m]
    starts = starts[starts < n]   # each block start once; n (the end) may repeat
    last = int(starts.max())
    if last + int(arr[last]) != n:
        raise CobsError(f"block at offset {last} announces {int(arr[last]) - 1} bytes, "
                        f"{n - last - 1} left")
    return starts


_SCRATCH_MAX = 1 << 18    # packets up to 256 KiB reuse scratch arrays (~7 MiB per thread at most)
_scratch_local = threading.local()


def _scratch(n: int, k: int) -> list[np.ndarray]:
    """[0..n ramp, k + 1 level arrays of n + 1 entries, a node array], reused by this thread.

    Fresh arrays this size come from mmap, and their first touch costs a page fault per 4 KiB:
    measured, that was half the decode time of a 64 KiB packet. Reuse avoids it.
    """
    size = n + 1
    node_size = n + (2 << k) + 2    # a walk of L <= blocks / 2**k + 2 nodes expands 2**k-fold
    if n > _SCRATCH_MAX:
        return [np.arange(size, dtype=_INDEX), *(np.empty(size, _INDEX) for _ in range(k + 1)),
                np.empty(node_size, _INDEX)]
    have: list[np.ndarray] | None = getattr(_scratch_local, "arrays", None)
    if have is None or have[0].size < size or len(have) < k + 3 or have[-1].size < node_size:
        cap = max(size, have[0].size if have else 0)
        count = max(k + 1, len(have) - 2 if have else 0)
        have = [np.arange(cap, dtype=_INDEX), *(np.empty(cap, _INDEX) for _ in range(count)),
                np.empty(cap + (2 << _MAX_LEVELS) + 2, _INDEX)]
        _scratch_local.arrays = have
    return [have[0][:size], *(a[:size] for a in have[1:k + 2]), have[-1][:node_size]]


def _levels_for(n: int, blocks: float) -> int:
    """How many pointer-doubling levels make the block walk cheapest for ``blocks`` blocks.

    Walking one chain node costs about as much as gathering ~40 array entries (measured on the
    CI machine), and each level gathers all n entries while halving the nodes left to walk, so
    the optimum is about log2(40 * blocks / n): 4 for an f16 ReLU activation (a block every
    2 bytes), 0 for dense data.
    """
    return max(0, min(_MAX_LEVELS, int(math.log2(max(1.0, 40.0 * blocks / n)))))


def _walk(jump: np.ndarray, n: int) -> list[int]:
    """The chain ``0, jump[0], jump[jump[0]], ...`` up to and including its first value >= n.

    The list feeds its own ``map``, so the loop runs in C, one step per chain node with no
    Python bytecode; the step from ``n`` (out of the view's range) ends it.
    """
    path = [0]
    with contextlib.suppress(IndexError):
        path.extend(map(memoryview(jump)[:n].__getitem__, path))
    return path


# ---------------------------------------------------------------------------- stream


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
        """Consume ``data``; return the packets completed by it, in order.

        Delimiters are found with ``bytes.find`` over the whole chunk. A packet that lies
        wholly inside ``data`` is decoded straight from it; only a packet split across
        chunks is buffered.
        """
        chunk = _as_bytes(data)
        self.stats.bytes_in += len(chunk)
        out: list[bytes] = []
        start, n, find = 0, len(chunk), chunk.find
        view = memoryview(chunk)
        while start < n:
            z = find(DELIMITER, start)
            if z < 0:
                self._absorb(chunk, start, n)
                break
            if z > start and self._synced and not self._discarding and not self._buf:
                self._close(view[start:z], out)   # a whole packet in this chunk: no copy
            else:
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
        if self._buf:   # else idle fill between delimiters
            self._close(bytes(self._buf), out)
            self._buf.clear()

    def _close(self, encoded: bytes | memoryview, out: list[bytes]) -> None:
        """Decode one complete, non-empty packet into ``out``, or count why it was dropped."""
        size = len(encoded)
        if size > self.max_encoded:
            self.stats.dropped_oversize += 1
            self.stats.garbage_bytes += size
            return
        try:
            packet = _decode_packet(encoded)
        except CobsError:
            self.stats.dropped_invalid += 1
            self.stats.garbage_bytes += size
            return
        if len(packet) > self.max_packet:
            self.stats.dropped_oversize += 1
            self.stats.garbage_bytes += size
        else:
            self.stats.packets += 1
            out.append(packet)
