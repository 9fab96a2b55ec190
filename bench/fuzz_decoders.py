#!/usr/bin/env python3
"""Bench (fuzz mode): the COBS stream decoder and the raw frame decoder on hostile input.

Three fuzzers, each driven by a seeded PRNG so a failure can be replayed with ``--seed``:

- ``cobs_stream``: byte streams of 1-4 real wire frames framed as the serial transport sends
  them (``00 COBS(frame) 00``), then either left clean, replaced by random bytes, or mutated
  (bit flips, truncations, lost spans, insertions of random bytes, duplicated spans, zero
  bytes injected); each fed in 1-4 random pieces to a fresh `CobsStreamDecoder`, and every
  packet it returns offered to `nodes.codec.Decoder`, as the edge does.
- ``raw_frame``: single buffers given to `nodes.codec.Decoder`: random bytes, valid frames,
  and valid frames mutated the same ways.
- ``ble_fragments``: notification streams of 1-4 real wire frames cut by `nodes.ble_frag.fragment`
  (payload sizes from the 9-byte minimum to 244, ATT_MTU 247), then left clean, replaced by
  random notifications, or mutated at the fragment level (a fragment lost, duplicated, swapped
  with its neighbour, bit-flipped, truncated, a random notification inserted, a stall past the
  reassembly timeout); fed to a fresh `Reassembler` on an injected clock, every frame it
  returns offered to `nodes.codec.Decoder`.

Checked for every input: no exception escapes, and none is swallowed by a decoder's own
catch-all (its ``internal_errors`` counter stays 0); every frame accepted is byte-equal to one
of the frames that input was built from (no corrupted payload accepted); a clean stream
loses no frame; the counters account for every input (decoder ok + drops == inputs,
COBS packets == packets returned, bytes_in == bytes fed, reassembler fragments == fragments
fed and frames_ok == frames returned).

  default   100,000 inputs per decoder
  --quick   20,000 inputs per decoder (well under 60 s)
  --json    last line of stdout is one JSON object with every figure
Exit status 1 when any check failed (the figures are printed first).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nodes import ble_frag, cobs  # noqa: E402
from nodes.codec import Decoder, Encoding, FrameType, encode_frame  # noqa: E402

FULL_INPUTS = 100_000
QUICK_INPUTS = 20_000
MUTATIONS = ("bit_flips", "truncate", "lose_span", "insert", "duplicate", "zero_bytes")
FRAGMENT_MUTATIONS = ("lose", "duplicate", "swap", "bit_flips", "truncate", "insert", "stall")
PAYLOAD_SIZES = (ble_frag.MIN_PAYLOAD_SIZE, 20, 64, 180, 244)   # 244 = ATT_MTU 247 - 3
REASSEMBLY_TIMEOUT_S = 0.5


# ---------------------------------------------------------------------------- inputs


def frame_pool(rng: random.Random, *, count: int = 64) -> list[bytes]:
    """Real frames: every encoding, shapes up to 4-D, ReLU-like zeros, a few heartbeats."""
    nprng = np.random.default_rng(rng.randrange(1 << 32))
    pool: list[bytes] = []
    for i in range(count):
        ndim = rng.randrange(0, 4)
        shape = tuple(rng.randrange(1, 9) for _ in range(ndim))
        values = np.maximum(nprng.standard_normal(shape), 0.0) if i % 2 else nprng.standard_normal(shape)
        if i % 16 == 15:
            values, ftype = np.zeros(0, dtype=np.float32), FrameType.HEARTBEAT
        else:
            ftype = FrameType.ACTIVATION
        pool.append(encode_frame(values, run_id=rng.randrange(1 << 32), sample_id=i, shard=i % 5,
                                 seq=i, send_ts_ns=rng.randrange(1 << 63),
                                 encoding=list(Encoding)[i % len(Encoding)], frame_type=ftype))
    return pool


def mutate(rng: random.Random, buf: bytes) -> tuple[bytes, list[str]]:
    """1-3 random mutations of ``buf``; returns the result and the names applied."""
    data = bytearray(buf)
    applied: list[str] = []
    for _ in range(rng.randrange(1, 4)):
        op = rng.choice(MUTATIONS)
        applied.append(op)
        n = len(data)
        if op == "bit_flips" and n:
            for _ in range(rng.randrange(1, 5)):
                data[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == "truncate":
            del data[rng.randrange(n + 1):]
        elif op == "lose_span" and n:
            at = rng.randrange(n)
            del data[at:at + rng.randrange(1, 65)]
        elif op == "insert":
            at = rng.randrange(n + 1)
            data[at:at] = rng.randbytes(rng.randrange(1, 65))
        elif op == "duplicate" and n:
            at = rng.randrange(n)
            data[at:at] = data[at:at + rng.randrange(1, 129)]
        elif op == "zero_bytes" and n:
            for _ in range(rng.randrange(1, 3)):
                data[rng.randrange(n)] = 0
    return bytes(data), applied


def random_bytes(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((rng.randrange(0, 64), rng.randrange(0, 2048))))


def _kind(rng: random.Random) -> str:
    r = rng.random()
    return "random" if r < 0.25 else "clean" if r < 0.35 else "mutated"


class Tally:
    """Figures of one fuzzer."""

    def __init__(self, name: str, *, mutations: tuple[str, ...] = MUTATIONS) -> None:
        self.name = name
        self.inputs = self.bytes = self.accepted = self.exceptions = self.corrupted_accepted = 0
        self.clean_lost = self.internal_errors = 0
        self.by_kind = {"random": 0, "clean": 0, "mutated": 0}
        self.mutations = dict.fromkeys(mutations, 0)
        self.first_failure: str | None = None
        self.seconds = 0.0
        self.extra: dict[str, Any] = {}

    def fail(self, what: str) -> None:
        if self.first_failure is None:
            self.first_failure = what

    def as_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "bytes": self.bytes, "by_kind": self.by_kind,
                "mutations": self.mutations, "accepted": self.accepted, **self.extra,
                "exceptions": self.exceptions, "internal_errors": self.internal_errors,
                "corrupted_accepted": self.corrupted_accepted,
                "clean_lost": self.clean_lost, "seconds": round(self.seconds, 3),
                "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else None,
                "first_failure": self.first_failure}


def _build(rng: random.Random, tally: Tally, clean: bytes) -> tuple[str, bytes]:
    kind = _kind(rng)
    tally.by_kind[kind] += 1
    if kind == "random":
        return kind, random_bytes(rng)
    if kind == "clean":
        return kind, clean
    data, applied = mutate(rng, clean)
    for op in applied:
        tally.mutations[op] += 1
    return kind, data


# ---------------------------------------------------------------------------- fuzzers


def _escaped(tally: Tally, i: int) -> None:
    """An exception escaped a decoder on input ``i`` (call from the ``except`` block)."""
    tally.exceptions += 1
    tally.fail(f"input {i}: {traceback.format_exc(limit=3)}")


def _through_codec(codec: Decoder, frames: list[bytes]) -> tuple[list[bytes], int]:
    """The frames the codec accepts (as the edge offers them), and how many it dropped."""
    accepted = [f for f in frames if codec.decode(f) is not None]
    return accepted, len(frames) - len(accepted)


def _check_delivered(tally: Tally, i: int, accepted: list[bytes], sent: list[bytes], *,
                     clean_whole: bool) -> None:
    """Every accepted frame must be one that was sent; a clean input must deliver all of them."""
    tally.accepted += len(accepted)
    corrupt = [f for f in accepted if f not in sent]
    if corrupt:
        tally.corrupted_accepted += len(corrupt)
        tally.fail(f"input {i}: accepted a frame that was not sent: {corrupt[0][:32].hex()}...")
    if not clean_whole:
        tally.clean_lost += 1
        tally.fail(f"input {i}: a clean input lost frames")


def _check_internal(tally: Tally, i: int, count: int, detail: object) -> None:
    """A decoder's catch-all swallowed an exception of its own (a bug): as bad as an escape.
    ``count`` is the decoders' cumulative ``internal_errors`` counter."""
    if count > tally.internal_errors:
        tally.internal_errors = count
        tally.fail(f"input {i}: a decoder raised internally and swallowed it: {detail}")


