"""The INA219/INA226/INA260 drivers (nodes.energy.ina) against register-level chip models
(tests/inachip.py): identification, the configuration and calibration words the datasheets call
for, readings within an LSB of the true value (negative currents included), big-endian words,
the PGA and calibration refusals, conversion timing and a stepped load, all on a fake clock."""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from typing import Any

import pytest

from nodes.energy import METERS, MeterError, PowerMeter, open_meter
from nodes.energy.ina import Ina219, Ina226, Ina260
from nodes.energy.settings import check_meter_settings, max_rate_hz
from tests.inachip import (FakeClock, Ina219Model, Ina226Model, Ina260Model, InaChipModel, SMBusModel,
                           Waveform, constant, steps)

MODELS: dict[str, type[InaChipModel]] = {"ina219": Ina219Model, "ina226": Ina226Model, "ina260": Ina260Model}


@dataclass
class Rig:
    meter: Any
    chip: InaChipModel
    bus: SMBusModel
    clock: FakeClock


def model(kind: str, power: Waveform, clock: FakeClock, shunt_ohms: float = 0.1) -> InaChipModel:
    if kind == "ina260":
        return Ina260Model(power, clock=clock)
    return MODELS[kind](power, shunt_ohms=shunt_ohms, clock=clock)


def rig(meter: str, power: Waveform = constant(5.0, 0.5), *, chip: str | None = None, address: int = 0x40,
        **settings: Any) -> Rig:
    """A meter built from its checked settings, a model of ``chip`` (default: the same) at
    ``address`` on bus 1, and the clock both run on; not opened."""
    checked = check_meter_settings(meter, {"address": address, "rate_hz": 1.0, **settings})
    clock = FakeClock()
    device = model(chip or meter, power, clock, checked.get("shunt_ohms", 0.1))
    bus = SMBusModel(1, {address: device})
    return Rig(METERS.get(meter)(checked, smbus=bus, sleep=clock.sleep), device, bus, clock)


def tolerances(r: Rig, volts: float, amps: float) -> tuple[float, float, float]:
    """One LSB of each quantization on the way, in mV, mA, mW: the bus LSB; the current register's
    truncation plus the shunt ADC's LSB carried through the calibration; the power register's
    truncation plus the current and voltage errors times the other figure."""
    m = r.meter
    if isinstance(m, Ina260):
        v_lsb, i_tol, p_lsb = 1.25e-3, 1.25e-3, 10e-3
    elif isinstance(m, Ina226):
        v_lsb, i_tol, p_lsb = 1.25e-3, m.current_lsb_a + 2.5e-6 / m.settings["shunt_ohms"], 25 * m.current_lsb_a
    else:
        v_lsb, i_tol, p_lsb = 4e-3, m.current_lsb_a + 10e-6 / m.settings["shunt_ohms"], 20 * m.current_lsb_a
    p_tol = p_lsb + i_tol * volts + v_lsb * abs(amps)
    return v_lsb * 1000, i_tol * 1000, p_tol * 1000


# -- identification ------------------------------------------------------------------------------


@pytest.mark.parametrize("meter", ["ina219", "ina226", "ina260"])
def test_each_chip_is_identified_configured_and_read_right_after_open(meter: str) -> None:
    r = rig(meter, constant(5.0, 0.5))
    with r.meter as m:
        sample = m.read()
    assert r.chip.conversions >= 1          # open waited for a real conversion
    assert sample.mv == pytest.approx(5000, abs=4) and sample.ma == pytest.approx(500, abs=2)
    assert sample.rail == meter and isinstance(sample.t_ns, int)
    assert r.bus.closed is False            # a bus it was given is not its to close


