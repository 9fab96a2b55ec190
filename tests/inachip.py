"""Register-level models of TI's INA219, INA226 and INA260 behind smbus2's ``SMBus`` interface, for tests.

Holds ``SMBusModel`` (a bus: chips at 7-bit addresses; ``read_i2c_block_data``,
``write_i2c_block_data``, ``read_word_data``/``write_word_data`` little-endian as real SMBus word
transfers are, ``close``; no chip at an address is ``OSError(EREMOTEIO)``, as the kernel raises on
a missing ACK), the chips ``Ina219Model``, ``Ina226Model``, ``Ina260Model`` and ``FakeClock``.

A chip is driven by a waveform ``power(t_s) -> (bus volts, amps)`` on a clock (``clock() -> ns``,
time.monotonic_ns unless a test gives a ``FakeClock``). Like the silicon it converts continuously
(shunt, then bus) at its configured conversion time x averaging from the last configuration write;
its result registers change only when a conversion cycle completes, holding what that cycle
measured (each sample taken mid-way through its conversion, quantized to the LSB, clamped to the
ADC's range, averaged); then it sets its conversion-ready flag (INA219: CNVR, bus register bit 1,
cleared by reading Power or writing Config; INA226/INA260: CVRF, Mask/Enable bit 3, cleared by
reading Mask/Enable or writing Config) and computes current and power from the shunt code and the
calibration exactly as the datasheets say, setting OVF when they do not fit their registers.

Datasheets: INA219 SBOS448G (Current = Shunt x Cal / 4096, Power = Current x Bus / 5000; 10 uV
shunt LSB, 4 mV bus LSB in bits 15..3), INA226 SBOS547A (Current = Shunt x CAL / 2048, Power =
Current x Bus / 20000; 2.5 uV shunt, 1.25 mV bus), INA260 SBOS656C (internal 2 mOhm shunt: 1.25 mA,
1.25 mV, 10 mW per LSB). Simplifications, each said where it is made: only continuous shunt+bus
mode converts (power-down modes hold the registers), the ALERT pin is not modelled, the INA219's
9..11-bit modes keep 12-bit quantization, a register pointer the chip lacks reads 0x0000.

It is written from the datasheets, never from the driver: it must not import ``nodes.energy``.
"""
from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Mapping
from typing import ClassVar

Waveform = Callable[[float], tuple[float, float]]
Clock = Callable[[], int]

__all__ = ["SMBusModel", "Ina219Model", "Ina226Model", "Ina260Model", "FakeClock", "constant", "steps"]


def constant(volts: float, amps: float) -> Waveform:
    """A bus at ``volts`` carrying ``amps`` for ever."""
    return lambda t: (volts, amps)


def steps(*points: tuple[float, float, float]) -> Waveform:
    """Piecewise constant: ``(t_s, volts, amps)`` from ``t_s`` on (the first from the start of time)."""
    ordered = sorted(points)

    def power(t: float) -> tuple[float, float]:
        current = ordered[0]
        for point in ordered:
            if point[0] <= t:
                current = point
        return current[1], current[2]
    return power


class FakeClock:
    """A monotonic clock in ns that moves only when told (``advance``, or ``sleep`` for a driver)."""

    def __init__(self, start_ns: int = 1_000_000_000) -> None:
        self.ns = start_ns

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)

    sleep = advance

    @property
    def s(self) -> float:
        return self.ns / 1e9


def _clamp(value: int, lo: int, hi: int) -> tuple[int, bool]:
    """``value`` within [lo, hi], and whether it had to be clipped."""
    return min(max(value, lo), hi), not lo <= value <= hi


def _tdiv(a: int, b: int) -> int:
    """Integer division truncating toward zero, as the chips' multiply-divide does."""
    q = abs(a) // b
    return -q if a < 0 else q


