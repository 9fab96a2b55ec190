"""Tests of linkemu: profiles and presets, shaper arithmetic, and the threaded sender."""
from __future__ import annotations

import ast
import json
import math
import pathlib
import threading
import time

import pytest

from linkemu.profile import PRESETS, LinkProfile, Outage, ProfileError, resolve_profile
from linkemu.shaper import ShapedSender, Shaper, Verdict

# ------------------------------------------------------------------------- profiles


def test_presets():
    hbc = {"hbc-164k": 164062.5, "hbc-328k": 328125.0, "hbc-656k": 656250.0,
           "hbc-1312k": 1312500.0}
    for name, rate in hbc.items():
        p = PRESETS[name]
        assert (p.rate_bps, p.overhead_bytes, p.max_psdu_bytes) == (rate, 9, 255)
    # BLE: on-air 1 (1M) or 2 (2M) preamble + 4 AA + 2 LL header + 3 CRC, + L2CAP 4 + ATT 3
    assert (PRESETS["ble-1m"].rate_bps, PRESETS["ble-1m"].overhead_bytes) == (1e6, 17)
    assert (PRESETS["ble-2m"].rate_bps, PRESETS["ble-2m"].overhead_bytes) == (2e6, 18)
    assert PRESETS["uart-921600"].rate_bps == 921600 * 8 / 10
    assert math.isinf(PRESETS["ideal"].rate_bps) and PRESETS["ideal"].tx_time_s(10**6) == 0.0
    assert all(p.name == n and p.delay_s == 0 and p.outages == () for n, p in PRESETS.items())


def test_tx_time_includes_overhead():
    p = LinkProfile("x", 8000.0, overhead_bytes=10)
    assert p.tx_time_s(990) == 1.0
    phy = PRESETS["hbc-164k"].phy_time_s
    assert PRESETS["hbc-164k"].tx_time_s(100) == pytest.approx(phy + 109 * 8 / 164062.5)


def test_resolve_preset_name_and_rename():
    assert resolve_profile("ble-2m") is PRESETS["ble-2m"]
    assert resolve_profile("ble-2m", name="wrist").name == "wrist"


def test_resolve_overrides_on_preset():
    p = resolve_profile({"preset": "hbc-328k", "delay_ms": 5, "overhead_bytes": 0,
                         "outages": [{"at_s": 10, "duration_s": 2}, {"at_s": 1, "duration_s": 0.5}],
                         "queue_limit_bytes": 4096, "outage_mode": "drop"}, name="arm")
    assert (p.name, p.rate_bps, p.overhead_bytes, p.delay_s) == ("arm", 328125.0, 0, 0.005)
    assert p.outages == (Outage(1.0, 0.5), Outage(10.0, 2.0))  # sorted by start
    assert p.queue_limit_bytes == 4096
    assert PRESETS["hbc-328k"].delay_s == 0.0  # the preset itself is untouched


def test_resolve_inline_without_preset():
    p = resolve_profile({"rate_bps": 250_000})
    assert (p.name, p.rate_bps, p.overhead_bytes) == ("custom", 250000.0, 0)
    assert math.isinf(resolve_profile({"rate_bps": math.inf}).rate_bps)


@pytest.mark.parametrize("spec,key,expected", [
    ("hbc-999k", None, "hbc-164k"),
    ({"preset": "nope"}, "preset", "expected one of"),
    ({"preset": "ideal", "mtu": 3}, "mtu", "unknown key; expected one of"),
    ({"delay_ms": 3}, "rate_bps", "no preset"),
    ({"rate_bps": 0}, "rate_bps", "> 0"),
    ({"rate_bps": -5}, "rate_bps", "> 0"),
    ({"rate_bps": "fast"}, "rate_bps", "number"),
    ({"rate_bps": True}, "rate_bps", "number"),
    ({"rate_bps": math.nan}, "rate_bps", "number"),
    ({"preset": "ideal", "delay_ms": -1}, "delay_ms", ">= 0"),
    ({"preset": "ideal", "delay_ms": math.inf}, "delay_ms", ">= 0"),
    ({"preset": "ideal", "overhead_bytes": 1.5}, "overhead_bytes", "integer"),
    ({"preset": "ideal", "overhead_bytes": -1}, "overhead_bytes", "integer >= 0"),
    ({"preset": "ideal", "queue_limit_bytes": 0}, "queue_limit_bytes", "integer >= 1"),
    ({"preset": "ideal", "outage_mode": "explode"}, "outage_mode", "expected one of drop, hold"),
    ({"preset": "ideal", "outages": {"at_s": 1}}, "outages", "list"),
    ({"preset": "ideal", "outages": [5]}, "outages[0]", "mapping"),
    ({"preset": "ideal", "outages": [{"at_s": 1, "duration_s": 1}, {"at_s": 2, "duration_s": -1}]},
     "outages[1].duration_s", "> 0"),
    ({"preset": "ideal", "outages": [{"at_s": -1, "duration_s": 1}]}, "outages[0].at_s", ">= 0"),
    ({"preset": "ideal", "outages": [{"at_s": 1}]}, "outages[0].duration_s", "missing"),
    ({"preset": "ideal", "outages": [{"at_s": 1, "duration_s": 1, "every_s": 3}]},
     "outages[0].every_s", "unknown key"),
    (42, None, "preset name or a mapping"),
])
def test_resolve_errors_name_the_key(spec, key, expected):
    with pytest.raises(ProfileError, match=expected) as info:
        resolve_profile(spec)
    assert info.value.key == key
    assert isinstance(info.value, ValueError)
    if key:
        assert str(info.value).startswith(f"{key}: ")