@pytest.mark.parametrize(("meter", "chip", "said"), [
    ("ina226", "ina260", "die ID register 0xFF reads 0x2270 (an INA260: set meter: ina260), expected 0x2260 (INA226)"),
    ("ina260", "ina226", "die ID register 0xFF reads 0x2260 (an INA226: set meter: ina226), expected 0x2270 (INA260)"),
    ("ina219", "ina226", "configuration register 0x00 reads 0x4127 after reset (an INA226's default: set meter: "
                         "ina226), expected the INA219's power-on default 0x399F"),
    ("ina219", "ina260", "reads 0x6127 after reset (an INA260's default"),
    ("ina226", "ina219", "manufacturer ID register 0xFE reads 0x0000, expected 0x5449 (TI)"),
    ("ina260", "ina219", "manufacturer ID register 0xFE reads 0x0000, expected 0x5449 (TI)"),
])
def test_the_wrong_chip_at_the_address_is_refused_in_one_line(meter: str, chip: str, said: str) -> None:
    r = rig(meter, chip=chip, address=0x44)
    with pytest.raises(MeterError) as err:
        r.meter.open()
    text = str(err.value)
    assert text.startswith(f"{meter} on I2C bus 1 at 0x44: ") and said in text and "\n" not in text
    assert err.value.exit_code == 2


@pytest.mark.parametrize("meter", ["ina219", "ina226", "ina260"])
def test_no_device_at_the_address_is_one_line_naming_bus_and_address(meter: str) -> None:
    checked = check_meter_settings(meter, {"address": 0x41})
    clock = FakeClock()
    bus = SMBusModel(1, {0x40: model(meter, constant(5, 0.1), clock)})     # a chip, but at 0x40
    with pytest.raises(MeterError) as err:
        METERS.get(meter)(checked, smbus=bus, sleep=clock.sleep).open()
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"{meter} on I2C bus 1 at 0x41: ")
    assert "no ACK: Remote I/O error" in text and "i2cdetect -y 1" in text and meter.upper() in text


def test_a_missing_i2c_device_file_names_it_and_the_fix() -> None:
    if os.path.exists("/dev/i2c-255"):
        pytest.skip("this machine has /dev/i2c-255")
    meter = Ina226(check_meter_settings("ina226", {"bus": 255}))
    with pytest.raises(MeterError) as err:
        meter.open()
    text = str(err.value)
    assert "/dev/i2c-255 does not exist" in text and "dtparam=i2c_arm=on" in text and "\n" not in text


def test_close_closes_only_a_bus_it_opened(monkeypatch: pytest.MonkeyPatch) -> None:
    import smbus2
    clock = FakeClock()
    opened: list[int] = []
    bus = SMBusModel(3, {0x40: Ina226Model(constant(5, 0.1), clock=clock)})
    monkeypatch.setattr(smbus2, "SMBus", lambda n: opened.append(n) or bus)
    with Ina226(check_meter_settings("ina226", {"bus": 3}), sleep=clock.sleep) as m:
        assert m.read().ma == pytest.approx(100, abs=1)
    assert opened == [3] and bus.closed is True


def test_a_device_that_stops_answering_is_a_meter_error_on_read() -> None:
    r = rig("ina226")
    r.meter.open()
    r.bus.detach(0x40)
    with pytest.raises(MeterError, match=r"ina226 on I2C bus 1 at 0x40: reading register 0x06 failed \(no ACK"):
        r.meter.read()


def test_a_chip_that_never_converts_is_refused_at_open() -> None:
    clock = FakeClock()                        # and nothing moves it: no conversion can complete
    bus = SMBusModel(1, {0x40: Ina219Model(constant(5, 0.1), clock=clock)})
    meter = Ina219(check_meter_settings("ina219", {"adc_samples": 1}), smbus=bus, sleep=lambda s: None)
    with pytest.raises(MeterError, match=r"no conversion completed within .* expected one every 1\.06 ms"):
        meter.open()


# -- the registers the datasheets call for -----------------------------------------------------


def test_ina226_config_and_calibration_words() -> None:
    r = rig("ina226", conversion_us=588, averaging=16, shunt_ohms=0.1, max_current_a=0.8)
    r.meter.open()
    # AVG=16 (010) << 9, VBUSCT=VSHCT=588 us (011), MODE 111, bits 14..12 = 100;
    # CAL = trunc(0.00512 / (0.8/32768 A x 0.1 ohm)) = trunc(2097.152).
    assert r.chip.regs[0x00] == 0x44DF and r.chip.regs[0x05] == 2097 == 0x0831
    assert r.chip.writes == [(0x00, 0x8000), (0x05, 0x0831), (0x00, 0x44DF)]
    assert r.meter.current_lsb_a == pytest.approx(0.00512 / (2097 * 0.1))