class InaChipModel:
    """Registers, reset, the conversion clock and ready flag shared by the three models."""

    name: ClassVar[str]
    POR: ClassVar[Mapping[int, int]]          # register -> power-on value (the defined registers)
    WRITABLE: ClassVar[Mapping[int, int]]     # R/W register -> the bits a write changes

    def __init__(self, power: Waveform = constant(0.0, 0.0), *, shunt_ohms: float = 0.1,
                 clock: Clock = time.monotonic_ns) -> None:
        self.power = power
        self.shunt_ohms = shunt_ohms
        self.clock = clock
        self.writes: list[tuple[int, int]] = []     # every (register, word) written, in order
        self.conversions = 0                        # completed conversion cycles whose results were loaded
        self.reset()

    def reset(self) -> None:
        """Power-on reset (also config bit 15): every register to its default, conversions restart."""
        self.regs: dict[int, int] = dict(self.POR)
        self._restart()

    def _restart(self) -> None:
        self._t0 = self.clock()
        self._done = 0
        self._clear_ready()

    # -- the I2C side --------------------------------------------------------------------------

    def read_register(self, reg: int) -> int:
        self._update()
        value = self.regs.get(reg, 0)           # a pointer to no register reads 0 (not specified)
        self._after_read(reg)
        return value

    def write_register(self, reg: int, value: int) -> None:
        self._update()
        self.writes.append((reg, value))
        mask = self.WRITABLE.get(reg)
        if mask is None:                        # read-only or absent: ACKed and ignored
            return
        if reg == 0 and value & 0x8000:         # RST: self-clearing, as a power-on reset
            self.reset()
            return
        self.regs[reg] = (self.regs[reg] & ~mask) | (value & mask)
        if reg == 0:
            self._restart()

    # -- conversions ---------------------------------------------------------------------------

    def cycle_ns(self) -> int:
        """One complete conversion cycle (shunt and bus, averaging included) as configured."""
        raise NotImplementedError

    def _update(self) -> None:
        mode = self.regs[0] & 0b111
        if mode in (0, 4):                       # power-down / ADC off: registers hold
            return
        if mode != 0b111:
            raise NotImplementedError(f"{self.name} model converts only in mode 0b111 (continuous shunt and "
                                      f"bus), not 0b{mode:03b}")
        cycle = self.cycle_ns()
        completed = (self.clock() - self._t0) // cycle
        if completed > self._done:
            self._done = completed
            self._convert(self._t0 + (completed - 1) * cycle)
            self.conversions += 1
            self._set_ready()

    def _sample(self, t_ns: float) -> tuple[float, float]:
        return self.power(t_ns / 1e9)

    def _convert(self, start_ns: int) -> None:
        raise NotImplementedError

    def _set_ready(self) -> None:
        raise NotImplementedError

    def _clear_ready(self) -> None:
        raise NotImplementedError

    def _after_read(self, reg: int) -> None:
        pass


