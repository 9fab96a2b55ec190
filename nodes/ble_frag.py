"""BLE fragmentation: cut a wire frame into notification-sized fragments and put it back together.

Holds the fragment format, ``fragment()`` (sender side) and ``Reassembler`` (receiver side)
with its counters. Pure logic with an injected clock: it must not import any Bluetooth stack,
do I/O or read the wall clock, and ``Reassembler.feed`` must never raise, whatever bytes it is
given.

Fragment format (little-endian), designed for one ordered GATT notification stream::

    every fragment:    seq u8 | index u24 | chunk ...
    index 0 only:      seq u8 | index u24 (=0) | total_len u32 | chunk ...

- ``seq`` numbers frames modulo 256; ``index`` numbers the fragments of one frame from 0
  (a u24: 16 Mi fragments, 256 MiB even at the minimum ATT MTU of 23; the `Reassembler`
  refuses frames over ``max_frame_bytes``, 64 MiB by default).
- The first fragment announces the frame's total length; the frame is complete when the
  chunks add up to it, so no "last" flag is needed.
- Overhead: 4 bytes per fragment plus 4 per frame. A notification carries at most
  ATT_MTU - 3 bytes (20 at the default MTU 23, 244 at MTU 247), so a frame of ``n`` bytes
  takes ``1 + ceil(max(0, n - (P - 8)) / (P - 4))`` notifications for a payload size ``P``.

The receiver holds at most one partial frame (a GATT notification stream is ordered, so a
new first fragment means the previous frame lost its tail). A partial frame is dropped and
counted when a fragment is missing or out of order, when a first fragment of another frame
arrives, when no fragment for it arrived within ``timeout_s``, or when the link is reset.
"""
from __future__ import annotations

import math
import struct
from dataclasses import asdict, dataclass

__all__ = [
    "HEADER_SIZE", "FIRST_HEADER_SIZE", "MIN_PAYLOAD_SIZE", "MAX_FRAGMENTS",
    "fragment", "fragment_count", "ReassemblyCounters", "Reassembler",
]

_HEAD = struct.Struct("<I")          # seq in the low byte, index in the upper 24 bits
_TOTAL = struct.Struct("<I")
HEADER_SIZE: int = _HEAD.size                       # 4
FIRST_HEADER_SIZE: int = HEADER_SIZE + _TOTAL.size  # 8
MIN_PAYLOAD_SIZE: int = FIRST_HEADER_SIZE + 1       # smallest payload that still carries data
MAX_FRAGMENTS: int = 1 << 24
DEFAULT_MAX_FRAME_BYTES: int = 64 * 1024 * 1024


def _pack_head(seq: int, index: int) -> bytes:
    return _HEAD.pack((index << 8) | (seq & 0xFF))


def fragment_count(frame_len: int, *, payload_size: int) -> int:
    """How many fragments ``fragment`` makes of a frame of ``frame_len`` bytes."""
    first = payload_size - FIRST_HEADER_SIZE
    rest = max(0, frame_len - first)
    return 1 + math.ceil(rest / (payload_size - HEADER_SIZE))


def fragment(frame: bytes, *, seq: int, payload_size: int) -> list[bytes]:
    """Cut ``frame`` into fragments of at most ``payload_size`` bytes (headers included).

    ``seq`` is taken modulo 256. Raises ValueError when ``payload_size`` is below
    ``MIN_PAYLOAD_SIZE`` or the frame would need more than ``MAX_FRAGMENTS`` fragments.
    """
    if payload_size < MIN_PAYLOAD_SIZE:
        raise ValueError(f"payload_size must be >= {MIN_PAYLOAD_SIZE}, got {payload_size}")
    data = memoryview(bytes(frame))
    count = fragment_count(len(data), payload_size=payload_size)
    if count > MAX_FRAGMENTS:
        raise ValueError(f"a {len(data)}-byte frame needs {count} fragments of {payload_size} B; "
                         f"at most {MAX_FRAGMENTS} fit the u24 index")
    first_len = payload_size - FIRST_HEADER_SIZE
    out = [_pack_head(seq, 0) + _TOTAL.pack(len(data)) + bytes(data[:first_len])]
    step = payload_size - HEADER_SIZE
    for index, start in enumerate(range(first_len, len(data), step), start=1):
        out.append(_pack_head(seq, index) + bytes(data[start:start + step]))
    return out