def fuzz_cobs_stream(*, inputs: int, seed: int) -> Tally:
    rng = random.Random(seed)
    pool = frame_pool(rng)
    wires = {f: b"\x00" + cobs.encode(f) + b"\x00" for f in pool}
    tally, codec = Tally("cobs_stream"), Decoder()
    cobs_totals = dict.fromkeys(("packets", "dropped_invalid", "dropped_oversize", "garbage_bytes"), 0)
    cobs_passed_bad_crc = 0
    t0 = time.perf_counter()
    for i in range(inputs):
        sent = [rng.choice(pool) for _ in range(rng.randrange(1, 5))]
        kind, stream = _build(rng, tally, b"".join(wires[f] for f in sent))
        tally.inputs += 1
        tally.bytes += len(stream)
        try:
            dec = cobs.CobsStreamDecoder(max_packet=rng.choice((1 << 20, 4096, 512)))
            cuts = sorted(rng.randrange(len(stream) + 1) for _ in range(rng.randrange(0, 4)))
            packets: list[bytes] = []
            for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                packets += dec.feed(stream[a:b])
            accepted, dropped = _through_codec(codec, packets)
        except Exception:  # noqa: BLE001 - counting escapes is the point
            _escaped(tally, i)
            continue
        _check_internal(tally, i, codec.stats.internal_errors, codec.last_error)
        cobs_passed_bad_crc += dropped
        for key in cobs_totals:
            cobs_totals[key] += getattr(dec.stats, key)
        if dec.stats.packets != len(packets) or dec.stats.bytes_in != len(stream):
            tally.fail(f"input {i}: COBS counters do not add up: {dec.stats.as_dict()}")
        fits = dec.max_packet >= max(map(len, sent))
        _check_delivered(tally, i, accepted, sent, clean_whole=kind != "clean" or not fits or accepted == sent)
    tally.seconds = time.perf_counter() - t0
    tally.extra = {"cobs": cobs_totals, "cobs_passed_then_codec_dropped": cobs_passed_bad_crc,
                   "codec": codec.stats.as_dict()}
    return tally


