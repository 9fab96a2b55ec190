"""What the laptop accepts from the boards: one schema per control-plane topic and telemetry kind.

Holds ``parse`` (topic + payload -> an ``Accepted`` message, or a ``Rejected`` with a short
reason) and ``Malformed``, the counts of what was dropped per board and reason. Messages on a lab
network are untrusted input: a payload that is not a JSON object, a kind we do not know, a field
of the wrong type or out of bounds, or a board that is not in the inventory is counted and
dropped, never fatal. Only the fields a schema names survive (a message cannot add keys to an
event, nor set its ``type`` or ``t``: those are the receiver's); strings are clipped and nested
counters bounded. Results are accepted from the edge only. It parses; it never logs or acts.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Accepted", "Rejected", "Malformed", "parse", "MAX_PAYLOAD", "TELE_KINDS"]

MAX_PAYLOAD = 1 << 20        # bytes of one control-plane message (a power batch is the largest: ~50 KB at 1 kHz)
MAX_TEXT = 500               # characters kept of a free-text field (an error line)
MAX_LIST = 4096
MAX_NESTED = 256             # keys of a nested counters object, at every level
MAX_DEPTH = 3


@dataclass(frozen=True)
class Accepted:
    plane: str          # "status" | "tele"
    kind: str           # the status plane's "status", or a telemetry kind
    board: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class Rejected:
    board: str          # "?" when the topic names no board of the inventory
    reason: str


class _Bad(Exception):
    pass


# -- value checks: each returns the value to keep, or raises _Bad(what was expected) --------------

def _int(lo: int = 0, hi: int = (1 << 63) - 1) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _Bad(f"an integer from {lo} to {hi}")
        return v
    return check


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or abs(v) > 1e15:
        raise _Bad("a finite number")
    return v


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise _Bad("a string")
    return v[:MAX_TEXT]


def _flag(v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Bad("true or false")
    return v


def _ints(v: Any) -> list[int]:
    if not isinstance(v, list) or len(v) > MAX_LIST or not all(isinstance(x, int) and not isinstance(x, bool)
                                                              and 0 <= x < 1 << 16 for x in v):
        raise _Bad("a list of shard ids")
    return v


def _counters(v: Any, depth: int = 0) -> dict[str, Any]:
    """A nested object of counters: bounded keys and depth; leaves numbers, flags, short text or null."""
    if not isinstance(v, dict) or len(v) > MAX_NESTED or depth > MAX_DEPTH:
        raise _Bad("an object of counters")
    out: dict[str, Any] = {}
    for k, x in v.items():
        if not isinstance(k, str) or len(k) > 64:
            raise _Bad("an object of counters")
        if isinstance(x, dict):
            out[k] = _counters(x, depth + 1)
        elif x is None or isinstance(x, bool):
            out[k] = x
        elif isinstance(x, int):       # counters, seeds: any 64-bit integer
            if not -(1 << 63) <= x < 1 << 64:
                raise _Bad("an object of counters")
            out[k] = x
        elif isinstance(x, float):
            out[k] = _num(x)
        elif isinstance(x, str):
            out[k] = x[:MAX_TEXT]
        else:
            raise _Bad("an object of counters")
    return out


def _transit(v: Any) -> dict[str, list[int]]:
    """shard id -> [send stamp, arrival stamp] in ns."""
    if not isinstance(v, dict) or len(v) > MAX_NESTED:
        raise _Bad("an object of shard -> [sent_ns, arrived_ns]")
    out = {}
    for k, pair in v.items():
        if not (isinstance(k, str) and k.isdigit() and len(k) <= 5) or not isinstance(pair, list) or len(pair) != 2 \
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 64 for x in pair):
            raise _Bad("an object of shard -> [sent_ns, arrived_ns]")
        out[k] = pair
    return out


def _optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else check(v)


def _rows(v: Any) -> list[Any]:
    """A power batch's rows: each row is checked where it is written (testbed.powerlog)."""
    if not isinstance(v, list):
        raise _Bad("a list of rows")
    return v


Schema = Mapping[str, tuple[Callable[[Any], Any], bool]]   # field -> (check, required)

_ENERGY: Schema = {"energy_mj": (_optional(_num), False), "active_mj": (_num, False),
                   "compute_mj": (_num, False), "transmit_mj": (_num, False), "energy_flagged": (_flag, False),
                   "energy_modelled": (_flag, False)}