def test_ina260_config_word_and_no_calibration() -> None:
    r = rig("ina260", conversion_us=1100, averaging=4)
    r.meter.open()
    assert r.chip.regs[0x00] == 0x6327        # 110 | AVG 001 | 100 | 100 | 111
    assert r.chip.writes == [(0x00, 0x8000), (0x00, 0x6327)]


@pytest.mark.parametrize(("settings", "config", "cal"), [
    # 3.2 A x 0.1 ohm = 320 mV: PG /8 (11), BRNG 32 V, BADC=SADC 1000 (12-bit, 1 sample);
    # Cal = trunc(0.04096 / (3.2/32768 x 0.1)) = 4194.
    ({"adc_samples": 1}, 0x3C47, 4194),
    # 1 A x 0.1 = 100 mV: PG /4 (10), BRNG 16 V, 8 samples (1011); trunc(13421.77) = 13421, bit 0 void.
    ({"max_current_a": 1.0, "bus_range_v": 16, "adc_samples": 8}, 0x15DF, 13420),
])
def test_ina219_config_and_calibration_words(settings: dict[str, Any], config: int, cal: int) -> None:
    r = rig("ina219", **settings)
    r.meter.open()
    assert (r.chip.regs[0x00], r.chip.regs[0x05]) == (config, cal)
    assert r.chip.writes == [(0x00, 0x8000), (0x05, cal), (0x00, config)]


@pytest.mark.parametrize(("max_a", "pg"), [(0.25, 0), (0.4, 0), (0.41, 1), (0.8, 1), (1.6, 2), (1.61, 3), (3.2, 3)])
def test_ina219_pga_is_the_smallest_range_holding_the_largest_shunt_drop(max_a: float, pg: int) -> None:
    r = rig("ina219", shunt_ohms=0.1, max_current_a=max_a)
    r.meter.open()
    assert r.chip.regs[0x00] >> 11 & 0b11 == pg


@pytest.mark.parametrize(("meter", "settings", "said"), [
    ("ina219", {"shunt_ohms": 0.1, "max_current_a": 3.3}, "330 mV is above the INA219's largest shunt range, 320 mV"),
    ("ina219", {"shunt_ohms": 0.1, "max_current_a": 0.1}, "calibration 134217 does not fit"),
    ("ina226", {"shunt_ohms": 0.1, "max_current_a": 1.0}, "100 mV is above the INA226's shunt range, 81.92 mV"),
    ("ina226", {"shunt_ohms": 0.1, "max_current_a": 0.01},
     "calibration 167772 (0x28F5C) is above the register's 0x7FFF"),
])
def test_impossible_ranges_are_refused_before_touching_the_bus(meter: str, settings: dict[str, Any], said: str) -> None:
    bus = SMBusModel(1)
    with pytest.raises(MeterError) as err:
        METERS.get(meter)(check_meter_settings(meter, settings), smbus=bus)
    assert said in str(err.value) and "\n" not in str(err.value) and bus.log == []


# -- readings --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("meter", "settings", "volts", "amps"), [
    ("ina226", {}, 5.0, 0.5), ("ina226", {}, 12.0, -0.25), ("ina226", {}, 3.3, 0.0123),
    ("ina226", {"averaging": 16}, 0.0, 0.0), ("ina226", {"shunt_ohms": 0.002, "max_current_a": 20}, 19.5, -14.2),
    # CAL = trunc(2048.95) and trunc(4195.9) & ~1: the nominal max_current_a / 2**15 would be ~15 LSB off here
    ("ina226", {"max_current_a": 0.818825}, 5.0, 0.8), ("ina219", {"max_current_a": 3.19878}, 5.0, 3.0),
    ("ina219", {}, 5.0, 1.5), ("ina219", {}, 12.0, -0.75), ("ina219", {"adc_samples": 4}, 3.3, 0.0123),
    ("ina219", {"max_current_a": 0.4, "bus_range_v": 16}, 15.9, -0.39),
    ("ina260", {}, 5.0, 2.0), ("ina260", {}, 12.0, -1.5), ("ina260", {"averaging": 64}, 3.3, 0.012),
])
def test_readings_are_within_an_lsb_of_the_true_values(meter: str, settings: dict[str, Any], volts: float,
                                                       amps: float) -> None:
    r = rig(meter, constant(volts, amps), **settings)
    v_tol, i_tol, p_tol = tolerances(r, volts, amps)
    with r.meter as m:
        for _ in range(3):
            s = m.read()
            assert s.mv == pytest.approx(volts * 1000, abs=v_tol)
            assert s.ma == pytest.approx(amps * 1000, abs=i_tol)
            assert s.mw == pytest.approx(volts * amps * 1000, abs=p_tol)     # signed like the current
            r.clock.advance(1 / m.max_rate_hz)