class Ina226Model(InaChipModel):
    """INA226 (SBOS547A): config 0x4127, calibration, Mask/Enable with CVRF/OVF, IDs 0x5449/0x2260."""

    name = "INA226"
    POR: ClassVar[Mapping[int, int]] = {0x00: 0x4127, 0x01: 0, 0x02: 0, 0x03: 0, 0x04: 0, 0x05: 0,
                                        0x06: 0, 0x07: 0, 0xFE: 0x5449, 0xFF: 0x2260}
    # Config bits 14..12 read 100 whatever is written; CAL bit 15 is reserved; Mask/Enable's
    # AFF/CVRF/OVF (bits 4..2) are read-only flags.
    WRITABLE: ClassVar[Mapping[int, int]] = {0x00: 0x8FFF, 0x05: 0x7FFF, 0x06: 0xFC03, 0x07: 0xFFFF}
    CT_US = (140, 204, 332, 588, 1100, 2116, 4156, 8244)      # SBOS547A table 7 / 8
    AVG = (1, 4, 16, 64, 128, 256, 512, 1024)                 # SBOS547A table 6
    SHUNT_LSB_V, BUS_LSB_V = 2.5e-6, 1.25e-3

    def _fields(self) -> tuple[int, int, int]:
        config = self.regs[0]
        return self.AVG[config >> 9 & 7], self.CT_US[config >> 6 & 7] * 1000, self.CT_US[config >> 3 & 7] * 1000

    def cycle_ns(self) -> int:
        avg, ct_bus, ct_shunt = self._fields()
        return avg * (ct_shunt + ct_bus)

    def _convert(self, start_ns: int) -> None:
        """``avg`` shunt-then-bus pairs; current and power computed per sample and averaged with
        the voltages (SBOS547A 7.3.1: "appended to this accumulation register")."""
        avg, ct_bus, ct_shunt = self._fields()
        sums, overflow = [0, 0, 0, 0], False
        for i in range(avg):
            t = start_ns + i * (ct_shunt + ct_bus)
            shunt, _ = self._shunt_code(self._sample(t + ct_shunt / 2)[1])
            bus, _ = _clamp(round(self._sample(t + ct_shunt + ct_bus / 2)[0] / self.BUS_LSB_V), 0, 0x7FFF)
            current, power, o3 = self._math(shunt, bus)
            overflow |= o3
            for k, v in enumerate((shunt, bus, current, power)):
                sums[k] += v
        shunt, bus, current, power = (round(v / avg) for v in sums)
        self._load(shunt, bus, current, power, overflow)

    def _shunt_code(self, amps: float) -> tuple[int, bool]:
        return _clamp(round(amps * self.shunt_ohms / self.SHUNT_LSB_V), -0x8000, 0x7FFF)

    def _math(self, shunt: int, bus: int) -> tuple[int, int, bool]:
        """Current = ShuntVoltage x CAL / 2048 (eq. 3); Power = Current x BusVoltage / 20000 (eq. 4),
        the Power register unsigned; no calibration: both stay 0."""
        cal = self.regs[0x05]
        current, o1 = _clamp(_tdiv(shunt * cal, 2048), -0x8000, 0x7FFF)
        power, o2 = _clamp(abs(current) * bus // 20000, 0, 0xFFFF)
        return current, power, o1 or o2

    def _load(self, shunt: int, bus: int, current: int, power: int, overflow: bool) -> None:
        self.regs[0x01] = shunt & 0xFFFF
        self.regs[0x02] = bus
        self.regs[0x04] = current & 0xFFFF
        self.regs[0x03] = power
        self.regs[0x06] = (self.regs[0x06] & ~0x0004) | (0x0004 if overflow else 0)

    def _set_ready(self) -> None:
        self.regs[0x06] |= 0x0008

    def _clear_ready(self) -> None:
        self.regs[0x06] &= ~0x0008

    def _after_read(self, reg: int) -> None:
        if reg == 0x06:                          # reading Mask/Enable clears CVRF (SBOS547A 7.6.7)
            self._clear_ready()


class Ina260Model(Ina226Model):
    """INA260 (SBOS656C): the INA226's map without shunt/calibration registers, an internal
    2 mOhm shunt; current at 01h (1.25 mA), bus 02h (1.25 mV), power 03h (10 mW), config 0x6127,
    die ID 0x2270."""

    name = "INA260"
    POR: ClassVar[Mapping[int, int]] = {0x00: 0x6127, 0x01: 0, 0x02: 0, 0x03: 0, 0x06: 0, 0x07: 0,
                                        0xFE: 0x5449, 0xFF: 0x2270}
    WRITABLE: ClassVar[Mapping[int, int]] = {0x00: 0x8FFF, 0x06: 0xFC03, 0x07: 0xFFFF}

    def __init__(self, power: Waveform = constant(0.0, 0.0), *, clock: Clock = time.monotonic_ns) -> None:
        super().__init__(power, shunt_ohms=0.002, clock=clock)

    def _math(self, shunt: int, bus: int) -> tuple[int, int, bool]:
        """2.5 uV over 2 mOhm is exactly 1.25 mA: the current code is the shunt code. Power LSB
        10 mW = 1.25 mA x 1.25 mV x 6400, so Power = |Current| x Bus / 6400."""
        power, overflow = _clamp(abs(shunt) * bus // 6400, 0, 0xFFFF)
        return shunt, power, overflow

    def _load(self, shunt: int, bus: int, current: int, power: int, overflow: bool) -> None:
        self.regs[0x01] = current & 0xFFFF
        self.regs[0x02] = bus
        self.regs[0x03] = power
        self.regs[0x06] = (self.regs[0x06] & ~0x0004) | (0x0004 if overflow else 0)


class Ina219Model(InaChipModel):
    """INA219 (SBOS448G): config 0x399F (BRNG, PG, BADC, SADC, MODE), shunt behind a PGA, bus in
    bits 15..3 with CNVR/OVF, calibration with a void bit 0; no ID registers."""

    name = "INA219"
    POR: ClassVar[Mapping[int, int]] = {0x00: 0x399F, 0x01: 0, 0x02: 0, 0x03: 0, 0x04: 0, 0x05: 0}
    WRITABLE: ClassVar[Mapping[int, int]] = {0x00: 0xBFFF, 0x05: 0xFFFE}   # bit 14 unused; CAL bit 0 void
    # SBOS448G table 5: ADC code -> (samples, conversion time us); 0..3 are 9..12-bit single samples.
    ADC: ClassVar[Mapping[int, tuple[int, int]]] = {
        0: (1, 84), 1: (1, 148), 2: (1, 276), 3: (1, 532), 8: (1, 532), 9: (2, 1060), 10: (4, 2130),
        11: (8, 4260), 12: (16, 8510), 13: (32, 17020), 14: (64, 34050), 15: (128, 68100)}
    SHUNT_LSB_V, BUS_LSB_V = 10e-6, 4e-3

    def _adc(self, code: int) -> tuple[int, int]:
        samples, ct_us = self.ADC[code if code & 0b1000 else code & 0b0011]
        return samples, ct_us * 1000

    def _fields(self) -> tuple[int, int, tuple[int, int], tuple[int, int]]:
        config = self.regs[0]
        return config >> 13 & 1, config >> 11 & 3, self._adc(config >> 7 & 0xF), self._adc(config >> 3 & 0xF)

    def cycle_ns(self) -> int:
        _, _, (_, ct_bus), (_, ct_shunt) = self._fields()
        return ct_shunt + ct_bus

    def _convert(self, start_ns: int) -> None:
        """Shunt (SADC samples over its conversion time), then bus (BADC samples); Current =
        Shunt x Cal / 4096, Power = Current x Bus / 5000 (SBOS448G 8.6.3.2, 8.5.1)."""
        brng, pg, (n_bus, ct_bus), (n_shunt, ct_shunt) = self._fields()
        full = 4000 << pg                                   # 40 mV .. 320 mV in 10 uV codes
        shunt = round(sum(_clamp(round(self._sample(start_ns + (j + 0.5) * ct_shunt / n_shunt)[1]
                                       * self.shunt_ohms / self.SHUNT_LSB_V), -full, full)[0]
                          for j in range(n_shunt)) / n_shunt)
        top = 0x1FFF if brng else 0x0FFF                    # 32 V range: BD12..0; 16 V: BD11..0
        bus = round(sum(_clamp(round(self._sample(start_ns + ct_shunt + (j + 0.5) * ct_bus / n_bus)[0]
                                     / self.BUS_LSB_V), 0, top)[0] for j in range(n_bus)) / n_bus)
        current, o1 = _clamp(_tdiv(shunt * self.regs[0x05], 4096), -0x8000, 0x7FFF)
        power, o2 = _clamp(abs(current) * bus // 5000, 0, 0xFFFF)
        self.regs[0x01] = shunt & 0xFFFF
        self.regs[0x04] = current & 0xFFFF
        self.regs[0x03] = power
        self.regs[0x02] = bus << 3 | (self.regs[0x02] & 0b10) | (1 if o1 or o2 else 0)

    def _set_ready(self) -> None:
        self.regs[0x02] |= 0b10

    def _clear_ready(self) -> None:
        self.regs[0x02] &= ~0b10

    def _after_read(self, reg: int) -> None:
        if reg == 0x03:                          # reading Power clears CNVR (SBOS448G 8.6.3.2)
            self._clear_ready()


class SMBusModel:
    """smbus2.SMBus's interface over modelled chips at 7-bit addresses. ``log`` records every
    call as ``(method, address, register)``, so a test can see how a driver talked to the bus."""

    def __init__(self, bus: int = 1, devices: Mapping[int, InaChipModel] | None = None) -> None:
        self.bus = bus
        self.devices: dict[int, InaChipModel] = dict(devices or {})
        self.log: list[tuple[str, int, int]] = []
        self.closed = False

    def attach(self, address: int, chip: InaChipModel) -> InaChipModel:
        self.devices[address] = chip
        return chip

    def detach(self, address: int) -> None:
        del self.devices[address]

    def _chip(self, method: str, address: int, register: int) -> InaChipModel:
        self.log.append((method, address, register))
        if self.closed:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        chip = self.devices.get(address)
        if chip is None:                        # no ACK: i2c-dev answers EREMOTEIO (121)
            raise OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))
        return chip

    def read_i2c_block_data(self, i2c_addr: int, register: int, length: int, force: bool | None = None) -> list[int]:
        chip = self._chip("read_i2c_block_data", i2c_addr, register)
        if length != 2:
            raise ValueError(f"the {chip.name}'s registers are 16 bits: read 2 bytes, not {length}")
        word = chip.read_register(register)
        return [word >> 8, word & 0xFF]         # MSB first on the wire

    def write_i2c_block_data(self, i2c_addr: int, register: int, data: list[int], force: bool | None = None) -> None:
        chip = self._chip("write_i2c_block_data", i2c_addr, register)
        if len(data) != 2:
            raise ValueError(f"the {chip.name}'s registers are 16 bits: write [MSB, LSB], not {data!r}")
        chip.write_register(register, (data[0] & 0xFF) << 8 | (data[1] & 0xFF))

    def read_word_data(self, i2c_addr: int, register: int, force: bool | None = None) -> int:
        """SMBus Read Word: the first byte received is the LOW byte, so the INA's MSB-first word
        arrives byte-swapped, exactly as on a real bus."""
        word = self._chip("read_word_data", i2c_addr, register).read_register(register)
        return (word & 0xFF) << 8 | word >> 8

    def write_word_data(self, i2c_addr: int, register: int, value: int, force: bool | None = None) -> None:
        """SMBus Write Word: sends the low byte first, which the INA takes as its MSB."""
        chip = self._chip("write_word_data", i2c_addr, register)
        chip.write_register(register, (value & 0xFF) << 8 | (value >> 8 & 0xFF))

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> SMBusModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bench_ina260_bus() -> SMBusModel:
    """Bus 1 with an INA260 at 0x40 on a steady 5.0 V, 0.6 A load (3.0 W), on the real monotonic
    clock: what a simulated board's agent opens through ``HBC_TESTBED_METER_BUS`` in the run test."""
    return SMBusModel(1, {0x40: Ina260Model(constant(5.0, 0.6))})
