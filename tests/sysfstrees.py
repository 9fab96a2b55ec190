"""Fake sysfs trees and a fake ``vcgencmd`` for the file-based power meters' tests.

Each builder lays a tree out under a tmp ``root`` the way the kernel does on the named board:
the device directory under ``sys/devices/...`` and the driver's symlink to it under
``sys/bus/i2c/drivers/<driver>/`` (and ``sys/class/hwmon``, ``sys/class/powercap``), so a meter
given ``root=`` finds what it would find on the board. Values are written in place (same inode),
so a meter that keeps its files open sees a test's change on its next read.

Layouts (from NVIDIA's L4T docs, the kernel's ina3221 documentation and public captures):

- JetPack 4, iio (``ina3221x``): Nano ``50000000.host1x/546c0000.i2c/i2c-6/6-0040/iio:device0``
  (POM_5V_IN, POM_5V_GPU, POM_5V_CPU); Xavier NX ``c250000.i2c/i2c-7/7-0040/iio:device0`` (VDD_IN,
  VDD_CPU_GPU_CV, VDD_SOC); files ``rail_name_N``, ``in_voltageN_input`` mV, ``in_currentN_input``
  mA, ``in_powerN_input`` mW, ``crit_current_limit_N``, ``warn_current_limit_N``.
- JetPack 5/6, hwmon (``ina3221``): Orin Nano ``c240000.i2c/i2c-1/1-0040/hwmon/hwmon1`` (VDD_IN,
  VDD_CPU_GPU_CV, VDD_SOC); AGX Orin ``1-0040/hwmon/hwmon3`` (VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0)
  and ``1-0041/hwmon/hwmon4`` (NC, VDDQ_VDD2_1V8AO, NC); files ``inN_label``, ``inN_input`` mV,
  ``currN_input`` mA, ``in[4-6]_input`` shunt uV, and the summation channel ``in7_label``
  ("sum of shunt voltages"), ``in7_input``, ``curr4_input``.
- RAPL: ``sys/devices/virtual/powercap/intel-rapl/intel-rapl:0`` (package-0) with subzone
  ``intel-rapl:0:0`` (core), linked from ``sys/class/powercap``.
- ``vcgencmd pmic_read_adc`` on a Pi 5: ``<NAME>_A current(i)=x.xxxxxxxxA`` then
  ``<NAME>_V volt(j)=x.xxxxxxxxV`` lines, names right-aligned to 12 columns, EXT5V_V and BATT_V
  with no current line.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def write_in_place(path: Path, value: object) -> None:
    """Rewrite ``path`` keeping its inode (as sysfs does), with the kernel's trailing newline."""
    with open(path, "r+" if path.exists() else "w", encoding="ascii") as f:
        f.seek(0)
        f.truncate()
        f.write(f"{value}\n")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def _driver_files(driver: Path) -> None:
    """The files every driver directory holds beside its device links."""
    for name in ("bind", "unbind", "uevent"):
        if not (driver / name).exists():
            write_in_place(driver / name, "")


# -- Jetson INA3221 ---------------------------------------------------------------------------

@dataclass
class JetsonTree:
    """A laid-out Jetson: ``root`` to give the meter, and each rail's files by label."""

    root: Path
    layout: str                                               # "iio" or "hwmon"
    rails: dict[str, dict[str, Path]] = field(default_factory=dict)

    def set(self, rail: str, *, mv: int | None = None, ma: int | None = None, mw: int | None = None) -> None:
        """Change a rail's readings (``mw`` only on iio, where the driver reports power; ignored on hwmon)."""
        files = self.rails[rail]
        for key, value in (("mv", mv), ("ma", ma), ("mw", mw)):
            if value is not None and key in files:
                write_in_place(files[key], value)

    def file(self, rail: str, key: str) -> Path:
        """The file behind ``key`` (``mv``, ``ma``, ``mw``, ``label``) of ``rail``."""
        return self.rails[rail][key]


Rail = tuple[str, int, int]          # label, mV, mA


