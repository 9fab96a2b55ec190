"""Decode limits from the part's shape: a receiver that knows what a frame must hold (the edge:
one part of ``part_dim`` values) refuses, from the header alone, any frame that declares more,
before inflating or allocating it; a frame exactly at the part passes; the default decoder keeps
its 64 MiB ceiling. Bombs are built in a streaming way, so the test itself never holds them
inflated."""
from __future__ import annotations

import math
import struct
import time
import tracemalloc
import zlib
from typing import Any

import numpy as np
import pytest

from nodes import agent as agent_mod
from nodes import codec
from nodes.codec import (MAX_DECOMPRESSED_BYTES, Compression, Decoder, Encoding, decode_frame, encode_frame)
from nodes.agentconfig import Broker, EdgeConfig, InboundLink, MergeSpec, TransportEnd

PART_DIM = 8
IDS = dict(run_id=1, sample_id=2, shard=3, seq=4, send_ts_ns=5)
BOMB_BYTES = 200 << 20        # what the zstd bomb inflates to: 200 MiB of zeros


def _edge_config() -> EdgeConfig:
    return EdgeConfig(bench="b", board="edge", broker=Broker(host="127.0.0.1", port=1883), runtime="torch",
                      merge=MergeSpec(shard="merge.pt", parts=(0, 1), student_part=(0, 1), part_dim=PART_DIM,
                                      deadline_ms=250, rule="concat"),
                      inbound=(InboundLink(name="wrist-edge", transport=TransportEnd.of({"type": "mqtt", "topic": "t"})),))


def _forge(payload: bytes, *, shape: tuple[int, ...], encoding: Encoding = Encoding.F32,
           compression: Compression = Compression.ZSTD) -> bytes:
    """A CRC-valid frame around ``payload`` whose header claims ``shape``."""
    dims = list(shape) + [0] * (4 - len(shape))
    head = struct.pack("<2sBBHIIHIQBB4II", b"HB", 1, 1, int(encoding) | int(compression) << 4, 1, 2, 3, 4, 5, 0,
                       len(shape), *dims, len(payload))
    body = head + payload
    return body + struct.pack("<I", zlib.crc32(body))


