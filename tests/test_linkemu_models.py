"""Loss and outage models against theory (seeded 10^5-step runs), trace parsing, and the
inline-spec keys of the new profile fields."""
from __future__ import annotations

import json
import math
import random
import statistics

import pytest

from linkemu.loss import LossModel
from linkemu.outage import OnOffProcess, Timeline, parse_trace
from linkemu.profile import PRESETS, LinkProfile, ProfileError, resolve_profile
from linkemu.shaper import Shaper
from linkemu.errors import TraceError

N = 100_000


# ------------------------------------------------------------------------- loss


def test_iid_loss_rate():
    chain = LossModel("random", 2.0).chain(random.Random(1))
    lost = sum(chain.step() for _ in range(N)) / N
    # binomial: sd = sqrt(.02 * .98 / 1e5) = 4.4e-4; tolerance 4 sd
    assert lost == pytest.approx(0.02, abs=4 * math.sqrt(0.02 * 0.98 / N))


@pytest.mark.parametrize("p,r,h1,k1", [(1.0, 20.0, 100.0, 0.0), (5.0, 30.0, 80.0, 1.0)])
def test_gilbert_elliott_matches_theory(p, r, h1, k1):
    model = LossModel("gemodel", p, r=r, one_minus_h=h1, one_minus_k=k1)
    chain = model.chain(random.Random(42))
    losses, bad_steps, bursts, bad_runs, run, burst = 0, 0, [], [], 0, 0
    prev_bad = False
    for _ in range(N):
        was_bad = chain.bad
        lost = chain.step()
        losses += lost
        bad_steps += was_bad
        if lost:
            burst += 1
        elif burst:
            bursts.append(burst)
            burst = 0
        if was_bad:
            run += 1
        elif prev_bad:
            bad_runs.append(run)
            run = 0
        prev_bad = was_bad
    pb = (p / 100) / (p / 100 + r / 100)
    # the chain is correlated (lambda = 1 - p - r): inflate the binomial sd by
    # sqrt((1 + lambda) / (1 - lambda)); tolerance 4 inflated sd
    lam = 1 - p / 100 - r / 100
    sd = math.sqrt(pb * (1 - pb) / N * (1 + lam) / (1 - lam))
    assert bad_steps / N == pytest.approx(pb, abs=4 * sd + 4 * math.sqrt(model.mean_loss / N))
    assert losses / N == pytest.approx(model.mean_loss, abs=4 * sd)
    # bad sojourn is geometric with mean 1 / r; its mean over k runs has sd ~ sqrt(1-r)/r/sqrt(k)
    mean_run, rr = statistics.fmean(bad_runs), r / 100
    assert mean_run == pytest.approx(1 / rr, abs=4 * math.sqrt(1 - rr) / rr / math.sqrt(len(bad_runs)))
    # losses come in bursts: longer than independent losses at the same rate (mean 1 / (1 - loss))
    assert statistics.fmean(bursts) > 1.5 / (1 - model.mean_loss)
    if (h1, k1) == (100.0, 0.0):  # Gilbert: a frame is lost iff the step leaves the chain bad,
        assert bursts[:len(bad_runs)] == bad_runs  # so the bursts are the bad sojourns, a step early


def test_loss_spec_and_errors():
    assert LossModel.from_spec({"model": "gemodel", "p": 1}).as_dict() == \
        {"model": "gemodel", "p": 1.0, "r": 100.0, "1-h": 100.0, "1-k": 0.0}
    for spec, key in [({"model": "random", "p": 120}, "loss.p"),
                      ({"model": "random", "p": 1, "r": 3}, "loss.r"),
                      ({"model": "gemodel", "p": 1, "r": 0}, "loss.r"),
                      ({"model": "bursty", "p": 1}, "loss.model"),
                      ({"p": 1}, "loss.model"),
                      ([1], "loss")]:
        with pytest.raises(ProfileError) as info:
            resolve_profile({"preset": "ideal", "loss": spec})
        assert info.value.key == key, spec


# ------------------------------------------------------------------------- on/off