_SAMPLE_ID = _int(0, (1 << 32) - 1)
SCHEMAS: Mapping[str, Schema] = {
    "sample": {"sample": (_SAMPLE_ID, True), "compute_ms": (_num, False), "encode_ms": (_num, False),
               "bytes": (_int(), False), "at_s": (_num, False), "verdict": (_text, True),
               "shaping_ms": (_num, False), "send_ms": (_num, False), **_ENERGY},
    "result": {"sample": (_SAMPLE_ID, True), "pred": (_int(0, 1 << 20), True), "arrived": (_ints, True),
               "missing": (_ints, True), "merge_ms": (_num, False), "waited_ms": (_num, False),
               "transit": (_transit, False)},
    "energy": {"sample": (_SAMPLE_ID, True), **_ENERGY},
    "error": {"error": (_text, True)},
    "link": {"link": (_text, True)},      # and its counters: kept as a bounded object (below)
    "edge": {"decode": (_counters, False), "merge": (_counters, False), "transports": (_counters, False)},
    "power": {"rows": (_rows, True), "meter": (_counters, False), "rate_hz": (_num, False),
              "idle_w": (_optional(_num), False), "stats": (_counters, False)},
}
TELE_KINDS = tuple(SCHEMAS)
STATUS: Schema = {"state": (_text, True), "role": (_text, False), "pid": (_int(), False), "python": (_text, False),
                  "net_ns": (_text, False), "runtime": (_text, False), "clock": (_counters, False),
                  "energy": (_counters, False), "run": (_text, False), "error": (_text, False)}
_LINK_EXTRA = 128   # a link telemetry's counters: the shaper snapshot's keys, bounded like any counters


def _apply(schema: Schema, msg: Mapping[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (check, required) in schema.items():
        if msg.get(name) is None:   # absent or null: an optional field is simply not there
            if required:
                raise _Bad(f"{kind}.{name}: missing")
            continue
        try:
            out[name] = check(msg[name])
        except _Bad as exc:
            raise _Bad(f"{kind}.{name}: expected {exc}") from None
    return out


def parse(topic_name: str, payload: bytes, *, bench: str, boards: Collection[str], edge: str) -> Accepted | Rejected:
    """A control-plane message as the laptop keeps it, or why it was dropped."""
    parts = topic_name.split("/")
    if len(parts) != 4 or parts[0] != "tb" or parts[1] != bench or parts[2] not in ("status", "tele"):
        return Rejected("?", "unexpected topic")
    plane, board = parts[2], parts[3]
    if board not in boards:
        return Rejected("?", "unknown board")
    if len(payload) > MAX_PAYLOAD:
        return Rejected(board, "too large")
    try:
        msg = json.loads(payload)
    except (ValueError, RecursionError):
        return Rejected(board, "not JSON")
    if not isinstance(msg, dict):
        return Rejected(board, "not a JSON object")
    try:
        if plane == "status":
            return Accepted("status", "status", board, _apply(STATUS, msg, "status"))
        kind = msg.get("kind")
        if kind not in SCHEMAS:
            return Rejected(board, "unknown kind")
        if kind == "result" and board != edge:
            return Rejected(board, "result from a board that is not the edge")
        fields = _apply(SCHEMAS[kind], msg, kind)
        if kind == "link":
            rest = {k: v for k, v in msg.items() if k not in ("kind", "board", "link")}
            try:
                if len(rest) > _LINK_EXTRA:
                    raise _Bad("at most 128 counters")
                fields.update(_counters(rest))
            except _Bad as exc:
                raise _Bad(f"link: expected {exc}") from None
        return Accepted("tele", kind, board, fields)
    except _Bad as exc:
        return Rejected(board, str(exc))


@dataclass
class Malformed:
    """Dropped messages per board and reason; ``add`` says whether this (board, reason) is new."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))

    def add(self, r: Rejected) -> bool:
        per = self.counts[r.board]
        per[r.reason] = per.get(r.reason, 0) + 1
        return per[r.reason] == 1

    def total(self) -> int:
        return sum(n for per in self.counts.values() for n in per.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {b: dict(per) for b, per in self.counts.items()}
