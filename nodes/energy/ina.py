"""The TI INA219, INA226 and INA260 current/power monitors over I2C: ``Ina219``, ``Ina226``, ``Ina260``.

Each is a ``nodes.energy.PowerMeter`` built from its checked settings
(``nodes.energy.settings.check_meter_settings``) and an optional already-open bus with smbus2's
``SMBus`` interface (a test's device model); without one, ``open`` opens ``/dev/i2c-N`` itself
(smbus2 is imported only then) and ``close`` closes only a bus it opened.

``open`` identifies the chip (INA226/INA260: Manufacturer ID 0xFE and Die ID 0xFF; INA219, which
has no ID registers: reset, then the configuration register's power-on default 0x399F), resets
it, writes the calibration and configuration registers from the settings and reads both back,
then waits for the first conversion so that the first ``read`` is a real measurement (polling the
chip's ready flag, paced by the keyword ``sleep``: time.sleep, or a test's fake clock). ``read``
returns one ``PowerSample`` from the bus-voltage, current and power registers.

Register words travel MSB first (SBOS448G 8.5.6, SBOS547A 7.5.5.3, SBOS656C 8.5.4). Only
``read_i2c_block_data(addr, reg, 2)`` and ``write_i2c_block_data(addr, reg, [hi, lo])`` touch the
bus: SMBus "word" transfers are little-endian (the first byte received becomes the low byte), so
``read_word_data`` would return every register byte-swapped.

A math overflow (the chip's OVF flag: current or power beyond what the calibration can hold) is
a ``MeterError`` on ``read``, never a reading: ``PowerSample`` has no flag, and a clipped figure
would be silently wrong. The chips' power register is unsigned (|I| x V); a sample's ``mw``
carries the current's sign, so a reverse current reads as negative power, as mV x mA does.

This module does no I/O at import, never imports ``testbed`` and never calls ``exit()``.
"""
from __future__ import annotations

import errno
import math
import time
from abc import abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from nodes.energy import MeterError, PowerMeter, PowerSample, now_ns
from nodes.energy.settings import (INA219_ADC_SAMPLES, INA_AVERAGING, INA_CONVERSION_US, conversion_cycle_us,
                                   max_rate_hz)

__all__ = ["Ina219", "Ina226", "Ina260", "TI_MANUFACTURER_ID", "DIE_IDS", "INA219_POR_CONFIG",
           "INA219_PGA_MV", "ina219_config", "ina219_calibration", "ina226_config", "ina226_calibration"]

REG_CONFIG, REG_SHUNT, REG_BUS, REG_POWER, REG_CURRENT, REG_CALIBRATION, REG_MASK_ENABLE = range(7)
INA260_REG_CURRENT = 0x01
REG_MANUFACTURER_ID, REG_DIE_ID = 0xFE, 0xFF
TI_MANUFACTURER_ID = 0x5449                    # "TI" in ASCII
DIE_IDS: Mapping[str, int] = {"ina226": 0x2260, "ina260": 0x2270}
INA219_POR_CONFIG = 0x399F
RESET = 0x8000
MODE_CONTINUOUS_SHUNT_BUS = 0b111
INA219_PGA_MV = (40, 80, 160, 320)            # PG code 0..3: shunt full scale /1, /2, /4, /8
INA226_SHUNT_FULL_SCALE_MV = 81.92
CVRF, OVF_MASK_ENABLE = 1 << 3, 1 << 2         # Mask/Enable (06h): conversion ready, math overflow
INA219_CNVR, INA219_OVF = 1 << 1, 1 << 0       # Bus Voltage (02h) bits 1 and 0
INA226_FIXED_CONFIG, INA260_FIXED_CONFIG = 0x4000, 0x6000   # config bits 14..12 read 100 / 110

Word = int
Sleep = Callable[[float], None]


def _signed(word: Word) -> int:
    """A register word as two's complement."""
    return word - 0x10000 if word & 0x8000 else word


def _trunc(x: float) -> int:
    """The datasheets' trunc(); a hair of slack so 4096.0 computed as 4095.9999999 stays 4096."""
    return math.floor(x * (1 + 1e-12))