def test_as_dict_round_trip_is_json():
    p = resolve_profile({"preset": "ideal", "delay_ms": 2, "queue_limit_bytes": 100,
                         "outages": [{"at_s": 1, "duration_s": 2}]})
    d = json.loads(json.dumps(p.as_dict()))
    assert d["rate_bps"] is None
    assert LinkProfile.from_dict(d) == p
    assert LinkProfile.from_dict(PRESETS["hbc-164k"].as_dict()) == PRESETS["hbc-164k"]
    with pytest.raises(ProfileError) as info:
        LinkProfile.from_dict({**d, "mtu": 100})
    assert info.value.key == "mtu"


def test_with_outages_replaces_schedule():
    p = PRESETS["ble-1m"].with_outages([Outage(5, 1), Outage(1, 1)])
    assert p.outages == (Outage(1, 1), Outage(5, 1)) and p.rate_bps == 1e6
    with pytest.raises(ProfileError):
        Outage(0, 0)


def test_linkemu_imports_nothing_of_ours():
    root = pathlib.Path(__file__).resolve().parents[1] / "linkemu"
    for path in root.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("nodes", "testbed") for n in names), path


# ------------------------------------------------------------------------- shaper

RATE_8K = LinkProfile("8k", 8000.0)  # 1000 bytes take exactly 1 s


def test_back_to_back_frames_queue():
    s = Shaper(LinkProfile("8k", 8000.0, delay_s=0.5), start=100.0)
    verdicts = [s.offer(1000, 100.0) for _ in range(3)]
    assert [v.deliver_at for v in verdicts] == [101.5, 102.5, 103.5]
    assert all(v.accepted and v.reason is None for v in verdicts)
    assert s.queue_bytes(100.0) == 3000
    assert s.queue_bytes(101.0) == 2000  # first frame fully serialised at 101
    assert s.queue_bytes(102.5) == 1000
    assert s.queue_bytes(103.0) == 0
    assert s.counters.as_dict() == dict(frames_offered=3, bytes_offered=3000, frames_delivered=3,
                                        bytes_delivered=3000, dropped_outage=0, dropped_queue=0,
                                        dropped_loss=0, psdus_sent=3, psdus_lost=0)


def test_overhead_counts_in_tx_time():
    s = Shaper(LinkProfile("8k", 8000.0, overhead_bytes=500), start=0.0)
    assert s.offer(500, 0.0).deliver_at == 1.0
    assert s.offer(1500, 0.0).deliver_at == 3.0


def test_idle_gap_resets_link():
    s = Shaper(RATE_8K, start=0.0)
    assert s.offer(1000, 0.0).deliver_at == 1.0
    assert s.offer(1000, 0.5).deliver_at == 2.0  # waits for the link
    assert s.offer(1000, 10.0).deliver_at == 11.0  # link idle: starts at now


def test_outage_drops_only_inside_window():
    p = RATE_8K.with_outages([Outage(start_s=2.0, duration_s=1.0)])
    s = Shaper(p, start=50.0)
    assert s.offer(10, 51.99).accepted  # 10 bytes take 10 ms: done by the outage at 52.0
    assert s.offer(10, 52.0) == Verdict(None, "outage")
    assert s.in_outage(52.5) and not s.in_outage(53.0) and not s.in_outage(51.0)
    assert s.offer(10, 52.999).reason == "outage"
    assert s.offer(10, 53.0).accepted
    c = s.counters
    assert (c.frames_offered, c.frames_delivered, c.dropped_outage) == (4, 2, 2)
    assert (c.bytes_offered, c.bytes_delivered) == (40, 20)