@pytest.mark.parametrize("process", [
    OnOffProcess("exponential", 4.0, 0.5),
    OnOffProcess("lognormal", 4.0, 0.5, sigma_up=1.0, sigma_down=0.6),
])
def test_on_off_durations_match_theory(process):
    rng = random.Random(9)
    pairs = [pair for pair, _ in zip(process.durations(rng), range(N))]
    ups = [u for u, _ in pairs]
    downs = [d for _, d in pairs]
    for values, mean, sigma in ((ups, process.mean_up_s, process.sigma_up),
                                (downs, process.mean_down_s, process.sigma_down)):
        if sigma is None:  # exponential: sd = mean
            sd = mean
        else:              # lognormal: sd = mean * sqrt(exp(sigma^2) - 1)
            sd = mean * math.sqrt(math.exp(sigma**2) - 1)
            median = mean * math.exp(-sigma**2 / 2)
            assert statistics.median(values) == pytest.approx(median, rel=0.02)
        # the mean of N draws: tolerance 4 standard errors
        assert statistics.fmean(values) == pytest.approx(mean, abs=4 * sd / math.sqrt(N))
    down_fraction = sum(downs) / (sum(ups) + sum(downs))
    assert down_fraction == pytest.approx(process.down_fraction, rel=0.03)


def test_timeline_of_a_process_agrees_with_its_draws():
    process = OnOffProcess("exponential", 1.0, 0.25)
    line = Timeline(process=process, rng=random.Random(5))
    # sample the state on a fine grid over 2000 s: the down fraction approaches 0.2
    down = sum(line.is_down(i * 0.01) for i in range(200_000)) / 200_000
    assert down == pytest.approx(0.2, abs=0.02)
    t = 0.0
    for _ in range(100):  # next_down / next_up walk the same edges
        t = line.next_down(t)
        assert line.is_down(t) and not line.is_down(math.nextafter(t, 0))
        t = line.next_up(t)
        assert not line.is_down(t)


def test_process_spec_errors():
    for spec, key in [({"distribution": "lognormal", "mean_up_s": 1, "mean_down_s": 1},
                       "outage_process.sigma_up"),
                      ({"distribution": "exponential", "mean_up_s": 1, "mean_down_s": 1,
                        "sigma_up": 1}, "outage_process.sigma_up"),
                      ({"distribution": "exponential", "mean_up_s": 0, "mean_down_s": 1},
                       "outage_process.mean_up_s"),
                      ({"distribution": "exponential", "mean_up_s": 1},
                       "outage_process.mean_down_s"),
                      ({"distribution": "weibull", "mean_up_s": 1, "mean_down_s": 1},
                       "outage_process.distribution"),
                      ({"distribution": "exponential", "mean_up_s": 1, "mean_down_s": 1,
                        "shape": 2}, "outage_process.shape")]:
        with pytest.raises(ProfileError) as info:
            resolve_profile({"preset": "hbc-328k", "outage_process": spec})
        assert info.value.key == key, spec


# ------------------------------------------------------------------------- traces

GOOD_TRACE = """# a measured trace
time_s,state,rate_bps
0.0, up
1.5, down   # fade
2.0, up, 164062.5
2.0, up
9, 0
"""


def test_trace_parses_and_replays():
    trace = parse_trace(GOOD_TRACE, source="t.csv")
    assert [(p.time_s, p.up, p.rate_bps) for p in trace.points] == [
        (0.0, True, None), (1.5, False, None), (2.0, True, 164062.5), (2.0, True, None),
        (9.0, False, None)]
    assert trace.down_intervals() == [(1.5, 2.0), (9.0, math.inf)]


@pytest.mark.parametrize("text,line,column,phrase", [
    ("0,up\nx,down\n", 2, 1, "time_s"),
    ("0,up\n1,sideways\n", 2, 2, "state"),
    ("0,up\n1,down,-5\n", 2, 3, "rate_bps"),
    ("0,up\n1,down,fast\n", 2, 3, "rate_bps"),
    ("# c\n\n0,up\n2,down\n1,up\n", 5, 1, "time order"),
    ("0\n", 1, 2, "missing state"),
    ("0,up,1,2\n", 1, 4, "at most 3 columns"),
    ("-1,up\n", 1, 1, ">= 0"),
])
def test_trace_errors_name_line_and_column(text, line, column, phrase):
    with pytest.raises(TraceError, match=phrase) as info:
        parse_trace(text, source="bad.csv")
    err = info.value
    assert (err.line, err.column, err.key) == (line, column, "outage_trace")
    assert f"bad.csv line {line}, column {column}" in err.detail
    assert isinstance(err, ProfileError)