def fuzz_raw_frame(*, inputs: int, seed: int) -> Tally:
    rng = random.Random(seed + 1)
    pool = frame_pool(rng)
    originals = set(pool)
    tally, codec = Tally("raw_frame"), Decoder()
    t0 = time.perf_counter()
    for i in range(inputs):
        kind, buf = _build(rng, tally, rng.choice(pool))
        tally.inputs += 1
        tally.bytes += len(buf)
        try:
            frame = codec.decode(buf)
        except Exception:  # noqa: BLE001 - counting escapes is the point
            _escaped(tally, i)
            continue
        _check_internal(tally, i, codec.stats.internal_errors, codec.last_error)
        if frame is None:
            if kind == "clean":
                tally.clean_lost += 1
                tally.fail(f"input {i}: a valid frame was rejected: {codec.last_error}")
            continue
        tally.accepted += 1
        if buf not in originals:  # a mutation that put the bytes back as they were is no corruption
            tally.corrupted_accepted += 1
            tally.fail(f"input {i}: accepted a corrupted frame {buf[:32].hex()}...")
    tally.seconds = time.perf_counter() - t0
    stats = codec.stats.as_dict()
    if stats["ok"] + stats["total_dropped"] != tally.inputs - tally.exceptions:
        tally.fail(f"decoder counters do not add up to the inputs: {stats}")
    tally.extra = {"codec": stats}
    return tally


def mutate_fragments(rng: random.Random, frags: list[bytes]) -> tuple[list[tuple[float, bytes]], list[str]]:
    """1-3 fragment-level mutations; returns (gap before it in s, fragment) pairs and the names."""
    items = [(0.001, f) for f in frags]
    applied: list[str] = []
    for _ in range(rng.randrange(1, 4)):
        op = rng.choice(FRAGMENT_MUTATIONS)
        applied.append(op)
        n = len(items)
        at = rng.randrange(n) if n else 0
        if op == "lose" and n:
            del items[at]
        elif op == "duplicate" and n:
            items.insert(at, items[at])
        elif op == "swap" and n > 1:
            at = min(at, n - 2)
            items[at], items[at + 1] = items[at + 1], items[at]
        elif op == "bit_flips" and n:
            gap, data = items[at]
            buf = bytearray(data)
            for _ in range(rng.randrange(1, 4)):
                if buf:
                    buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            items[at] = (gap, bytes(buf))
        elif op == "truncate" and n:
            gap, data = items[at]
            items[at] = (gap, data[:rng.randrange(len(data) + 1)])
        elif op == "insert":
            items.insert(rng.randrange(n + 1), (0.001, random_bytes(rng)[:rng.choice(PAYLOAD_SIZES)]))
        elif op == "stall" and n:
            items[at] = (REASSEMBLY_TIMEOUT_S * rng.uniform(1.01, 4), items[at][1])
    return items, applied