def test_queue_limit_drops():
    s = Shaper(LinkProfile("8k", 8000.0, queue_limit_bytes=2500), start=0.0)
    assert s.offer(1000, 0.0).accepted
    assert s.offer(1000, 0.0).accepted
    assert s.offer(1000, 0.0) == Verdict(None, "queue")
    assert s.offer(500, 0.0).deliver_at == 2.5  # still fits
    assert s.offer(1000, 1.0).deliver_at == 3.5  # first frame left the queue at 1.0
    assert s.counters.dropped_queue == 1 and s.counters.frames_delivered == 4


def test_infinite_rate_only_adds_delay():
    s = Shaper(LinkProfile("ideal", math.inf, delay_s=0.25, queue_limit_bytes=10), start=0.0)
    assert [s.offer(10, 1.0).deliver_at for _ in range(5)] == [1.25] * 5
    assert s.queue_bytes(1.0) == 0


def test_time_never_goes_back():
    s = Shaper(RATE_8K, start=0.0)
    s.offer(1000, 5.0)
    assert s.offer(1000, 1.0).deliver_at == 7.0


# ------------------------------------------------------------------------- sender

FAST = LinkProfile("fast", 8e6, delay_s=0.001)  # 100 bytes in 100 us


def _frames(n: int) -> list[bytes]:
    return [i.to_bytes(4, "little") * 25 for i in range(n)]


def test_sender_delivers_all_in_order():
    got: list[tuple[bytes, int | None]] = []
    frames = _frames(200)
    with ShapedSender(lambda f, tag: got.append((f, tag)), FAST) as sender:
        verdicts = [sender.submit(f, tag=i) for i, f in enumerate(frames)]
    assert got == list(zip(frames, range(200))), "each frame comes back with its own tag"
    assert [v.deliver_at for v in verdicts] == sorted(v.deliver_at for v in verdicts)
    snap = sender.snapshot()
    assert snap["frames_delivered"] == snap["frames_sent"] == 200
    assert snap["pending_frames"] == 0 and snap["send_errors"] == 0
    json.dumps(snap)


def test_sender_counts_outage_drops():
    got: list[bytes] = []
    clock = time.monotonic
    profile = FAST.with_outages([Outage(start_s=5.0, duration_s=3600.0)])
    sender = ShapedSender(lambda f, _tag: got.append(f), profile, clock=clock)
    sender.start(t0=clock() - 10.0)  # we are 10 s into the schedule: inside the outage
    assert sender.snapshot()["in_outage"]
    assert [sender.submit(f).reason for f in _frames(5)] == ["outage"] * 5
    sender.close()
    snap = sender.snapshot()
    assert got == [] and snap["dropped_outage"] == 5 and snap["frames_delivered"] == 0


def test_sender_survives_send_errors():
    got: list[bytes] = []

    def flaky(frame: bytes, _tag: object) -> None:
        if frame[0] % 3 == 0:
            raise OSError("link down")
        got.append(frame)

    frames = _frames(9)
    with ShapedSender(flaky, FAST) as sender:
        for f in frames:
            sender.submit(f)
    snap = sender.snapshot()
    assert got == [f for f in frames if f[0] % 3] and snap["send_errors"] == 3
    assert snap["last_send_error"] == "OSError: link down"


def test_close_never_hangs_on_a_blocked_send():
    release = threading.Event()
    sender = ShapedSender(lambda frame, _tag: release.wait(), FAST)
    sender.start()
    for f in _frames(3):
        sender.submit(f)
    sender.close(timeout=0.1)
    release.set()
    assert sender.snapshot()["dropped_close"] >= 1


def test_close_without_drain_discards_and_submit_after_close_raises():
    got: list[bytes] = []
    slow = LinkProfile("slow", 8.0)  # 1 byte per second: nothing is due soon
    sender = ShapedSender(lambda f, _tag: got.append(f), slow)
    sender.start()
    sender.submit(b"x" * 100)
    sender.close(drain=False)
    assert got == [] and sender.snapshot()["dropped_close"] == 1
    with pytest.raises(RuntimeError):
        sender.submit(b"y")
    sender.close()  # idempotent