def test_trace_from_inventory_spec(tmp_path):
    (tmp_path / "fade.csv").write_text(GOOD_TRACE)
    p = resolve_profile({"preset": "hbc-164k", "outage_trace": "fade.csv"}, base_dir=tmp_path)
    assert len(p.outage_trace.points) == 5
    # the parsed trace travels in the profile dict: a board needs no file
    assert LinkProfile.from_dict(json.loads(json.dumps(p.as_dict()))) == p
    (tmp_path / "bad.csv").write_text("0,up\n1,maybe\n")
    with pytest.raises(TraceError) as info:
        resolve_profile({"preset": "hbc-164k", "outage_trace": "bad.csv"}, base_dir=tmp_path)
    assert (info.value.line, info.value.column) == (2, 2)
    with pytest.raises(ProfileError, match="cannot read") as info:
        resolve_profile({"preset": "hbc-164k", "outage_trace": "missing.csv"}, base_dir=tmp_path)
    assert info.value.key == "outage_trace"


# ------------------------------------------------------------------------- inline keys


def test_inline_keys_convert_units():
    p = resolve_profile({"preset": "hbc-328k", "jitter_ms": 2, "phy_time_us": 100,
                         "max_psdu_bytes": 128, "reorder": True, "seed": 5,
                         "outage_mode": "hold", "loss": {"model": "random", "p": 1},
                         "outage_process": {"distribution": "exponential", "mean_up_s": 10,
                                            "mean_down_s": 1}})
    assert (p.jitter_s, p.phy_time_s, p.max_psdu_bytes, p.reorder, p.seed, p.outage_mode) == \
        (0.002, 1e-4, 128, True, 5, "hold")
    assert LinkProfile.from_dict(json.loads(json.dumps(p.as_dict()))) == p
    ble = resolve_profile({"preset": "ble-1m", "frames_per_event": 4, "event_interval_ms": 15})
    assert (ble.frames_per_event, ble.event_interval_s) == (4, 0.015)


@pytest.mark.parametrize("spec,key", [
    ({"preset": "hbc-164k", "max_psdu_bytes": 9}, "max_psdu_bytes"),
    ({"preset": "hbc-164k", "max_psdu_bytes": 0}, "max_psdu_bytes"),
    ({"preset": "hbc-164k", "phy_time_us": -1}, "phy_time_us"),
    ({"preset": "ble-1m", "event_interval_ms": 0}, "event_interval_ms"),
    ({"rate_bps": 1000, "event_interval_ms": 5}, "event_interval_ms"),
    ({"preset": "ideal", "jitter_ms": -2}, "jitter_ms"),
    ({"preset": "ideal", "reorder": "yes"}, "reorder"),
    ({"preset": "ideal", "seed": -1}, "seed"),
    ({"preset": "ideal", "seed": 1.5}, "seed"),
    ({"preset": "ideal", "outage_trace": 5}, "outage_trace"),
])
def test_impossible_values_name_the_key(spec, key):
    with pytest.raises(ProfileError) as info:
        resolve_profile(spec)
    assert info.value.key == key


def test_old_profile_dicts_still_load():
    old = {"name": "x", "rate_bps": 1000.0, "overhead_bytes": 9, "delay_s": 0.0,
           "outages": [{"start_s": 1.0, "duration_s": 2.0}], "outage_mode": "drop",
           "queue_limit_bytes": None}
    p = LinkProfile.from_dict(old)
    assert p.max_psdu_bytes is None and p.loss is None and p.tx_time_s(991) == 8.0
    for preset in PRESETS.values():
        assert LinkProfile.from_dict(json.loads(json.dumps(preset.as_dict()))) == preset


@pytest.mark.parametrize("spec", ["ble-1m", "ble-2m", {"preset": "ble-2m", "frames_per_event": 3,
                                                         "event_interval_ms": 7.5}])
@pytest.mark.parametrize("psdus", [1, 4096, 4097, 20_000])
def test_airtime_of_a_large_frame_matches_the_shaper_psdu_by_psdu(spec, psdus):
    """airtime_s skips whole connection events of a huge frame; the shaper places every PSDU
    on its event clock one by one. Both give the same end of the last PSDU."""
    profile = resolve_profile(spec).replace(delay_s=0.0, jitter_s=0.0)
    nbytes = (psdus - 1) * profile.framing.max_payload + 17
    verdict = Shaper(profile, start=0.0).offer(nbytes, 0.0)
    assert verdict.deliver_at == pytest.approx(profile.airtime_s(nbytes), rel=1e-9)