def _iio_chip(tree: JetsonTree, device_dir: Path, driver_link: Path, rails: Sequence[Rail]) -> None:
    device_dir.mkdir(parents=True)
    _link(driver_link, device_dir.parent)
    _driver_files(driver_link.parent)
    write_in_place(device_dir / "name", "ina3221x")
    write_in_place(device_dir / "running_mode", 1)
    for n, (label, mv, ma) in enumerate(rails):
        files = {"label": device_dir / f"rail_name_{n}", "mv": device_dir / f"in_voltage{n}_input",
                 "ma": device_dir / f"in_current{n}_input", "mw": device_dir / f"in_power{n}_input"}
        write_in_place(files["label"], label)
        write_in_place(files["mv"], mv)
        write_in_place(files["ma"], ma)
        write_in_place(files["mw"], mv * ma // 1000)
        write_in_place(device_dir / f"crit_current_limit_{n}", 5000)
        write_in_place(device_dir / f"warn_current_limit_{n}", 4000)
        tree.rails[label] = files


def jetpack4_nano(root: Path) -> JetsonTree:
    """A Jetson Nano on JetPack 4: one INA3221 at i2c-6 0x40 behind the ``ina3221x`` iio driver."""
    tree = JetsonTree(root, "iio")
    dev = root / "sys/devices/50000000.host1x/546c0000.i2c/i2c-6/6-0040/iio:device0"
    _iio_chip(tree, dev, root / "sys/bus/i2c/drivers/ina3221x/6-0040",
              [("POM_5V_IN", 5072, 1480), ("POM_5V_GPU", 5064, 80), ("POM_5V_CPU", 5064, 400)])
    return tree


def jetpack4_xavier_nx(root: Path) -> JetsonTree:
    """A Xavier NX on JetPack 4: one INA3221 at i2c-7 0x40 behind the ``ina3221x`` iio driver."""
    tree = JetsonTree(root, "iio")
    dev = root / "sys/devices/c250000.i2c/i2c-7/7-0040/iio:device0"
    _iio_chip(tree, dev, root / "sys/bus/i2c/drivers/ina3221x/7-0040",
              [("VDD_IN", 19136, 304), ("VDD_CPU_GPU_CV", 19128, 56), ("VDD_SOC", 19136, 64)])
    return tree


def _hwmon_chip(tree: JetsonTree, root: Path, addr: str, hwmon: str, rails: Sequence[Rail],
                *, summation: bool) -> None:
    device = root / "sys/devices/platform/c240000.i2c/i2c-1" / f"1-{addr}"
    hw = device / "hwmon" / hwmon
    hw.mkdir(parents=True)
    _link(root / "sys/bus/i2c/drivers/ina3221" / f"1-{addr}", device)
    _driver_files(root / "sys/bus/i2c/drivers/ina3221")
    _link(root / "sys/class/hwmon" / hwmon, hw)
    write_in_place(device / "name", "ina3221")
    write_in_place(hw / "name", "ina3221")
    for n, (label, mv, ma) in enumerate(rails, start=1):
        files = {"label": hw / f"in{n}_label", "mv": hw / f"in{n}_input", "ma": hw / f"curr{n}_input"}
        write_in_place(files["label"], label)
        write_in_place(files["mv"], mv)
        write_in_place(files["ma"], ma)
        write_in_place(hw / f"in{n}_enable", 0 if label == "NC" else 1)
        write_in_place(hw / f"in{n + 3}_input", ma * 5)          # shunt uV over a 5 mOhm shunt
        write_in_place(hw / f"shunt{n}_resistor", 5000)
        write_in_place(hw / f"curr{n}_crit", 5000)
        write_in_place(hw / f"curr{n}_max", 4000)
        if label != "NC":
            tree.rails[label] = files
    if summation:
        write_in_place(hw / "in7_label", "sum of shunt voltages")
        write_in_place(hw / "in7_input", sum(ma * 5 for _, _, ma in rails))
        write_in_place(hw / "curr4_input", sum(ma for _, _, ma in rails))
        write_in_place(hw / "curr4_crit", 10000)
    write_in_place(hw / "samples", 512)
    write_in_place(hw / "update_interval", 4156)


def jetpack5_orin_nano(root: Path) -> JetsonTree:
    """An Orin Nano on JetPack 5/6: one INA3221 at i2c-1 0x40 (hwmon1), summation channel on."""
    tree = JetsonTree(root, "hwmon")
    _hwmon_chip(tree, root, "0040", "hwmon1",
                [("VDD_IN", 5016, 1216), ("VDD_CPU_GPU_CV", 5008, 336), ("VDD_SOC", 5008, 392)], summation=True)
    return tree


def jetpack5_agx_orin(root: Path) -> JetsonTree:
    """An AGX Orin on JetPack 5/6: INA3221s at i2c-1 0x40 (hwmon3, summation on) and 0x41 (hwmon4,
    channels 1 and 3 labelled NC)."""
    tree = JetsonTree(root, "hwmon")
    _hwmon_chip(tree, root, "0040", "hwmon3",
                [("VDD_GPU_SOC", 19192, 392), ("VDD_CPU_CV", 19192, 152), ("VIN_SYS_5V0", 4968, 520)],
                summation=True)
    _hwmon_chip(tree, root, "0041", "hwmon4",
                [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 4968, 128), ("NC", 0, 0)], summation=False)
    return tree


# -- RAPL ----------------------------------------------------------------------------------------

RAPL_RANGE_UJ = 262143328850         # max_energy_range_uj of an Intel package zone