def test_words_are_big_endian_and_a_little_endian_driver_would_fail() -> None:
    r = rig("ina226", constant(5.0, 0.5))
    assert r.bus.read_i2c_block_data(0x40, 0xFE, 2) == [0x54, 0x49]   # "TI", MSB first
    assert r.bus.read_word_data(0x40, 0xFE) == 0x4954                 # SMBus words are little-endian

    class LittleEndian(Ina226):
        def _read(self, reg: int) -> int:
            return int(self._bus.read_word_data(self.address, reg))

    with pytest.raises(MeterError, match="manufacturer ID register 0xFE reads 0x4954, expected 0x5449"):
        LittleEndian(r.meter.settings, smbus=r.bus, sleep=r.clock.sleep).open()

    before = len(r.bus.log)
    r.meter.open()
    sample = r.meter.read()
    r.meter.close()
    assert sample.mv == pytest.approx(5000, abs=1.25)
    assert {method for method, _, _ in r.bus.log[before:]} == {"read_i2c_block_data", "write_i2c_block_data"}
    # the same bus register read little-endian: 5 V is 4000 = 0x0FA0, swapped 0xA00F
    assert r.bus.read_word_data(0x40, 0x02) == 0xA00F


def test_math_overflow_is_a_meter_error_not_a_clipped_reading() -> None:
    # 1.5 A through 0.1 ohm is 150 mV, inside the 160 mV PGA range, but Current = 15000 x 13420 /
    # 4096 = 49145 does not fit the signed 16-bit register: the INA219 sets OVF.
    r = rig("ina219", constant(5.0, 1.5), max_current_a=1.0)
    r.meter.open()
    with pytest.raises(MeterError, match=r"ina219 on I2C bus 1 at 0x40: math overflow \(OVF\).*max_current_a = 1 A"):
        r.meter.read()
    r226 = rig("ina226", constant(5.0, 0.7), max_current_a=0.5)
    r226.meter.open()
    with pytest.raises(MeterError, match="math overflow"):
        r226.meter.read()


# -- conversion timing on the chip's clock -------------------------------------------------------


def test_readings_change_only_once_per_conversion_cycle() -> None:
    start = FakeClock().s

    def ramp(t: float) -> tuple[float, float]:    # 10 mA more every ms
        return 5.0, 0.1 + 10 * (t - start)

    r = rig("ina226", ramp, conversion_us=1100, averaging=4)    # 4 x (1.1 + 1.1) ms = 8.8 ms a cycle
    cycle_ms = 8.8
    assert r.meter.max_rate_hz == pytest.approx(1000 / cycle_ms)
    r.meter.open()
    changes, last = [], r.meter.read().ma
    for step in range(1, 161):                    # 40 ms in 0.25 ms steps
        r.clock.advance(0.00025)
        ma = r.meter.read().ma
        if ma != last:
            changes.append(step * 0.25)
            last = ma
    gaps = [b - a for a, b in zip(changes, changes[1:])]
    assert len(changes) == pytest.approx(40 / cycle_ms, abs=1)
    assert all(cycle_ms - 0.25 <= g <= cycle_ms + 0.25 for g in gaps)


