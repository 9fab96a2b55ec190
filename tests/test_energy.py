"""nodes.energy's own rules: meter settings, the model meter, the sampler and per-inference attribution."""
from __future__ import annotations

import math

import numpy as np
import pytest

from nodes.energy import METERS, MeterError, PowerMeter, PowerSample, open_meter
from nodes.energy.attribution import Attributor, IdleBaseline, window_energy
from nodes.energy.model import POWER_W, ModelMeter, radio_power
from nodes.energy.sampler import MAX_CONSECUTIVE_ERRORS, Sampler
from nodes.energy.settings import MeterSettingError, check_meter_settings, max_rate_hz

MS = 1_000_000


# -- settings ------------------------------------------------------------------------------------

def test_settings_fill_defaults_and_name_the_wrong_key() -> None:
    s = check_meter_settings("ina226", {"address": 0x41, "averaging": 4})
    assert s["bus"] == 1 and s["shunt_ohms"] == 0.1 and s["conversion_us"] == 1100 and s["rate_hz"] == 100.0
    with pytest.raises(MeterSettingError) as err:
        check_meter_settings("ina226", {"address": 0x30})
    assert err.value.key == "address" and "0x40 to 0x4F" in err.value.detail and "got 48" in err.value.detail
    with pytest.raises(MeterSettingError) as err:
        check_meter_settings("ina260", {"shunt_ohms": 0.1})   # the INA260's shunt is inside the chip
    assert err.value.key == "shunt_ohms" and "unknown setting" in err.value.detail
    with pytest.raises(MeterSettingError, match="expected one of"):
        check_meter_settings("ina999", {})


def test_rate_above_what_the_chip_converts_is_refused_with_the_figure() -> None:
    # INA226: bus and shunt at 1.1 ms each, averaging 4: a fresh reading every 8.8 ms
    assert max_rate_hz("ina226", {"conversion_us": 1100, "averaging": 4}) == pytest.approx(1e6 / 8800)
    with pytest.raises(MeterSettingError) as err:
        check_meter_settings("ina226", {"conversion_us": 1100, "averaging": 4, "rate_hz": 200})
    assert err.value.key == "rate_hz" and "113.636" in err.value.detail
    assert max_rate_hz("pi5-pmic", {}) == 10.0
    with pytest.raises(MeterSettingError):
        check_meter_settings("pi5-pmic", {"rate_hz": 50})


def test_unset_conversion_settings_are_fitted_to_the_reading_period() -> None:
    """A chip converting faster than it is read would leave most of each period unmeasured: unset,
    its conversion time and averaging fill as much of 1/rate_hz as fits."""
    s = check_meter_settings("ina226", {"rate_hz": 100})                    # 10 ms: 2 x 1100 us x 4 = 8.8 ms
    assert (s["conversion_us"], s["averaging"]) == (1100, 4)
    s = check_meter_settings("ina260", {"rate_hz": 1000, "averaging": 1})   # 1 ms: 2 x 332 us
    assert s["conversion_us"] == 332
    s = check_meter_settings("ina260", {"rate_hz": 500, "conversion_us": 140})   # 2 ms: 2 x 140 us x 4
    assert s["averaging"] == 4
    assert check_meter_settings("ina219", {"rate_hz": 100})["adc_samples"] == 8   # 2 x 4.26 ms
    assert check_meter_settings("ina219", {"rate_hz": 900})["adc_samples"] == 1
    assert check_meter_settings("ina226", {"conversion_us": 140, "averaging": 1})["averaging"] == 1   # as given


def test_registry_lists_every_backend() -> None:
    assert METERS.names() == ["ina219", "ina226", "ina260", "jetson", "model", "pi5-pmic", "rapl"]
    with pytest.raises(MeterError, match="unknown power meter 'inaa'.*expected one of"):
        METERS.get("inaa")


# -- the model meter ----------------------------------------------------------------------------

class _Clocks:
    """The model's two sources, driven by the test: wall time (ns) and the process's CPU seconds."""

    def __init__(self) -> None:
        self.t_ns = 10**12
        self.cpu = 5.0

    def clock(self) -> int:
        return self.t_ns

    def cpu_s(self) -> float:
        return self.cpu


def test_model_counts_cpu_time_not_wall_time_and_the_radio_by_airtime() -> None:
    c = _Clocks()
    m = open_meter("model", check_meter_settings("model", {}), kind="rpi4", radio="hbc-1312k",
                   cpu_s=c.cpu_s, clock=c.clock)
    idle, active = POWER_W["rpi4"]
    assert m.modelled and radio_power("hbc-1312k") == 0.01 and m.radio_w == 0.01
    e0 = m.energy_uj()
    c.t_ns += 100 * MS            # 100 ms of wall time, of which 30 ms on the CPU
    c.cpu += 0.030
    m.credit_airtime(0.020)       # and one frame 20 ms on air
    e1 = m.energy_uj()
    want_j = idle * 0.1 + (active - idle) * 0.030 + 0.01 * 0.020
    assert (e1 - e0) / 1e6 == pytest.approx(want_j)
    r = m.read()                  # the mean power since open
    assert r.mw == pytest.approx(want_j / 0.1 * 1e3) and r.rail == "model"
    c.t_ns += 50 * MS             # idle: only the idle power
    assert m.read().mw == pytest.approx(idle * 1e3)