@dataclass
class RaplTree:
    """A powercap tree: ``root`` for the meter; ``set_energy`` moves a zone's counter."""

    root: Path
    zones: dict[str, Path] = field(default_factory=dict)

    def set_energy(self, uj: int, zone: str = "intel-rapl:0") -> None:
        write_in_place(self.zones[zone] / "energy_uj", uj)

    def energy_file(self, zone: str = "intel-rapl:0") -> Path:
        return self.zones[zone] / "energy_uj"


def rapl_tree(root: Path, *, energy_uj: int = 1_000_000, range_uj: int = RAPL_RANGE_UJ) -> RaplTree:
    """Package zone ``intel-rapl:0`` (package-0) and its subzone ``intel-rapl:0:0`` (core)."""
    tree = RaplTree(root)
    control = root / "sys/devices/virtual/powercap/intel-rapl"
    package = control / "intel-rapl:0"
    core = package / "intel-rapl:0:0"
    core.mkdir(parents=True)
    write_in_place(control / "enabled", 1)
    _link(root / "sys/class/powercap/intel-rapl", control)
    for zone, path, name, energy in (("intel-rapl:0", package, "package-0", energy_uj),
                                     ("intel-rapl:0:0", core, "core", energy_uj // 2)):
        _link(root / "sys/class/powercap" / zone, path)
        write_in_place(path / "name", name)
        write_in_place(path / "energy_uj", energy)
        write_in_place(path / "max_energy_range_uj", range_uj)
        write_in_place(path / "enabled", 1)
        write_in_place(path / "constraint_0_name", "long_term")
        write_in_place(path / "constraint_0_power_limit_uw", 15000000)
        tree.zones[zone] = path
    return tree


# -- vcgencmd ------------------------------------------------------------------------------------

# name: (current ADC index, volt ADC index), in the order the firmware prints them.
PMIC_CHANNELS: Mapping[str, tuple[int, int]] = {
    "3V7_WL_SW": (0, 8), "3V3_SYS": (1, 9), "1V8_SYS": (2, 10), "DDR_VDD2": (3, 11),
    "DDR_VDDQ": (4, 12), "1V1_SYS": (5, 13), "0V8_SW": (6, 14), "VDD_CORE": (7, 15),
    "3V3_DAC": (17, 20), "3V3_ADC": (18, 21), "0V8_AON": (16, 19), "HDMI": (22, 23),
}
PI5_IDLE: Mapping[str, tuple[float, float]] = {      # rail: (volts, amps), an idle Pi 5
    "3V7_WL_SW": (3.6981, 0.0117), "3V3_SYS": (3.3118, 0.0952), "1V8_SYS": (1.8037, 0.2113),
    "DDR_VDD2": (1.1042, 0.0205), "DDR_VDDQ": (0.6010, 0.0), "1V1_SYS": (1.1107, 0.1801),
    "0V8_SW": (0.8013, 0.3110), "VDD_CORE": (0.7217, 0.7811), "3V3_DAC": (3.3131, 0.0001),
    "3V3_ADC": (3.3067, 0.0004), "0V8_AON": (0.8002, 0.0031), "HDMI": (5.0842, 0.0199),
}


def pmic_output(rails: Mapping[str, tuple[float, float]] = PI5_IDLE, *, ext5v: float = 5.0891,
                batt: float = 0.0) -> str:
    """What ``vcgencmd pmic_read_adc`` prints for ``rails`` (every current line, then every
    voltage line, then EXT5V_V and BATT_V, which have no current)."""
    lines = [f"{name + '_A':>12} current({PMIC_CHANNELS.get(name, (30, 31))[0]})={a:.8f}A"
             for name, (_, a) in rails.items()]
    lines += [f"{name + '_V':>12} volt({PMIC_CHANNELS.get(name, (30, 31))[1]})={v:.8f}V"
              for name, (v, _) in rails.items()]
    lines += [f"{'EXT5V_V':>12} volt(24)={ext5v:.8f}V", f"{'BATT_V':>12} volt(25)={batt:.8f}V"]
    return "\n".join(lines) + "\n"


@dataclass
class FakeVcgencmd:
    """An executable ``vcgencmd`` in tmp: ``pmic_read_adc`` prints ``output``'s text, any other
    command fails as the real one does; ``argv`` is what to give the meter."""

    script: Path
    output: Path

    @property
    def argv(self) -> tuple[str, ...]:
        return (str(self.script),)

    def set_output(self, text: str) -> None:
        self.output.write_text(text, encoding="ascii")


def fake_vcgencmd(tmp: Path, text: str | None = None) -> FakeVcgencmd:
    """Write the script and its output file (a realistic idle Pi 5 unless ``text``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    out, script = tmp / "pmic_read_adc.txt", tmp / "vcgencmd"
    out.write_text(pmic_output() if text is None else text, encoding="ascii")
    script.write_text(f"""#!/bin/sh
if [ "$1" != pmic_read_adc ]; then
    echo "Command not registered" >&2
    exit 255
fi
cat '{out}'
""", encoding="ascii")
    script.chmod(0o755)
    return FakeVcgencmd(script, out)