def _zstd_zeros(nbytes: int, *, content_size: bool) -> bytes:
    """``nbytes`` zeros as one zstd frame, compressed 1 MiB at a time (never held whole)."""
    zstandard = pytest.importorskip("zstandard")
    cctx = zstandard.ZstdCompressor(level=1, write_content_size=content_size)
    obj = cctx.compressobj(size=nbytes if content_size else -1)
    chunk = bytes(1 << 20)
    out = [obj.compress(chunk) for _ in range(nbytes // len(chunk))]
    return b"".join(out) + obj.flush()


@pytest.fixture(scope="module")
def zstd_bomb() -> bytes:
    """200 MiB of zeros declared by its zstd frame, a few KiB on the wire."""
    return _zstd_zeros(BOMB_BYTES, content_size=True)


class _Spy:
    """Records every call of the codec's inflaters (and what size it was allowed to reach)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, int]] = []
        for name in ("_inflate_zstd", "_inflate_lz4"):
            real = getattr(codec, name)

            def spy(payload: Any, expected: int, _real: Any = real, _name: str = name) -> bytes:
                self.calls.append((_name, expected))
                return _real(payload, expected)
            monkeypatch.setattr(codec, name, spy)


def _decode_traced(dec: Decoder, buf: bytes) -> tuple[Any, int]:
    tracemalloc.start()
    try:
        frame = dec.decode(buf)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return frame, peak


def test_a_zstd_bomb_declaring_200_mib_is_refused_from_its_header(zstd_bomb: bytes,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    buf = _forge(zstd_bomb, shape=(BOMB_BYTES // 4,))
    assert len(buf) < 16 << 10, "a few KiB on the wire"
    spy = _Spy(monkeypatch)
    dec = Decoder(max_values=PART_DIM)
    frame, peak = _decode_traced(dec, buf)
    assert frame is None
    assert dec.stats.too_large == 1 and dec.stats.total_dropped == 1
    assert dec.stats.ok == dec.stats.malformed == dec.stats.internal_errors == 0
    assert spy.calls == [], "refused before any decompression"
    assert peak < 1 << 20, f"decoder allocated {peak} bytes for a {len(buf)}-byte frame"
    assert "at most 8 values" in (dec.last_error or "")


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("shape", [(PART_DIM + 1,), (2, PART_DIM), (65535, 65535, 65535, 65535)])
def test_a_frame_declaring_more_than_its_part_is_too_large(compression: Compression, encoding: Encoding,
                                                           shape: tuple[int, ...],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    n = math.prod(shape)
    if compression is Compression.NONE and n < 1 << 20:   # a real, whole frame: its payload is all there
        buf = encode_frame(np.ones(shape, np.float32), encoding=encoding, **IDS)
    else:                                                 # header only: the payload never matters
        buf = _forge(b"\x00" * 64, shape=shape, encoding=encoding, compression=compression)
    spy = _Spy(monkeypatch)
    dec = Decoder(max_values=PART_DIM)
    assert dec.decode(buf) is None
    assert dec.stats.too_large == 1 and dec.stats.total_dropped == 1 and dec.stats.internal_errors == 0
    assert spy.calls == []
    with pytest.raises(codec.FrameError) as err:
        decode_frame(buf, max_values=PART_DIM)
    assert err.value.reason == "too_large"


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("encoding", list(Encoding))
@pytest.mark.parametrize("shape", [(PART_DIM,), (1, PART_DIM), (3,), (0,)])
def test_a_frame_at_or_under_its_part_passes(compression: Compression, encoding: Encoding, shape: tuple[int, ...],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    x = np.linspace(-1.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    buf = encode_frame(x, encoding=encoding, compression=compression, **IDS)
    spy = _Spy(monkeypatch)
    dec = Decoder(max_values=PART_DIM)
    frame = dec.decode(buf)
    assert frame is not None and dec.stats.ok == 1 and dec.stats.total_dropped == 0
    assert frame.array.shape == shape
    np.testing.assert_allclose(frame.array, x, atol=0.01)
    prefix = 8 if encoding is Encoding.INT8_AFFINE else 0
    itemsize = {Encoding.F32: 4, Encoding.F16: 2, Encoding.INT8_AFFINE: 1}[encoding]
    if compression is not Compression.NONE:   # inflated to exactly the frame's size, within one part
        assert spy.calls and all(expected == prefix + x.size * itemsize <= prefix + PART_DIM * itemsize
                                 for _, expected in spy.calls)


def test_a_payload_inflating_past_its_declared_part_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """The header declares one part, the (size-less, streamed) zstd payload would inflate to 200 MiB:
    decompression stops at the part's size."""
    bomb = _zstd_zeros(BOMB_BYTES, content_size=False)
    buf = _forge(bomb, shape=(PART_DIM,))
    spy = _Spy(monkeypatch)
    dec = Decoder(max_values=PART_DIM)
    frame, peak = _decode_traced(dec, buf)
    assert frame is None and dec.stats.malformed == 1 and dec.stats.internal_errors == 0
    assert spy.calls == [("_inflate_zstd", PART_DIM * 4)]
    assert peak < 1 << 20


def test_the_default_decoder_keeps_its_64_mib_ceiling_and_takes_any_shape_under_it(zstd_bomb: bytes) -> None:
    dec = Decoder()
    assert dec.max_values is None and dec.max_decompressed_bytes == MAX_DECOMPRESSED_BYTES == 64 << 20
    big = np.ones(100_000, np.float32)
    for compression in Compression:
        assert dec.decode(encode_frame(big, compression=compression, **IDS)) is not None
    # the 200 MiB bomb is over the default ceiling: refused as before (malformed), never inflated
    frame, peak = _decode_traced(dec, _forge(zstd_bomb, shape=(BOMB_BYTES // 4,)))
    assert frame is None and dec.stats.malformed == 1 and dec.stats.too_large == 0
    assert "max_decompressed_bytes" in (dec.last_error or "") and peak < 1 << 20


def test_max_values_is_checked() -> None:
    for bad in (-1, 1.5, "8", True):
        with pytest.raises(ValueError, match="max_values"):
            Decoder(max_values=bad)  # type: ignore[arg-type]
    assert Decoder(max_values=0).decode(encode_frame(np.ones(1), **IDS)) is None


def test_the_edge_decodes_with_its_part_dim_and_drops_a_bomb_without_merging(zstd_bomb: bytes) -> None:
    agent = agent_mod.EdgeAgent(_edge_config())
    part_dim = agent.ecfg.merge.part_dim
    assert agent._decoder.max_values == part_dim
    merged: list[Any] = []
    agent._merger.add = lambda *a, **k: merged.append(a)  # type: ignore[method-assign]
    bomb = _forge(zstd_bomb, shape=(BOMB_BYTES // 4,))
    agent._frame(agent_mod._Arrival(bomb, time.monotonic(), time.time_ns()))
    assert merged == [] and agent._decoder.stats.too_large == 1
    part = encode_frame(np.ones(part_dim, np.float32), **IDS)
    agent._frame(agent_mod._Arrival(part, time.monotonic(), time.time_ns()))
    assert len(merged) == 1 and agent._decoder.stats.ok == 1
