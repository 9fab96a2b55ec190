"""The decoder fuzz bench (bench/fuzz_decoders.py) at a small count: every decoder survives
hostile input, accepts no corrupted frame, and the harness reports a decoder that misbehaves
(raises inside, rejects valid frames, or accepts corrupted ones)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "fuzz_decoders.py"


def _bench_module():
    spec = importlib.util.spec_from_file_location("fuzz_decoders", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_decoder_survives_a_small_fuzz_run() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--inputs", "3000", "--seed", "7", "--json"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, out.stdout
    assert report["ok"] and report["exceptions"] == 0 and report["corrupted_accepted"] == 0
    assert report["internal_errors"] == 0
    assert set(report["decoders"]) == {"cobs_stream", "raw_frame", "ble_fragments"}
    for name, d in report["decoders"].items():
        assert d["inputs"] == 3000 and d["clean_lost"] == 0 and d["internal_errors"] == 0, name
        assert d["accepted"] > 0 and all(d["by_kind"].values()), name
        assert all(d["mutations"].values()), (name, d["mutations"])
    ble = report["decoders"]["ble_fragments"]["reassembler"]
    for key in ("dropped_missing", "dropped_timeout", "dropped_malformed", "fragments_ignored"):
        assert ble[key] > 0, key     # every drop path was reached and counted


def test_the_harness_reports_an_exception_a_decoder_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Both decoders catch everything (a receiver must not die); a bug inside them must still
    fail the fuzz run, through their internal_errors counters."""
    import struct

    import nodes.codec as codec
    bench = _bench_module()
    real_first = bench.ble_frag.Reassembler._first

    def first(self, buf, seq, now):  # a regression: a short first fragment breaks the parser
        if len(buf) < 12:
            raise struct.error("unpack requires a buffer of 8 bytes")
        return real_first(self, buf, seq, now)

    monkeypatch.setattr(bench.ble_frag.Reassembler, "_first", first)
    tally = bench.fuzz_ble_fragments(inputs=2000, seed=7)
    assert tally.exceptions == 0 and tally.internal_errors > 0
    assert "swallowed" in str(tally.first_failure)

    real_layout = codec._parse_layout

    def layout(fields):  # a regression: 3-D shapes raise
        if fields[10] == 3:
            raise IndexError("shape index out of range")
        return real_layout(fields)

    monkeypatch.setattr(codec, "_parse_layout", layout)
    tally = bench.fuzz_raw_frame(inputs=2000, seed=7)
    assert tally.internal_errors > 0 and tally.clean_lost > 0


def test_the_harness_reports_valid_frames_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    import nodes.codec as codec
    bench = _bench_module()
    real = codec._check_envelope

    def envelope(data):  # a regression: frames over 200 B are called truncated
        if len(data) > 200:
            raise codec.FrameError("too long", reason="truncated")
        return real(data)

    monkeypatch.setattr(codec, "_check_envelope", envelope)
    tally = bench.fuzz_raw_frame(inputs=2000, seed=7)
    assert tally.clean_lost > 0 and tally.internal_errors == 0
    assert "valid frame was rejected" in str(tally.first_failure)


def test_the_harness_reports_a_corrupted_frame_let_through(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = _bench_module()
    real = bench.Decoder.decode

    def decode(self, buf):  # a regression: the CRC check is skipped
        frame = real(self, buf)
        return frame if frame is not None or len(buf) < 60 else object()

    monkeypatch.setattr(bench.Decoder, "decode", decode)
    tally = bench.fuzz_raw_frame(inputs=2000, seed=7)
    assert tally.corrupted_accepted > 0 and "corrupted" in str(tally.first_failure)