def ina219_config(settings: Mapping[str, Any]) -> Word:
    """Configuration register (00h, SBOS448G 8.6.2.1): BRNG (bit 13) from ``bus_range_v``, PG
    (12..11) the smallest shunt range holding ``max_current_a x shunt_ohms``, BADC (10..7) and SADC
    (6..3) 12-bit averaging ``adc_samples`` (code 1nnn: 2**nnn samples), MODE (2..0) continuous
    shunt and bus. ``MeterError`` when even the 320 mV range is too small."""
    pga = ina219_pga(settings)
    adc = 0b1000 | INA219_ADC_SAMPLES.index(int(settings["adc_samples"]))
    brng = 1 if int(settings["bus_range_v"]) == 32 else 0
    return brng << 13 | pga << 11 | adc << 7 | adc << 3 | MODE_CONTINUOUS_SHUNT_BUS


def ina219_pga(settings: Mapping[str, Any]) -> int:
    """PG code of the smallest shunt range (40/80/160/320 mV) at or above the largest shunt drop."""
    drop_mv = float(settings["max_current_a"]) * float(settings["shunt_ohms"]) * 1000
    for code, full_scale in enumerate(INA219_PGA_MV):
        if drop_mv <= full_scale * (1 + 1e-9):
            return code
    raise MeterError(f"ina219: max_current_a x shunt_ohms = {drop_mv:g} mV is above the INA219's largest "
                     f"shunt range, 320 mV (PGA /8); expected at most 320 mV: lower max_current_a to "
                     f"{0.32 / float(settings['shunt_ohms']):g} A or use a smaller shunt")


def ina219_calibration(settings: Mapping[str, Any]) -> Word:
    """Calibration register (05h, SBOS448G 8.5.1 eq. 1): Current_LSB = max_current_a / 2**15,
    Cal = trunc(0.04096 / (Current_LSB x R)); bit 0 is void (always 0), so it is cleared here."""
    current_lsb = float(settings["max_current_a"]) / 32768
    cal = _trunc(0.04096 / (current_lsb * float(settings["shunt_ohms"])))
    if cal > 0xFFFF:
        raise MeterError(f"ina219: calibration {cal} does not fit the 16-bit calibration register (max 65534): "
                         f"max_current_a x shunt_ohms must be at least 20.48 mV; expected a larger "
                         f"max_current_a or shunt")
    return cal & 0xFFFE


def ina226_config(settings: Mapping[str, Any], *, fixed: int = INA226_FIXED_CONFIG) -> Word:
    """Configuration register (00h, SBOS547A 7.6.1 / SBOS656C 8.6.1): AVG (11..9), VBUSCT (8..6)
    and VSHCT/ISHCT (5..3) both ``conversion_us``, MODE (2..0) continuous shunt and bus; bits
    14..12 as the chip reads them."""
    avg = INA_AVERAGING.index(int(settings["averaging"]))
    ct = INA_CONVERSION_US.index(int(settings["conversion_us"]))
    return fixed | avg << 9 | ct << 6 | ct << 3 | MODE_CONTINUOUS_SHUNT_BUS


def ina226_calibration(settings: Mapping[str, Any]) -> Word:
    """Calibration register (05h, SBOS547A 7.5.1 eq. 1-2): Current_LSB = max_current_a / 2**15,
    CAL = trunc(0.00512 / (Current_LSB x R)); bit 15 is reserved, so CAL > 0x7FFF is refused, as
    is a largest shunt drop beyond the ADC's 81.92 mV."""
    max_a, ohms = float(settings["max_current_a"]), float(settings["shunt_ohms"])
    drop_mv = max_a * ohms * 1000
    if drop_mv > INA226_SHUNT_FULL_SCALE_MV * (1 + 1e-9):
        raise MeterError(f"ina226: max_current_a x shunt_ohms = {drop_mv:g} mV is above the INA226's shunt "
                         f"range, 81.92 mV; expected at most that: lower max_current_a to "
                         f"{INA226_SHUNT_FULL_SCALE_MV / 1000 / ohms:g} A or use a smaller shunt")
    cal = _trunc(0.00512 / (max_a / 32768 * ohms))
    if cal > 0x7FFF:
        raise MeterError(f"ina226: calibration {cal} (0x{cal:X}) is above the register's 0x7FFF: "
                         f"max_current_a x shunt_ohms = {drop_mv:g} mV is below 5.12 mV; expected a larger "
                         f"max_current_a or shunt")
    return cal