def test_model_overrides_and_refusals() -> None:
    m = ModelMeter(check_meter_settings("model", {"idle_w": 0.5, "active_w": 1.5, "radio_w": 0.1}), kind="nope")
    assert (m.idle_w, m.active_w, m.radio_w) == (0.5, 1.5, 0.1)     # the table is not needed
    with pytest.raises(MeterError, match="no power figures for board kind 'nope'"):
        ModelMeter(check_meter_settings("model", {}), kind="nope")
    with pytest.raises(MeterError, match="below idle_w"):
        ModelMeter(check_meter_settings("model", {"idle_w": 2.0, "active_w": 1.0}))
    assert m.describe()["modelled"] is True


# -- attribution --------------------------------------------------------------------------------

def _readings(power_w, *, period_ns: int, count: int, t0: int = 0) -> list[PowerSample]:
    """Readings of an averaging meter: reading k is the mean of ``power_w`` over ((k-1)T, kT]."""
    out = []
    for k in range(1, count + 1):
        a, b = t0 + (k - 1) * period_ns, t0 + k * period_ns
        ts = a + (np.arange(1000) + 0.5) * (b - a) / 1000     # midpoints: exact for steps on the grid
        mean = float(np.mean([power_w(t) for t in ts]))
        out.append(PowerSample(b, "r", 5000.0, mean / 5.0 * 1e3, mean * 1e3))
    return out


def test_window_of_whole_reading_intervals_is_exact() -> None:
    def pulse(t: float) -> float:
        return 3.0 if 20 * MS <= t < 60 * MS else 1.0
    r = _readings(pulse, period_ns=MS, count=100)
    w = window_energy(r, 20 * MS, 60 * MS, period_ns=MS)
    assert not w.flagged and w.method == "steps" and w.mj == pytest.approx(3.0 * 40, rel=1e-9)
    whole = window_energy(r, 0, 100 * MS, period_ns=MS)
    assert whole.mj == pytest.approx(1.0 * 60 + 3.0 * 40, rel=1e-9)


def test_short_window_gets_the_surrounding_mean_and_is_flagged() -> None:
    r = _readings(lambda t: 2.0, period_ns=10 * MS, count=20)
    w = window_energy(r, 100 * MS, 105 * MS, period_ns=10 * MS)    # half a period
    assert w.flagged and w.method == "surrounding" and w.mj == pytest.approx(2.0 * 5)


def test_idle_baseline_and_active_energy() -> None:
    period = MS
    readings = _readings(lambda t: 1.0 if t < 50 * MS or t >= 70 * MS else 4.0, period_ns=period, count=100)
    base = IdleBaseline()
    assert base.measure([r for r in readings if r.t_ns <= 40 * MS]) == pytest.approx(1.0)
    att = Attributor(period_ns=period, between=lambda a, b: [r for r in readings if a <= r.t_ns <= b],
                     latest=lambda: readings[-1].t_ns, baseline=base)
    att.add(7, compute=((50 * MS, None), (60 * MS, None)), transmit=((60 * MS, None), (70 * MS, None)))
    ((e, _),) = att.ready()
    assert e.sample == 7 and not e.flagged
    assert e.compute_mj == pytest.approx(40.0) and e.transmit_mj == pytest.approx(40.0)
    assert e.total_mj == pytest.approx(80.0) and e.active_mj == pytest.approx(80.0 - 1.0 * 20)
    assert e.fields()["energy_mj"] == 80.0


def test_attributor_waits_until_readings_cover_the_window() -> None:
    readings: list[PowerSample] = _readings(lambda t: 1.0, period_ns=MS, count=10)
    att = Attributor(period_ns=MS, between=lambda a, b: [r for r in readings if a <= r.t_ns <= b],
                     latest=lambda: readings[-1].t_ns)
    att.add(1, compute=((8 * MS, None), (12 * MS, None)))
    assert att.ready() == []                        # the newest reading (10 ms) is before the window's end
    readings += _readings(lambda t: 1.0, period_ns=MS, count=4, t0=10 * MS)
    ((e, _),) = att.ready()
    assert e.total_mj == pytest.approx(4.0) and e.transmit_mj == 0.0


