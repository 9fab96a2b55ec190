"""Shaper arithmetic under an injected clock: fragmentation, outages (drop vs hold), jitter,
connection events, loss verdicts and seeded replay. Numbers are chosen binary-exact. And the
threaded ShapedSender's per-frame tags when a profile reorders."""
from __future__ import annotations

import math
import struct
import threading
import time

import pytest

from linkemu.loss import LossModel
from linkemu.outage import Outage, OutageTrace, TracePoint
from linkemu.profile import PRESETS, LinkProfile
from linkemu.shaper import ShapedSender, Shaper, Verdict

# 8000 bit/s: one byte per ms. PSDUs of at most 16 bytes with a 4-byte header (12 payload)
# and 0.25 s of PHY time each.
FRAGS = LinkProfile("frags", 8000.0, overhead_bytes=4, max_psdu_bytes=16, phy_time_s=0.25)


def test_fragmentation_charge_is_exact():
    assert FRAGS.framing.fragments(30) == [12, 12, 6]
    assert FRAGS.framing.fragments(0) == [0]
    # 3 PSDUs: 3 * 0.25 + (16 + 16 + 10) bytes * 1 ms
    assert FRAGS.airtime_s(30) == 0.75 + 0.042
    assert FRAGS.airtime_s(12) == 0.25 + 0.016
    assert FRAGS.goodput_bps(30) == 30 * 8 / 0.792
    s = Shaper(FRAGS, start=0.0)
    assert s.offer(30, 0.0).deliver_at == 0.792
    assert s.offer(12, 0.0).deliver_at == 0.792 + 0.266
    assert s.counters.psdus_sent == 4


def test_hbc_airtime_formula():
    p = PRESETS["hbc-164k"]
    n = 64 * 1024
    frames = math.ceil(n / 246)
    expected = frames * p.phy_time_s + (n + frames * 9) * 8 / p.rate_bps
    assert p.airtime_s(n) == pytest.approx(expected, rel=1e-12)
    assert 3.3 < p.airtime_s(n) < 3.5  # "about 3.4 s at the lowest rate" (issue #4)
    for name in ("hbc-164k", "hbc-328k", "hbc-656k", "hbc-1312k"):
        assert 0.87 < PRESETS[name].goodput_bps(n) / PRESETS[name].rate_bps < 0.96


def test_outage_drop_cuts_a_frame_on_air_and_frees_the_link():
    p = FRAGS.with_outages([Outage(1.0, 1.0)])
    s = Shaper(p, start=0.0)
    assert s.offer(30, 0.0).deliver_at == 0.792
    # queued behind it: PSDU 1 ends 1.058, but the link goes down at 1.0 -> dropped
    assert s.offer(30, 0.5) == Verdict(None, "outage")
    assert s.offer(1, 1.5) == Verdict(None, "outage")  # offered while down
    assert s.offer(12, 2.0).deliver_at == 2.266  # link free again when it comes up
    assert s.counters.dropped_outage == 2


def test_outage_hold_waits_and_resends_a_cut_psdu():
    p = FRAGS.with_outages([Outage(1.0, 1.0)]).replace(outage_mode="hold")
    s = Shaper(p, start=0.0)
    assert s.offer(30, 0.0).deliver_at == 0.792
    # PSDU 1: 0.792..1.058 would be cut at 1.0 -> resent 2.0..2.266; then 2.532; then 2.792
    assert s.offer(30, 0.5).deliver_at == 2.792
    assert s.offer(12, 1.5).deliver_at == 2.792 + 0.266  # offered while down: held
    assert s.counters.dropped_outage == 0 and s.counters.frames_delivered == 3


def test_hold_respects_queue_limit():
    p = FRAGS.replace(outages=(Outage(0.0, 10.0),), outage_mode="hold", queue_limit_bytes=40)
    s = Shaper(p, start=0.0)
    assert s.offer(30, 1.0).accepted
    assert s.offer(30, 2.0) == Verdict(None, "queue")
    assert s.offer(10, 3.0).deliver_at == 10.0 + 0.792 + 0.264
    assert s.queue_bytes(9.0) == 40


def test_endless_hold_never_delivers():
    p = FRAGS.replace(outages=(Outage(0.0, math.inf),), outage_mode="hold")
    assert Shaper(p, start=0.0).offer(5, 1.0).deliver_at == math.inf


def test_jitter_is_bounded_and_keeps_order():
    p = LinkProfile("j", 8000.0, delay_s=0.5, jitter_s=0.25, seed=7)
    s = Shaper(p, start=0.0)
    delivered, tx_end = [], 0.0
    for i in range(2000):
        now = i * 0.002
        v = s.offer(1, now)
        tx_end = max(now, tx_end) + 0.001
        assert tx_end + 0.25 <= v.deliver_at <= tx_end + 0.75
        delivered.append(v.deliver_at)
    assert delivered == sorted(delivered)
    sparse = [s.offer(1, 100.0 + i).deliver_at - (100.0 + i) for i in range(200)]
    assert max(sparse) - min(sparse) > 0.4  # jitter is really there when frames are sparse


def test_reorder_lets_jitter_reorder():
    p = LinkProfile("j", 8000.0, delay_s=0.5, jitter_s=0.25, reorder=True, seed=7)
    s = Shaper(p, start=0.0)
    delivered = [s.offer(1, i * 0.002).deliver_at for i in range(200)]
    assert delivered != sorted(delivered)


def test_jitter_never_delivers_before_serialisation_ends():
    p = LinkProfile("j", 8000.0, jitter_s=1.0, seed=1)
    s = Shaper(p, start=0.0)
    assert all(s.offer(8, 10.0 * i).deliver_at >= 10.0 * i + 0.008 for i in range(100))