@dataclass
class ReassemblyCounters:
    """What a `Reassembler` did. Frame counters count frames; ``fragments*`` count fragments.

    - ``frames_ok``: frames returned whole.
    - ``fragments``: every fragment fed, good or bad.
    - ``dropped_missing``: frames dropped because a fragment was missing or out of order
      (including a frame whose first fragment never arrived, counted once, and a partial
      frame abandoned when the link was reset).
    - ``dropped_timeout``: partial frames that got no fragment for ``timeout_s``.
    - ``dropped_malformed``: fragments too short to parse or announcing an impossible
      length, and partial frames overrun by a chunk longer than they announced.
    - ``fragments_ignored``: fragments of a frame already dropped.
    - ``internal_errors``: fragments on which the reassembler itself raised: a bug in this
      module, counted so that it shows (the partial frame is dropped, counted as malformed).
    """

    frames_ok: int = 0
    fragments: int = 0
    dropped_missing: int = 0
    dropped_timeout: int = 0
    dropped_malformed: int = 0
    fragments_ignored: int = 0
    internal_errors: int = 0

    @property
    def frames_dropped(self) -> int:
        return self.dropped_missing + self.dropped_timeout + self.dropped_malformed

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "frames_dropped": self.frames_dropped}


@dataclass
class _Partial:
    seq: int
    total: int
    next_index: int
    last_seen: float
    data: bytearray


class Reassembler:
    """Rebuilds frames from the fragments of one ordered stream; never raises on garbage."""

    def __init__(self, timeout_s: float, *, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.max_frame_bytes = int(max_frame_bytes)
        self.counters = ReassemblyCounters()
        self._partial: _Partial | None = None
        self._discarding: int | None = None   # seq of a frame already counted as dropped

    @property
    def pending(self) -> bool:
        """True while a partial frame is held."""
        return self._partial is not None

    def expire(self, now: float) -> int:
        """Drop the partial frame if it got no fragment for ``timeout_s``; returns frames dropped."""
        p = self._partial
        if p is not None and now - p.last_seen > self.timeout_s:
            self._partial = None
            self.counters.dropped_timeout += 1
            return 1
        return 0

    def reset(self) -> int:
        """Abandon the partial frame (the link went down); it counts as missing. Returns 0 or 1."""
        self._discarding = None
        if self._partial is None:
            return 0
        self._partial = None
        self.counters.dropped_missing += 1
        return 1

    def feed(self, fragment: bytes | bytearray | memoryview, now: float) -> bytes | None:
        """Take one fragment received at ``now``; returns a whole frame when this completes one."""
        self.counters.fragments += 1
        try:
            return self._feed(bytes(fragment), now)
        except Exception:  # noqa: BLE001 - a receiver must never be taken down by its input
            self._partial = None
            self.counters.dropped_malformed += 1
            self.counters.internal_errors += 1
            return None

    # -- internals -----------------------------------------------------------------------
    def _feed(self, buf: bytes, now: float) -> bytes | None:
        self.expire(now)
        if len(buf) < HEADER_SIZE:
            self.counters.dropped_malformed += 1
            return None
        (head,) = _HEAD.unpack_from(buf)
        seq, index = head & 0xFF, head >> 8
        if index == 0:
            return self._first(buf, seq, now)
        return self._next(buf[HEADER_SIZE:], seq, index, now)

    def _first(self, buf: bytes, seq: int, now: float) -> bytes | None:
        if len(buf) < FIRST_HEADER_SIZE:
            self.counters.dropped_malformed += 1
            return None
        (total,) = _TOTAL.unpack_from(buf, HEADER_SIZE)
        chunk = buf[FIRST_HEADER_SIZE:]
        if total > self.max_frame_bytes or len(chunk) > total:
            self.counters.dropped_malformed += 1
            return None
        if self._partial is not None:          # the previous frame lost its tail
            self.counters.dropped_missing += 1
        self._discarding = None
        self._partial = _Partial(seq=seq, total=total, next_index=1, last_seen=now,
                                 data=bytearray(chunk))
        return self._complete()

    def _next(self, chunk: bytes, seq: int, index: int, now: float) -> bytes | None:
        p = self._partial
        if p is None or p.seq != seq:
            return self._orphan(seq)
        if index != p.next_index or not chunk:
            self._drop_partial(missing=True)
            return None
        if len(p.data) + len(chunk) > p.total:
            self._drop_partial(missing=False)
            return None
        p.data += chunk
        p.next_index += 1
        p.last_seen = now
        return self._complete()

    def _orphan(self, seq: int) -> None:
        """A fragment of a frame we hold nothing of: its first fragment (at least) was lost."""
        if self._partial is not None:           # and the partial we hold lost its tail
            self._partial = None
            self.counters.dropped_missing += 1
        if self._discarding == seq:
            self.counters.fragments_ignored += 1
        else:
            self._discarding = seq
            self.counters.dropped_missing += 1
        return None

    def _drop_partial(self, *, missing: bool) -> None:
        p = self._partial
        assert p is not None
        self._partial = None
        self._discarding = p.seq
        if missing:
            self.counters.dropped_missing += 1
        else:
            self.counters.dropped_malformed += 1

    def _complete(self) -> bytes | None:
        p = self._partial
        if p is None or len(p.data) != p.total:
            return None
        self._partial = None
        self.counters.frames_ok += 1
        return bytes(p.data)