def fuzz_ble_fragments(*, inputs: int, seed: int) -> Tally:
    rng = random.Random(seed + 2)
    pool = frame_pool(rng)
    tally, codec = Tally("ble_fragments", mutations=FRAGMENT_MUTATIONS), Decoder()
    totals = dict.fromkeys(("frames_ok", "fragments", "dropped_missing", "dropped_timeout",
                            "dropped_malformed", "fragments_ignored", "internal_errors"), 0)
    reassembled_then_codec_dropped = 0
    t0 = time.perf_counter()
    for i in range(inputs):
        sent = [rng.choice(pool) for _ in range(rng.randrange(1, 5))]
        size, seq = rng.choice(PAYLOAD_SIZES), rng.randrange(256)
        frags = [x for k, f in enumerate(sent) for x in ble_frag.fragment(f, seq=seq + k, payload_size=size)]
        kind = _kind(rng)
        tally.by_kind[kind] += 1
        if kind == "random":
            items = [(0.001, random_bytes(rng)[:rng.choice(PAYLOAD_SIZES)]) for _ in range(rng.randrange(1, 20))]
        elif kind == "clean":
            items = [(0.001, f) for f in frags]
        else:
            items, applied = mutate_fragments(rng, frags)
            for op in applied:
                tally.mutations[op] += 1
        tally.inputs += 1
        tally.bytes += sum(len(f) for _, f in items)
        try:
            ra = ble_frag.Reassembler(REASSEMBLY_TIMEOUT_S)
            now, frames = 0.0, []
            for gap, f in items:
                now += gap
                if (frame := ra.feed(f, now)) is not None:
                    frames.append(frame)
            ra.expire(now + 2 * REASSEMBLY_TIMEOUT_S)
            accepted, dropped = _through_codec(codec, frames)
        except Exception:  # noqa: BLE001 - counting escapes is the point
            _escaped(tally, i)
            continue
        c = ra.counters
        for key in totals:
            totals[key] += getattr(c, key)
        _check_internal(tally, i, codec.stats.internal_errors + totals["internal_errors"],
                        "Reassembler.feed" if c.internal_errors else codec.last_error)
        reassembled_then_codec_dropped += dropped
        if c.fragments != len(items) or c.frames_ok != len(frames):
            tally.fail(f"input {i}: reassembler counters do not add up: {c.as_dict()}")
        _check_delivered(tally, i, accepted, sent,
                         clean_whole=kind != "clean" or (accepted == sent and not c.frames_dropped))
    tally.seconds = time.perf_counter() - t0
    tally.extra = {"reassembler": totals, "reassembled_then_codec_dropped": reassembled_then_codec_dropped,
                   "codec": codec.stats.as_dict()}
    return tally


FUZZERS: dict[str, Callable[..., Tally]] = {"cobs_stream": fuzz_cobs_stream, "raw_frame": fuzz_raw_frame,
                                            "ble_fragments": fuzz_ble_fragments}


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_INPUTS} inputs per decoder")
    ap.add_argument("--json", action="store_true", help="last line of stdout: one JSON object")
    ap.add_argument("--inputs", type=int, default=None, help="inputs per decoder (overrides the mode)")
    ap.add_argument("--seed", type=int, default=20240501)
    args = ap.parse_args(argv)
    inputs = args.inputs or (QUICK_INPUTS if args.quick else FULL_INPUTS)
    results = {name: fuzz(inputs=inputs, seed=args.seed) for name, fuzz in FUZZERS.items()}
    report = {
        "mode": "quick" if args.quick else "full", "seed": args.seed,
        "decoders": {name: t.as_dict() for name, t in results.items()},
        "exceptions": sum(t.exceptions for t in results.values()),
        "internal_errors": sum(t.internal_errors for t in results.values()),
        "corrupted_accepted": sum(t.corrupted_accepted for t in results.values()),
        "ok": all(t.first_failure is None for t in results.values()),
    }
    for name, t in results.items():
        d = t.as_dict()
        print(f"{name:13s} {d['inputs']:>8,} inputs  {d['bytes'] / 1e6:7.1f} MB  "
              f"{d['inputs_per_s']:>7,} inputs/s  accepted {d['accepted']:>7,}  "
              f"exceptions {d['exceptions']}  internal errors {d['internal_errors']}  "
              f"corrupted accepted {d['corrupted_accepted']}  "
              f"clean lost {d['clean_lost']}")
        if t.first_failure:
            print(f"  FAILED: {t.first_failure}")
    if args.json:
        print(json.dumps(report))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