def _open_smbus(bus: int) -> Any:
    """``smbus2.SMBus(bus)``, its failures as one-line ``MeterError``s with the fix."""
    device = f"/dev/i2c-{bus}"
    try:
        import smbus2
    except ImportError as exc:
        raise MeterError(f"cannot open {device}: smbus2 is not installed ({exc}); expected the board's "
                         f"dependencies installed (pip install smbus2)") from exc
    try:
        return smbus2.SMBus(bus)
    except FileNotFoundError as exc:
        raise MeterError(f"{device} does not exist; expected I2C bus {bus} enabled (on a Raspberry Pi: "
                         f"dtparam=i2c_arm=on in config.txt, or raspi-config > Interface Options > I2C, "
                         f"then reboot)") from exc
    except PermissionError as exc:
        raise MeterError(f"cannot open {device}: permission denied; expected the agent's user in the "
                         f"i2c group (sudo usermod -aG i2c $USER)") from exc
    except OSError as exc:
        raise MeterError(f"cannot open {device}: {exc.strerror or exc}") from exc


class _Ina(PowerMeter):
    """What the three chips share: the bus, register access, open/close and the ready wait."""

    chip: ClassVar[str]

    def __init__(self, settings: Mapping[str, Any], *, smbus: Any = None, sleep: Sleep = time.sleep) -> None:
        super().__init__(settings)
        self._given_bus = smbus
        self._sleep = sleep
        self.bus_number = int(self.settings["bus"])
        self.address = int(self.settings["address"])
        self._bus: Any = None
        self._owns_bus = False

    @property
    def max_rate_hz(self) -> float:
        return max_rate_hz(self.name, self.settings)

    @property
    def where(self) -> str:
        """Which device, in the words of every error: ``ina226 on I2C bus 1 at 0x40``."""
        return f"{self.name} on I2C bus {self.bus_number} at 0x{self.address:02X}"

    def open(self) -> None:
        if self._bus is not None:
            return
        if self._given_bus is not None:
            self._bus, self._owns_bus = self._given_bus, False
        else:
            self._bus, self._owns_bus = _open_smbus(self.bus_number), True
        try:
            self._identify()
            self._configure()
            self._await_conversion()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None and self._owns_bus:
            bus.close()

    def read(self) -> PowerSample:
        """One reading, stamped when the current register is read (the registers before it take
        bus time: at 400 kHz about 0.1 ms each)."""
        if self._bus is None:
            raise MeterError(f"{self.where}: read before open; expected open() first")
        t_ns, mv, ma, mw = self._measure()
        return PowerSample(t_ns=t_ns, rail=self.rail, mv=mv, ma=ma, mw=mw if ma >= 0 else -mw)

    def content_lag_ns(self, period_ns: int) -> int:
        """The chip's registers hold its last completed cycle C (shunt converted before bus, in
        turn ``averaging`` times), which ended on average C/2 before a read not locked to it, and
        whose current samples centre C(2N+1)/(4N) before that end (0.75 C for one sample); the
        attribution takes a reading as centred period/2 before its stamp. bench/energy_attribution.py
        measures what this correction does (docs/results/energy.md)."""
        cycle_us = conversion_cycle_us(self.name, self.settings)
        assert cycle_us is not None, "every INA chip has a conversion cycle"
        c = cycle_us * 1000.0
        n = 1 if self.name == "ina219" else int(self.settings.get("averaging", 1))
        return int(round(c / 2 + c * (2 * n + 1) / (4 * n) - period_ns / 2))

    # -- the chip's own steps ------------------------------------------------------------------

    @abstractmethod
    def _identify(self) -> None:
        """``MeterError`` unless the device at the address is this chip."""

    @abstractmethod
    def _configure(self) -> None:
        """Reset, write calibration and configuration, and read both back."""

    @abstractmethod
    def _ready(self) -> bool:
        """Whether a conversion has completed since the flag was last cleared."""

    @abstractmethod
    def _measure(self) -> tuple[int, float, float, float]:
        """When the current register was read (``now_ns``), bus voltage in mV, current in mA and
        |power| in mW from the chip's registers."""

    # -- registers -----------------------------------------------------------------------------

    def _read(self, reg: int) -> Word:
        """One 16-bit register, MSB first on the wire. Not ``read_word_data``: SMBus words are
        little-endian, so it would hand back the INA's big-endian word byte-swapped."""
        try:
            hi, lo = self._bus.read_i2c_block_data(self.address, reg, 2)
        except OSError as exc:
            raise self._no_answer("reading", reg, exc) from exc
        return (hi & 0xFF) << 8 | (lo & 0xFF)

    def _write(self, reg: int, value: Word) -> None:
        """One 16-bit register, MSB first (SMBus write_word_data would send it LSB first)."""
        try:
            self._bus.write_i2c_block_data(self.address, reg, [value >> 8 & 0xFF, value & 0xFF])
        except OSError as exc:
            raise self._no_answer("writing", reg, exc) from exc

    def _no_answer(self, doing: str, reg: int, exc: OSError) -> MeterError:
        why = exc.strerror or str(exc)
        if exc.errno in (errno.EREMOTEIO, errno.ENXIO, errno.EIO):
            why = f"no ACK: {why}"
        return MeterError(f"{self.where}: {doing} register 0x{reg:02X} failed ({why}); expected an "
                          f"{self.chip} answering there (check its wiring and power, the A0/A1 address "
                          f"strapping, and `i2cdetect -y {self.bus_number}`)")

    def _write_checked(self, reg: int, value: Word, what: str) -> None:
        self._write(reg, value)
        back = self._read(reg)
        if back != value:
            raise MeterError(f"{self.where}: {what} register 0x{reg:02X} reads back 0x{back:04X} after writing "
                             f"0x{value:04X}; expected an {self.chip} to keep what was written")

    def _await_conversion(self) -> None:
        """Poll the conversion-ready flag until the first conversion after configuring completes
        (at most two conversion cycles and 50 ms more, counted in requested sleeps)."""
        cycle_s = 1 / self.max_rate_hz
        step = min(max(cycle_s / 4, 0.0005), 0.05)
        budget, waited = 2 * cycle_s + 0.05, 0.0
        while not self._ready():
            if waited >= budget:
                raise MeterError(f"{self.where}: no conversion completed within {waited * 1000:.1f} ms of "
                                 f"configuring it; expected one every {cycle_s * 1000:.2f} ms")
            self._sleep(step)
            waited += step