def test_connection_events():
    # events every 0.5 s from t = 0, at most 2 PSDUs of 0.1 s each (phy 0.1, 0 bytes)
    p = LinkProfile("ev", math.inf, overhead_bytes=0, max_psdu_bytes=10, phy_time_s=0.125,
                    frames_per_event=2, event_interval_s=0.5)
    assert p.airtime_s(25) == 0.5 + 0.125  # 3 PSDUs: 2 in event 0, 1 in event 1
    s = Shaper(p, start=0.0)
    assert s.offer(25, 0.0).deliver_at == 0.625
    # the event closed: the next frame waits for the anchor at 1.0
    assert s.offer(5, 0.7).deliver_at == 1.125
    assert s.offer(5, 1.125).deliver_at == 1.25  # continues the same event back to back
    assert s.offer(5, 1.25).deliver_at == 1.625  # third PSDU: next event


def test_ble_presets_have_stated_goodput():
    # 244 ATT bytes per packet, 7.5 ms events of at most 6 packets that must end by the next
    # anchor: 3 packets of 2.468 ms fit on 1M, 5 of 1.392 ms on 2M
    one, two = PRESETS["ble-1m"], PRESETS["ble-2m"]
    assert one.asymptotic_goodput_bps == pytest.approx(3 * 244 * 8 / 7.5e-3)
    assert two.asymptotic_goodput_bps == pytest.approx(5 * 244 * 8 / 7.5e-3)


def test_loss_drops_frames_but_occupies_the_link():
    p = LinkProfile("l", 8000.0, loss=LossModel("random", 100.0))
    s = Shaper(p, start=0.0)
    assert s.offer(1000, 0.0) == Verdict(None, "loss")
    assert s.queue_bytes(0.5) == 1000
    p2 = p.replace(loss=LossModel("random", 0.0))
    s2 = Shaper(p2, start=0.0)
    assert s2.offer(1000, 0.0).deliver_at == 1.0


def test_a_large_frame_dies_with_any_psdu():
    p = FRAGS.replace(loss=LossModel("random", 10.0), seed=3)
    s = Shaper(p, start=0.0)
    verdicts = [s.offer(12 * 20, i * 100.0) for i in range(500)]
    lost = sum(v.reason == "loss" for v in verdicts) / 500
    assert lost == pytest.approx(1 - 0.9 ** 20, abs=0.06)  # 0.878; 4 sigma ~ 0.06


def _drops(profile: LinkProfile) -> list[str | None]:
    s = Shaper(profile, start=0.0)
    return [s.offer(100, i * 0.05).reason for i in range(3000)]


def test_seed_replays_the_same_drop_sequence():
    p = LinkProfile("r", 1e6, loss=LossModel("gemodel", 5.0, r=30.0, one_minus_h=80.0,
                                                one_minus_k=1.0),
                    outage_process=__import__("linkemu.outage", fromlist=["x"]).OnOffProcess(
                        "lognormal", 5.0, 0.5, sigma_up=1.0, sigma_down=0.8),
                    jitter_s=0.01, seed=1234)
    first = _drops(p)
    assert first == _drops(p)
    assert {"loss", "outage", None} <= set(first)
    assert first != _drops(p.replace(seed=1235))
    assert Shaper(p.replace(seed=None), start=0.0).seed != Shaper(p.replace(seed=None),
                                                                   start=0.0).seed


def test_trace_state_and_rate():
    trace = OutageTrace((TracePoint(1.0, False), TracePoint(2.0, True, 4000.0)))
    p = LinkProfile("t", 8000.0, outage_trace=trace)
    s = Shaper(p, start=10.0)
    assert s.offer(100, 10.0).deliver_at == 10.1
    assert s.offer(100, 11.5).reason == "outage"
    assert s.offer(100, 12.0).deliver_at == 12.2  # half the rate from t = 2
    snap = s.snapshot(12.0)
    assert snap["rate_bps"] == 4000.0 and snap["link_state"] == "up"
    assert s.snapshot(11.0)["in_outage"]


class _HeldClock:
    """A monotonic clock that stands still until ``release()``, then runs from where it stood:
    every frame submitted while held is offered at the same instant, so the seeded jitter
    alone decides the delivery order."""

    def __init__(self) -> None:
        self._held_at = time.monotonic()
        self._shift: float | None = None
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            self._shift = time.monotonic() - self._held_at

    def __call__(self) -> float:
        with self._lock:
            return self._held_at if self._shift is None else time.monotonic() - self._shift


def test_sender_gives_each_delivery_its_own_tag_when_frames_reorder():
    profile = LinkProfile("swap", 8e6, delay_s=0.05, jitter_s=0.04, reorder=True, seed=11)
    clock = _HeldClock()
    delivered: list[tuple[int, int]] = []  # (sample id read from the frame, sample of its tag)
    sender: ShapedSender[dict[str, int]] = ShapedSender(
        lambda frame, tag: delivered.append((struct.unpack_from("<I", frame)[0], tag["sample"])), profile,
        clock=clock)
    sender.start()
    n = 40
    verdicts = [sender.submit(struct.pack("<I", i) + bytes(60), tag={"sample": i}) for i in range(n)]
    clock.release()
    sender.close()
    assert all(v.accepted for v in verdicts) and len(delivered) == n
    assert all(frame_sample == tag_sample for frame_sample, tag_sample in delivered), delivered
    order = [frame_sample for frame_sample, _ in delivered]
    assert order == sorted(range(n), key=lambda i: verdicts[i].deliver_at), "frames leave by delivery time"
    assert order != list(range(n)), "the profile must really reorder for this test to mean anything"