@pytest.mark.parametrize(("meter", "settings", "low", "high"), [
    ("ina219", {"adc_samples": 16}, 0.1, 1.0),
    ("ina226", {"conversion_us": 588, "averaging": 4}, 0.1, 0.5),
    ("ina260", {"conversion_us": 332, "averaging": 16}, 0.5, 3.0),
])
def test_a_stepped_load_is_read_low_then_at_most_one_blend_then_high(meter: str, settings: dict[str, Any],
                                                                     low: float, high: float) -> None:
    t_step = FakeClock().s + 0.030
    r = rig(meter, steps((0.0, 5.0, low), (t_step, 5.0, high)), **settings)
    cycle_s = 1 / max_rate_hz(meter, r.meter.settings)
    r.meter.open()
    seen: list[tuple[float, float]] = []
    while r.clock.s < t_step + 3 * cycle_s:
        seen.append((r.clock.s, r.meter.read().ma))
        r.clock.advance(cycle_s / 5)
    before = [ma for t, ma in seen if t < t_step]
    after = [ma for t, ma in seen if t >= t_step + 2 * cycle_s]
    blend = {ma for t, ma in seen if t_step <= t < t_step + 2 * cycle_s} - set(before) - set(after)
    assert before and after
    assert all(ma == pytest.approx(low * 1000, rel=0.01, abs=2) for ma in before)
    assert all(ma == pytest.approx(high * 1000, rel=0.01, abs=2) for ma in after)
    assert len(blend) <= 1 and all(low * 1000 < ma < high * 1000 for ma in blend)
    assert [ma for _, ma in seen] == sorted(ma for _, ma in seen)


# -- the facade ------------------------------------------------------------------------------------


def test_registry_harness_rate_and_describe() -> None:
    clock = FakeClock()
    bus = SMBusModel(1, {0x45: Ina260Model(constant(12.0, 1.0), clock=clock)})
    checked = check_meter_settings("ina260", {"address": 0x45, "rail": "VIN", "averaging": 16, "rate_hz": 20})
    meter = open_meter("ina260", checked, smbus=bus, sleep=clock.sleep)     # the harness's keywords
    try:
        assert isinstance(meter, PowerMeter)
        assert meter.read().mv == pytest.approx(12000, abs=1.25)
        assert meter.max_rate_hz == max_rate_hz("ina260", meter.settings) == pytest.approx(1e6 / (2 * 1100 * 16))
        assert meter.describe() == {"meter": "ina260", "rail": "VIN", "modelled": False,
                                    "max_rate_hz": round(1e6 / (2 * 1100 * 16), 3)}
    finally:
        meter.close()
    assert isinstance(METERS.get("ina219")(check_meter_settings("ina219", {})), Ina219)


# -- the model itself, against the datasheets ------------------------------------------------------


def test_model_registers_reset_and_bus_errors() -> None:
    clock = FakeClock()
    chip = Ina219Model(constant(5, 0.1), clock=clock)
    bus = SMBusModel(1, {0x40: chip})
    bus.write_i2c_block_data(0x40, 0x05, [0x12, 0x35])                   # CAL bit 0 is void
    assert bus.read_i2c_block_data(0x40, 0x05, 2) == [0x12, 0x34]
    bus.write_i2c_block_data(0x40, 0x02, [0xFF, 0xFF])                   # read-only: ignored
    assert bus.read_i2c_block_data(0x40, 0x02, 2) == [0, 0]
    bus.write_i2c_block_data(0x40, 0x00, [0x80, 0x00])                   # reset
    assert bus.read_i2c_block_data(0x40, 0x00, 2) == [0x39, 0x9F] and chip.regs[0x05] == 0
    ina226 = bus.attach(0x41, Ina226Model(clock=clock))
    bus.write_i2c_block_data(0x41, 0x00, [0x00, 0x27])                   # bits 14..12 stay 100
    assert ina226.regs[0x00] == 0x4027
    with pytest.raises(OSError) as err:
        bus.read_i2c_block_data(0x4F, 0x00, 2)
    assert err.value.errno == errno.EREMOTEIO == 121


def test_model_conversion_ready_flags() -> None:
    clock = FakeClock()
    chip = Ina226Model(constant(5, 0.1), clock=clock)                   # POR: 1.1 ms x 2, no averaging
    assert chip.read_register(0x06) & 0x0008 == 0
    clock.advance(0.0022)
    assert chip.read_register(0x06) & 0x0008 and chip.read_register(0x06) & 0x0008 == 0   # read clears CVRF
    assert chip.read_register(0x02) == 4000
    ina219 = Ina219Model(constant(5, 0.1), clock=clock)
    clock.advance(0.001064)
    assert ina219.read_register(0x02) & 0b10
    ina219.read_register(0x03)                                          # reading Power clears CNVR
    assert ina219.read_register(0x02) & 0b10 == 0 and ina219.read_register(0x02) >> 3 == 1250