class Ina226(_Ina):
    """TI INA226: external shunt, 2.5 uV shunt LSB, 1.25 mV bus LSB, calibrated current and power."""

    name = "ina226"
    chip = "INA226"
    _fixed_config = INA226_FIXED_CONFIG
    _current_reg = REG_CURRENT

    def __init__(self, settings: Mapping[str, Any], *, smbus: Any = None, sleep: Sleep = time.sleep) -> None:
        super().__init__(settings, smbus=smbus, sleep=sleep)
        self.config_word = ina226_config(self.settings, fixed=self._fixed_config)
        self.calibration_word, self.current_lsb_a = self._calibration()

    def _identify(self) -> None:
        mfr = self._read(REG_MANUFACTURER_ID)
        if mfr != TI_MANUFACTURER_ID:
            raise MeterError(f"{self.where}: manufacturer ID register 0xFE reads 0x{mfr:04X}, expected "
                             f"0x{TI_MANUFACTURER_ID:04X} (TI); the device at this address is no {self.chip}")
        die, want = self._read(REG_DIE_ID), DIE_IDS[self.name]
        if die != want:
            other = next((f" (an {n.upper()}: set meter: {n})" for n, d in DIE_IDS.items() if d == die), "")
            raise MeterError(f"{self.where}: die ID register 0xFF reads 0x{die:04X}{other}, expected "
                             f"0x{want:04X} ({self.chip})")

    def _calibration(self) -> tuple[Word | None, float]:
        """The calibration word and the current LSB it really gives, in A. Not max_current_a / 2**15:
        after trunc(), Current = Shunt x CAL / 2048 with a 2.5 uV shunt LSB is 0.00512 / (CAL x R)
        A per count (SBOS547A eq. 1 solved for Current_LSB)."""
        cal = ina226_calibration(self.settings)
        return cal, 0.00512 / (cal * float(self.settings["shunt_ohms"]))

    def _configure(self) -> None:
        self._write(REG_CONFIG, RESET)
        if self.calibration_word is not None:
            self._write_checked(REG_CALIBRATION, self.calibration_word, "calibration")
        self._write_checked(REG_CONFIG, self.config_word, "configuration")

    def _ready(self) -> bool:
        return bool(self._read(REG_MASK_ENABLE) & CVRF)   # reading Mask/Enable clears CVRF

    def _measure(self) -> tuple[int, float, float, float]:
        if self._read(REG_MASK_ENABLE) & OVF_MASK_ENABLE:
            raise self._overflow()
        bus = self._read(REG_BUS) & 0x7FFF
        t_ns = now_ns()
        current = _signed(self._read(self._current_reg))
        power = self._read(REG_POWER)
        lsb = self._lsbs()
        return t_ns, bus * 1.25, current * lsb[0] * 1000, power * lsb[1] * 1000

    def _lsbs(self) -> tuple[float, float]:
        """Current and power LSBs in A and W: power LSB = 25 x Current_LSB (SBOS547A 7.5.1)."""
        return self.current_lsb_a, 25 * self.current_lsb_a

    def _overflow(self) -> MeterError:
        return MeterError(f"{self.where}: math overflow (OVF): current or power beyond the calibrated range "
                          f"of max_current_a = {self.settings['max_current_a']:g} A; expected a larger "
                          f"max_current_a")