def test_counter_meters_are_read_at_the_window_edges() -> None:
    c = _Clocks()
    m = open_meter("model", check_meter_settings("model", {"idle_w": 1.0, "active_w": 3.0}),
                   cpu_s=c.cpu_s, clock=c.clock)
    att = Attributor(period_ns=20 * MS, between=lambda a, b: [], latest=lambda: None, counter=m.energy_uj,
                     baseline=IdleBaseline(1.0))
    a = (c.t_ns, m.energy_uj())
    c.t_ns += 2 * MS               # a 2 ms inference, all of it on the CPU: far shorter than a period
    c.cpu += 0.002
    b = (c.t_ns, m.energy_uj())
    att.add(3, compute=(a, b))
    ((e, _),) = att.ready()
    assert e.method == "counter" and not e.flagged
    assert e.total_mj == pytest.approx(3.0 * 2) and e.active_mj == pytest.approx(2.0 * 2)


# -- the sampler ---------------------------------------------------------------------------------

def test_sampler_batches_readings_and_keeps_a_history() -> None:
    meter = open_meter("model", check_meter_settings("model", {}), kind="sim")
    with Sampler(meter, rate_hz=500) as s:
        assert s.wait_for(20, timeout=30)
        first = s.drain()
        assert len(first) >= 20 and all(a.t_ns < b.t_ns for a, b in zip(first, first[1:]))
        assert s.wait_for(len(first) + 5, timeout=30)
        second = s.drain()
        assert second and second[0].t_ns > first[-1].t_ns       # nothing handed out twice
        kept = s.between(first[0].t_ns, second[-1].t_ns)
        assert [x.t_ns for x in kept] == [x.t_ns for x in first + second]
    stats = s.stats()
    assert stats["errors"] == 0 and stats["samples"] >= 25 and stats["achieved_hz"] > 0


class _Unplugged(PowerMeter):
    """A meter whose device stopped answering (a pulled I2C cable: every read fails with EREMOTEIO)."""

    name = "unplugged"

    @property
    def max_rate_hz(self) -> float:
        return 1000.0

    def open(self) -> None:
        pass

    def read(self) -> PowerSample:
        raise OSError(121, "Remote I/O error")


def test_sampler_counts_failed_readings_and_stops_with_the_reason() -> None:
    s = Sampler(_Unplugged({}), rate_hz=2000).start()
    s._thread.join(timeout=30)
    assert not s._thread.is_alive()
    st = s.stats()
    assert st["errors"] == MAX_CONSECUTIVE_ERRORS and st["samples"] == 0
    assert "readings failed in a row" in st["failure"] and "Remote I/O error" in st["failure"]
    assert s.wait_for(1, timeout=1) is False
    assert math.isfinite(st["rate_hz"])


def test_a_meters_content_lag_moves_where_a_window_is_looked_for() -> None:
    """Readings that report what happened LAG ns before their stamp (an INA chip's last completed
    conversion): with the meter's lag the window's energy is exact again; without it, it is not."""
    lag = 3 * MS
    truth = _readings(lambda t: 3.0 if 20 * MS <= t < 60 * MS else 1.0, period_ns=MS, count=100)
    late = [PowerSample(s.t_ns + lag, s.rail, s.mv, s.ma, s.mw) for s in truth]

    def attribute(lag_ns: int) -> float:
        att = Attributor(period_ns=MS, between=lambda a, b: [r for r in late if a <= r.t_ns <= b],
                         latest=lambda: late[-1].t_ns, lag_ns=lag_ns)
        att.add(0, compute=((20 * MS, None), (60 * MS, None)))
        ((e, _),) = att.ready()
        return e.total_mj
    assert attribute(lag) == pytest.approx(120.0)
    assert attribute(0) == pytest.approx(120.0 - 3 * 2.0)    # 3 ms of the pulse read as idle


def test_ina_content_lag_from_its_configuration() -> None:
    from nodes.energy.ina import Ina219, Ina226
    ina226 = Ina226(check_meter_settings("ina226", {"conversion_us": 1100, "averaging": 1, "rate_hz": 400}))
    cycle = 2 * 1100_000                     # shunt then bus, 1.1 ms each
    # last cycle ended C/2 before the read on average; its current centred 0.75 C before that end
    assert ina226.content_lag_ns(cycle) == round(cycle / 2 + 0.75 * cycle - cycle / 2)
    avg4 = Ina226(check_meter_settings("ina226", {"conversion_us": 140, "averaging": 4, "rate_hz": 800}))
    c4 = 2 * 140_000 * 4
    assert avg4.content_lag_ns(1_250_000) == round(c4 / 2 + c4 * 9 / 16 - 1_250_000 / 2)
    assert Ina219(check_meter_settings("ina219", {"rate_hz": 900})).content_lag_ns(1_064_000) == \
        round(532_000 + 0.75 * 1_064_000 - 532_000)
    assert ModelMeter(check_meter_settings("model", {})).content_lag_ns(20 * MS) == 0
