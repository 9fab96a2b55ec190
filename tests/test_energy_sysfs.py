"""The file-based power meters (nodes.energy.sysfs) on fake trees laid out as each board lays them out."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from nodes.energy import METERS, MeterError, open_meter
from nodes.energy import sysfs
from nodes.energy.settings import PI5_PMIC_RATE_HZ, check_meter_settings
from nodes.energy.sysfs import JetsonMeter, Pi5PmicMeter, RaplMeter, parse_pmic_adc, unwrap_energy
from tests import sysfstrees as trees


def jetson(root: Path, **settings: object) -> JetsonMeter:
    return JetsonMeter(check_meter_settings("jetson", settings), root=root)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t_ns: int = 1_000_000_000) -> None:
        self.t_ns = t_ns

    def __call__(self) -> int:
        return self.t_ns


# -- Jetson ---------------------------------------------------------------------------------------

def test_registry_builds_each_backend_by_name() -> None:
    assert METERS.get("jetson") is JetsonMeter
    assert METERS.get("rapl") is RaplMeter
    assert METERS.get("pi5-pmic") is Pi5PmicMeter


@pytest.mark.parametrize("build, rail, label, mv, ma", [
    (trees.jetpack4_nano, "VDD_IN", "POM_5V_IN", 5072, 1480),          # the Nano's input rail, by alias
    (trees.jetpack4_nano, "POM_5V_GPU", "POM_5V_GPU", 5064, 80),
    (trees.jetpack4_xavier_nx, "VDD_IN", "VDD_IN", 19136, 304),
    (trees.jetpack5_orin_nano, "VDD_IN", "VDD_IN", 5016, 1216),
    (trees.jetpack5_agx_orin, "VIN_SYS_5V0", "VIN_SYS_5V0", 4968, 520),
    (trees.jetpack5_agx_orin, "vddq_vdd2_1v8ao", "VDDQ_VDD2_1V8AO", 4968, 128),   # on the second chip, any case
])
def test_jetson_picks_the_named_rail_in_either_layout(tmp_path, build, rail, label, mv, ma) -> None:
    tree = build(tmp_path)
    with jetson(tmp_path, rail=rail) as meter:
        s = meter.read()
        assert (s.rail, s.mv, s.ma) == (label, mv, ma)
        assert s.mw == pytest.approx(mv * ma / 1000, abs=1)
        assert meter.rail == label
        assert meter.describe()["layout"] == tree.layout
        tree.set(label, mv=mv + 8, ma=ma * 2, mw=(mv + 8) * ma * 2 // 1000)      # mw only matters on iio
        s2 = meter.read()
        assert (s2.mv, s2.ma) == (mv + 8, ma * 2)
        assert s2.mw == pytest.approx((mv + 8) * ma * 2 / 1000, abs=1)
        assert s2.t_ns >= s.t_ns


def test_jetpack4_power_is_the_drivers_own_figure(tmp_path) -> None:
    tree = trees.jetpack4_xavier_nx(tmp_path)
    tree.set("VDD_IN", mv=19000, ma=300, mw=5555)                # not 19000 x 300: the driver's value wins
    with jetson(tmp_path) as meter:
        assert meter.read().mw == 5555


def test_jetpack5_power_is_mv_times_ma(tmp_path) -> None:
    tree = trees.jetpack5_orin_nano(tmp_path)
    tree.set("VDD_IN", mv=5000, ma=1500)
    with jetson(tmp_path) as meter:
        assert meter.read().mw == 7500.0


def test_nc_and_summation_channels_are_no_rails(tmp_path) -> None:
    trees.jetpack5_agx_orin(tmp_path)
    labels = [r.label for r in sysfs.find_jetson_rails(tmp_path)]
    assert labels == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    for wanted in ("NC", "sum of shunt voltages"):
        with pytest.raises(MeterError, match="no INA3221 rail"):
            jetson(tmp_path, rail=wanted).open()


def test_unknown_rail_lists_the_rails_found(tmp_path) -> None:
    trees.jetpack5_orin_nano(tmp_path)
    with pytest.raises(MeterError) as err:
        jetson(tmp_path, rail="VDD_GPU").open()
    msg = str(err.value)
    assert "'VDD_GPU'" in msg and "VDD_IN, VDD_CPU_GPU_CV, VDD_SOC" in msg
    assert "sum of" not in msg


def test_agx_orin_has_no_vdd_in_and_says_which_rails_it_has(tmp_path) -> None:
    trees.jetpack5_agx_orin(tmp_path)
    with pytest.raises(MeterError, match="VIN_SYS_5V0.*VDDQ_VDD2_1V8AO"):
        jetson(tmp_path).open()


def test_no_ina3221_at_all_names_both_layouts(tmp_path) -> None:
    with pytest.raises(MeterError, match=r"ina3221/\*/hwmon.*ina3221x/\*/iio:device"):
        jetson(tmp_path).open()


def test_unreadable_rail_file_names_the_file(tmp_path) -> None:
    tree = trees.jetpack4_nano(tmp_path)
    power = tree.file("POM_5V_IN", "mw")
    power.unlink()
    power.symlink_to(tmp_path / "gone")                          # dangling: open fails for root too
    with pytest.raises(MeterError, match="cannot read .*/ina3221x/6-0040/iio:device0/in_power0_input: No such file"):
        jetson(tmp_path).open()


def test_a_file_that_is_a_directory_fails_on_open_not_mid_run(tmp_path) -> None:
    tree = trees.jetpack5_orin_nano(tmp_path)
    current = tree.file("VDD_IN", "ma")
    current.unlink()
    current.mkdir()
    with pytest.raises(MeterError, match="/ina3221/1-0040/hwmon/hwmon1/curr1_input .*Is a directory"):
        jetson(tmp_path).open()


def test_permission_denied_says_how_to_fix_it(tmp_path, monkeypatch) -> None:
    # Tests run as root, where chmod 000 does not stop a read: the opener is made to refuse instead.
    tree = trees.jetpack4_nano(tmp_path)
    real_open = sysfs._open_sysfs

    def refuse(path: str) -> int:
        if path.endswith("in_power0_input"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(sysfs, "_open_sysfs", refuse)
    with pytest.raises(MeterError) as err:
        jetson(tmp_path).open()
    msg = str(err.value)
    assert "drivers/ina3221x/6-0040/iio:device0/in_power0_input" in msg
    assert tree.file("POM_5V_IN", "mw").exists()
    assert "permission denied" in msg and "root" in msg and "chmod" in msg


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; covered by the opener test above")
def test_chmod_000_label_is_a_permission_error(tmp_path) -> None:
    tree = trees.jetpack4_nano(tmp_path)
    tree.file("POM_5V_IN", "label").chmod(0)
    with pytest.raises(MeterError, match="permission denied.*root"):
        jetson(tmp_path).open()


def test_close_releases_the_files_and_read_after_close_fails(tmp_path) -> None:
    trees.jetpack5_orin_nano(tmp_path)
    meter = open_meter("jetson", check_meter_settings("jetson", {}), root=tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    meter.close()
    assert len(os.listdir("/proc/self/fd")) == before - 2
    with pytest.raises(MeterError, match="before open"):
        meter.read()
    meter.close()                                                # twice is harmless


def test_garbage_in_a_rail_file_is_refused_with_the_file(tmp_path) -> None:
    tree = trees.jetpack5_orin_nano(tmp_path)
    with jetson(tmp_path) as meter:
        trees.write_in_place(tree.file("VDD_IN", "mv"), "abc")
        with pytest.raises(MeterError, match="in1_input: expected an integer"):
            meter.read()


def test_jetson_rate_and_description(tmp_path) -> None:
    trees.jetpack5_orin_nano(tmp_path)
    with jetson(tmp_path, rate_hz=1000) as meter:
        d = meter.describe()
    assert d["meter"] == "jetson" and d["rail"] == "VDD_IN" and not d["modelled"]
    assert d["source"].endswith("1-0040/hwmon/hwmon1")
    assert meter.max_rate_hz >= 1000


# -- RAPL -----------------------------------------------------------------------------------------

def rapl(root: Path, clock: Clock, **settings: object) -> RaplMeter:
    return RaplMeter(check_meter_settings("rapl", settings), root=root, clock=clock)


def test_rapl_power_from_counter_and_the_meters_timestamps(tmp_path) -> None:
    tree = trees.rapl_tree(tmp_path, energy_uj=5_000_000)
    clock = Clock()
    with rapl(tmp_path, clock) as meter:
        assert meter.rail == "package-0"
        clock.t_ns += 500_000_000                                 # 0.5 s, 2.5 J => 5 W
        tree.set_energy(7_500_000)
        first = meter.read()
        assert (first.mv, first.ma) == (0.0, 0.0)
        assert first.mw == pytest.approx(5000.0)                  # since open
        clock.t_ns += 2_000_000                                    # 2 ms, 30 mJ => 15 W
        tree.set_energy(7_530_000)
        second = meter.read()
        assert second.mw == pytest.approx(15000.0)
        assert second.t_ns - first.t_ns == 2_000_000
        assert meter.energy_uj() == 7_530_000.0


def test_rapl_unwraps_the_counter_at_max_energy_range(tmp_path) -> None:
    range_uj = 1_000_000
    tree = trees.rapl_tree(tmp_path, energy_uj=900_000, range_uj=range_uj)
    clock = Clock()
    with rapl(tmp_path, clock) as meter:
        seen = [meter.energy_uj()]
        for raw in (990_000, 40_000, 600_000, 10_000, 10_000):   # two wraps
            tree.set_energy(raw)
            seen.append(meter.energy_uj())
        assert seen == [900_000, 990_000, 1_040_000, 1_600_000, 2_010_000, 2_010_000]
        assert all(b >= a for a, b in zip(seen, seen[1:]))
        clock.t_ns += 1_000_000_000
        tree.set_energy(510_000)                                  # +500 mJ in 1 s across no wrap
        assert meter.read().mw == pytest.approx((2_510_000 - 900_000) / 1000)   # since open: 1.61 J / 1 s


def test_rapl_power_across_a_wrap(tmp_path) -> None:
    tree = trees.rapl_tree(tmp_path, energy_uj=trees.RAPL_RANGE_UJ - 1_000_000)
    clock = Clock()
    with rapl(tmp_path, clock) as meter:
        clock.t_ns += 100_000_000
        tree.set_energy(2_000_000)                                # 3 J in 0.1 s => 30 W
        assert meter.read().mw == pytest.approx(30_000.0)


def test_unwrap_energy_is_one_wrap_at_most() -> None:
    assert unwrap_energy(10, 25, 100) == 15
    assert unwrap_energy(90, 5, 100) == 15
    assert unwrap_energy(7, 7, 100) == 0


def test_rapl_same_tick_repeats_the_last_power(tmp_path) -> None:
    tree = trees.rapl_tree(tmp_path, energy_uj=0)
    clock = Clock()
    with rapl(tmp_path, clock) as meter:
        clock.t_ns += 1_000_000_000
        tree.set_energy(2_000_000)
        assert meter.read().mw == pytest.approx(2000.0)
        tree.set_energy(3_000_000)
        assert meter.read().mw == pytest.approx(2000.0)           # no time passed: no new figure
        clock.t_ns += 1_000_000_000
        assert meter.read().mw == pytest.approx(1000.0)           # the held-over 1 J counts now


def test_rapl_subzone_and_unknown_zone(tmp_path) -> None:
    trees.rapl_tree(tmp_path)
    with rapl(tmp_path, Clock(), zone="intel-rapl:0:0") as meter:
        assert meter.rail == "core"
    with pytest.raises(MeterError) as err:
        rapl(tmp_path, Clock(), zone="intel-rapl:1").open()
    assert "intel-rapl:0, intel-rapl:0:0" in str(err.value)


def test_rapl_root_only_energy_counter_says_how_to_fix_it(tmp_path, monkeypatch) -> None:
    tree = trees.rapl_tree(tmp_path)
    real_open = sysfs._open_sysfs

    def refuse(path: str) -> int:
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path)

    monkeypatch.setattr(sysfs, "_open_sysfs", refuse)
    with pytest.raises(MeterError) as err:
        rapl(tmp_path, Clock()).open()
    msg = str(err.value)
    assert "CVE-2020-8694" in msg and "root" in msg and "chmod o+r" in msg
    assert str(tmp_path / "sys/class/powercap/intel-rapl:0/energy_uj") in msg
    assert tree.energy_file().exists()


def test_rapl_zero_range_is_refused(tmp_path) -> None:
    trees.rapl_tree(tmp_path, range_uj=0)
    with pytest.raises(MeterError, match="max_energy_range_uj: expected a positive integer"):
        rapl(tmp_path, Clock()).open()


def test_rapl_missing_counter_names_the_file(tmp_path) -> None:
    tree = trees.rapl_tree(tmp_path)
    tree.energy_file().unlink()
    with pytest.raises(MeterError, match="cannot read .*intel-rapl:0/energy_uj"):
        rapl(tmp_path, Clock()).open()


def test_rapl_default_clock_is_now_ns(tmp_path) -> None:
    trees.rapl_tree(tmp_path)
    meter = open_meter("rapl", check_meter_settings("rapl", {}), root=tmp_path)
    try:
        s = meter.read()
        assert s.t_ns > 0 and s.mw == 0.0 and s.rail == "package-0"
    finally:
        meter.close()


# -- Raspberry Pi 5 PMIC --------------------------------------------------------------------------

def pi5(fake: trees.FakeVcgencmd, **settings: object) -> Pi5PmicMeter:
    return Pi5PmicMeter(check_meter_settings("pi5-pmic", settings), vcgencmd=fake.argv)


def test_parse_pairs_rails_by_name_and_skips_unpaired() -> None:
    text = trees.pmic_output({"VDD_CORE": (0.75, 2.0), "3V3_SYS": (3.3, 0.5)}) + "     BATT_V volt(25)=nanV\n"
    rails = parse_pmic_adc(text)
    assert rails == {"VDD_CORE": (0.75, 2.0), "3V3_SYS": (3.3, 0.5)}


def test_pi5_total_is_the_sum_over_paired_rails(tmp_path) -> None:
    fake = trees.fake_vcgencmd(tmp_path)
    with pi5(fake) as meter:
        s = meter.read()
        expected = sum(v * a for v, a in trees.PI5_IDLE.values()) * 1000
        assert s.rail == "total" and (s.mv, s.ma) == (0.0, 0.0)
        assert s.mw == pytest.approx(expected, rel=1e-6)
        fake.set_output(trees.pmic_output({"VDD_CORE": (0.9, 5.0), "3V3_SYS": (3.3, 0.1)}))
        assert meter.read().mw == pytest.approx((0.9 * 5.0 + 3.3 * 0.1) * 1000)


def test_pi5_named_rail(tmp_path) -> None:
    fake = trees.fake_vcgencmd(tmp_path)
    with pi5(fake, rail="vdd_core_A") as meter:
        s = meter.read()
    v, a = trees.PI5_IDLE["VDD_CORE"]
    assert s.rail == "VDD_CORE"
    assert (s.mv, s.ma, s.mw) == pytest.approx((v * 1000, a * 1000, v * a * 1000))


def test_pi5_voltage_only_or_unknown_rail_lists_the_rails(tmp_path) -> None:
    fake = trees.fake_vcgencmd(tmp_path)
    for rail in ("EXT5V", "NOPE"):
        with pytest.raises(MeterError) as err:
            pi5(fake, rail=rail).open()
        assert f"'{rail}'" in str(err.value) and "VDD_CORE" in str(err.value) and "total" in str(err.value)


def test_pi5_missing_tool(tmp_path) -> None:
    meter = Pi5PmicMeter(check_meter_settings("pi5-pmic", {}), vcgencmd=(str(tmp_path / "no-vcgencmd"),))
    with pytest.raises(MeterError, match="not found.*Raspberry Pi 5"):
        meter.open()


def test_pi5_unparsable_output_and_failing_tool(tmp_path) -> None:
    fake = trees.fake_vcgencmd(tmp_path, "error=1 error_msg=\"Command not registered\"\n")
    with pytest.raises(MeterError, match="no rail with both a volt and a current"):
        pi5(fake).open()
    failing = Pi5PmicMeter(check_meter_settings("pi5-pmic", {}), vcgencmd=(str(fake.script), "junk"))
    with pytest.raises(MeterError, match="exited 255: Command not registered"):
        failing.open()


def test_pi5_is_slow_and_says_so(tmp_path) -> None:
    fake = trees.fake_vcgencmd(tmp_path)
    with pi5(fake) as meter:
        assert meter.max_rate_hz == PI5_PMIC_RATE_HZ
        assert "slow" in meter.describe()["note"] and "10 Hz" in meter.describe()["note"]


def test_pi5_read_before_open(tmp_path) -> None:
    with pytest.raises(MeterError, match="before open"):
        pi5(trees.fake_vcgencmd(tmp_path)).read()