class Ina260(Ina226):
    """TI INA260: the INA226's register map with an internal 2 mOhm shunt and no calibration:
    current 1.25 mA, bus 1.25 mV and power 10 mW per LSB (SBOS656C 8.6)."""

    name = "ina260"
    chip = "INA260"
    _fixed_config = INA260_FIXED_CONFIG
    _current_reg = INA260_REG_CURRENT

    def _calibration(self) -> tuple[Word | None, float]:
        return None, 0.00125

    def _lsbs(self) -> tuple[float, float]:
        return 0.00125, 0.010

    def _overflow(self) -> MeterError:
        return MeterError(f"{self.where}: math overflow (OVF): current or power beyond the INA260's range "
                          f"(+-15 A continuous, 36 V); expected the load within it")


class Ina219(_Ina):
    """TI INA219: external shunt behind a PGA (40..320 mV), 10 uV shunt LSB, 4 mV bus LSB, no ID
    registers (identified by its power-on configuration)."""

    name = "ina219"
    chip = "INA219"

    def __init__(self, settings: Mapping[str, Any], *, smbus: Any = None, sleep: Sleep = time.sleep) -> None:
        super().__init__(settings, smbus=smbus, sleep=sleep)
        self.config_word = ina219_config(self.settings)     # refuses an impossible PGA before any I/O
        self.calibration_word = ina219_calibration(self.settings)
        # Current = Shunt x Cal / 4096 with a 10 uV shunt LSB: 0.04096 / (Cal x R) A per count.
        self.current_lsb_a = 0.04096 / (self.calibration_word * float(self.settings["shunt_ohms"]))

    def _identify(self) -> None:
        self._write(REG_CONFIG, RESET)         # bit 15 self-clears, every register to its default
        config = self._read(REG_CONFIG)
        if config != INA219_POR_CONFIG:
            seen = {0x4127: " (an INA226's default: set meter: ina226)",
                    0x6127: " (an INA260's default: set meter: ina260)"}.get(config, "")
            raise MeterError(f"{self.where}: configuration register 0x00 reads 0x{config:04X} after reset{seen}, "
                             f"expected the INA219's power-on default 0x{INA219_POR_CONFIG:04X}")

    def _configure(self) -> None:
        self._write_checked(REG_CALIBRATION, self.calibration_word, "calibration")
        self._write_checked(REG_CONFIG, self.config_word, "configuration")

    def _ready(self) -> bool:
        return bool(self._read(REG_BUS) & INA219_CNVR)

    def _measure(self) -> tuple[int, float, float, float]:
        bus = self._read(REG_BUS)
        if bus & INA219_OVF:
            raise MeterError(f"{self.where}: math overflow (OVF): current or power beyond the calibrated range "
                             f"of max_current_a = {self.settings['max_current_a']:g} A; expected a larger "
                             f"max_current_a")
        t_ns = now_ns()
        current = _signed(self._read(REG_CURRENT))
        power = self._read(REG_POWER)               # reading Power clears CNVR
        # Bus voltage: bits 15..3, 4 mV LSB; power LSB = 20 x Current_LSB (SBOS448G 8.5.1).
        return t_ns, (bus >> 3) * 4.0, current * self.current_lsb_a * 1000, power * 20 * self.current_lsb_a * 1000
