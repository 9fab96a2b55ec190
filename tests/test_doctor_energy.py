"""`testbed doctor`'s look at each ssh board's power meter, as its inventory entry names it.

The probe is a stdlib script run on the board over SSH (real sshd boards in network namespaces,
tests/sshboards.py). The boards share this machine's filesystem, so the meters' files are either
this machine's own (no I2C, no INA3221, no vcgencmd here: the failure paths, with their fixes) or
fake trees (tests/sysfstrees.py) under a ``root`` given to ``energy_checks`` (tests only, as the
agent's HBC_TESTBED_METER_ROOT). Logged in as a user without root, root-only files are really
unreadable. The chip's ID registers need a real I2C adapter, which no test machine has: what the
probe reports for them is judged by ``judge_energy`` on the probe's own output shape.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from nodes.energy.settings import check_meter_settings
from testbed.config import EnergySpec
from testbed.remote.doctor import BoardReport, Check, judge_energy
from tests import sysfstrees as trees

VENV_PY = sys.executable
SYSTEM_PY = "/usr/bin/python3"      # any python3 runs the probe: it needs the stdlib only


def meter(name: str, **settings: object) -> EnergySpec:
    return EnergySpec(name, check_meter_settings(name, settings))


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


# ---------------------------------------------------------------------------- the chip's registers


def ina_found(*, registers: dict[int, int] | None = None, errors: dict[int, int] | None = None,
              state: str = "ok", **more: object) -> dict:
    """What the probe prints for an INA meter whose bus opened (``registers``: reg -> word read;
    ``errors``: reg -> errno of its read)."""
    regs = {str(k): {"word": v} for k, v in (registers or {}).items()}
    regs.update({str(k): {"errno": e, "error": os.strerror(e)} for k, e in (errors or {}).items()})
    return {"user": "pi", "files": {}, "listed": {}, "i2c": {"state": state, "funcs": 0x0EFF0009,
                                                              "registers": regs, **more}}


def test_an_ina226_answering_with_its_ids_is_named() -> None:
    checks = by_name(judge_energy(meter("ina226", address=0x41), ina_found(registers={0xFE: 0x5449, 0xFF: 0x2260})))
    assert checks["i2c"].ok and checks["i2c"].detail == "/dev/i2c-1 present, readable and writable by pi"
    assert checks["energy"].ok and checks["energy"].detail.startswith("INA226 at 0x41 on bus 1"), checks["energy"]


def test_an_ina260_where_the_inventory_says_ina226_is_named_with_the_fix() -> None:
    (bus, chip) = judge_energy(meter("ina226"), ina_found(registers={0xFE: 0x5449, 0xFF: 0x2270}))
    assert bus.ok and not chip.ok
    assert chip.detail == "found an INA260 at 0x40 on bus 1; the inventory says ina226"
    assert chip.fix == "set energy: {meter: ina260}"


def test_no_device_at_the_address() -> None:
    for code in (errno.ENXIO, errno.EREMOTEIO):
        (_, chip) = judge_energy(meter("ina260", bus=3), ina_found(errors={0xFE: code, 0xFF: code}))
        assert not chip.ok and chip.detail.startswith("no device answers at 0x40 on bus 3"), chip
        assert "i2cdetect -y 3" in chip.fix and "address:" in chip.fix


def test_a_device_that_is_no_ti_chip() -> None:
    (_, chip) = judge_energy(meter("ina226"), ina_found(registers={0xFE: 0x1234, 0xFF: 0x0000}))
    assert not chip.ok and "0xFE) reads 0x1234, not 0x5449 (TI): no INA226" in chip.detail, chip


def test_ina219_has_no_id_so_any_answer_will_do_unless_it_is_a_known_ina226() -> None:
    (_, chip) = judge_energy(meter("ina219"), ina_found(registers={0x00: 0x399F}, errors={0xFE: errno.EREMOTEIO,
                                                                                         0xFF: errno.EREMOTEIO}))
    assert chip.ok and "a device answers at 0x40 on bus 1 (configuration 0x399F: the INA219's power-on default" \
        in chip.detail, chip
    (_, chip) = judge_energy(meter("ina219"), ina_found(registers={0x00: 0x4127, 0xFE: 0x5449, 0xFF: 0x2260}))
    assert not chip.ok and "found an INA226 at 0x40 on bus 1" in chip.detail and chip.fix == "set energy: {meter: ina226}"


def test_an_address_a_kernel_driver_holds_and_an_smbus_only_adapter() -> None:
    busy = ina_found(state="ioctl", errno=errno.EBUSY, error=os.strerror(errno.EBUSY))
    (_, chip) = judge_energy(meter("ina226"), busy)
    assert not chip.ok and "0x40 on bus 1 is held by a kernel driver" in chip.detail and "dtoverlay" in chip.fix
    (_, chip) = judge_energy(meter("ina226"), ina_found(state="nofunc", funcs=0x00000001))
    assert not chip.ok and "cannot do I2C block reads" in chip.detail


def test_model_is_no_meter_and_says_so() -> None:
    (check,) = judge_energy(meter("model"), {})
    assert check.ok and check.detail.startswith("modelled: no meter")


# ---------------------------------------------------------------------------- on ssh boards


def write_inventory(path: Path, bench, *, key: Path, user: str = "root", python: str = VENV_PY,
                    energy: dict[str, str] | None = None) -> Path:
    """An inventory of the bench's boards (the last one the edge), each with ``energy[name]``."""
    names = [b.name for b in bench.boards]
    lines = [f"bench: t{bench.tag or 'x'}", "broker: {mode: embedded}",
             f"ssh: {{known_hosts: known_hosts, key: {key}}}", "boards:"]
    for i, b in enumerate(bench.boards):
        edge = i == len(names) - 1
        lines += [f"  {b.name}:", f"    role: {'edge' if edge else 'wearable'}",
                  f"    kind: {'jetson-orin-nano' if edge else 'rpi4'}", "    connect: ssh", f"    host: {b.host}",
                  f"    user: {user}", "    runtime: torch", f"    python: {python}", "    env: python",
                  f"    workdir: {b.workdir}"]
        if energy and b.name in energy:
            lines.append(f"    energy: {energy[b.name]}")
    lines.append("links:")
    lines += [f"  - {{from: {n}, to: {names[-1]}, transport: mqtt, profile: ideal}}" for n in names[:-1]]
    path.write_text("\n".join(lines) + "\n")
    (path.parent / "known_hosts").write_text(bench.known_hosts_text())
    return path


@pytest.fixture(scope="module")
def boards3(ssh_bench_module):
    return ssh_bench_module(names=["wrist", "chest", "edge"])


def test_doctor_checks_each_boards_meter_as_its_entry_names_it(boards3, ssh_session_keys, tmp_path, model_cache):
    """Through `testbed doctor --json`: an INA226 on a bus this machine lacks, a Jetson's rail
    (this machine has no INA3221) and a modelled board."""
    if Path("/dev/i2c-7").exists() or Path("/sys/bus/i2c/drivers/ina3221").exists():
        pytest.skip("this machine has an I2C bus 7 or an INA3221: the failures below would not happen")
    inv = write_inventory(tmp_path / "inventory.yaml", boards3, key=ssh_session_keys.private,
                          energy={"wrist": "{meter: ina226, bus: 7}", "chest": "jetson", "edge": "model"})
    proc = run_cli("doctor", "--inventory", str(inv), "--json", cache=model_cache, cwd=tmp_path)
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    checks = {n: {c["name"]: c for c in doc["boards"][n]["checks"]} for n in ("wrist", "chest", "edge")}
    i2c = checks["wrist"]["i2c"]
    assert not i2c["ok"] and i2c["required"] and i2c["detail"].startswith("/dev/i2c-7: no such bus"), i2c
    assert "dtparam=i2c_arm=on" in i2c["fix"] and "raspi-config nonint do_i2c 0" in i2c["fix"]
    assert "energy" not in checks["wrist"]        # the chip is not looked for on a bus that is not there
    jetson = checks["chest"]["energy"]
    assert not jetson["ok"] and "no INA3221 rails under /sys/bus/i2c/drivers/ina3221/" in jetson["detail"], jetson
    assert "JetPack 4" in jetson["detail"] and "Jetson" in jetson["fix"]
    model = checks["edge"]["energy"]
    assert model["ok"] and model["detail"].startswith("modelled: no meter")
    assert proc.returncode == 1 and not doc["ok"] and doc["boards"]["edge"]["ok"]
    assert "wrist: i2c: /dev/i2c-7: no such bus" in proc.stderr, proc.stderr


def energy_on(bench, tmp_path: Path, key: Path, board: str, cases: list[tuple[EnergySpec, dict]], *,
              user: str = "root", python: str = VENV_PY) -> list[dict[str, Check]]:
    """``energy_checks`` on ``board`` for each (meter, harness keywords), over one ssh session."""
    from testbed.config import load_inventory
    from testbed.remote.doctor import energy_checks
    from testbed.remote.ssh import Boards

    inv = load_inventory(write_inventory(tmp_path / "inventory.yaml", bench, key=key, user=user, python=python))
    out: list[dict[str, Check]] = []
    with Boards(inv, [board]) as boards:
        for spec, harness in cases:
            rep = BoardReport(board)
            boards.call(energy_checks(boards.session(board), rep, spec, **harness))
            out.append(by_name(rep.checks))
    return out


def test_fake_trees_read_as_each_board_lays_them_out(boards3, ssh_session_keys, tmp_path):
    nano, orin, agx, rapl, dev = (tmp_path / n for n in ("nano", "orin", "agx", "rapl", "dev"))
    for folder, build in ((nano, trees.jetpack4_nano), (orin, trees.jetpack5_orin_nano), (agx, trees.jetpack5_agx_orin),
                          (rapl, trees.rapl_tree)):
        folder.mkdir()
        build(folder)
    (dev / "dev").mkdir(parents=True)
    (dev / "dev" / "i2c-1").write_text("")          # a plain file where the bus should be
    vc = trees.fake_vcgencmd(tmp_path / "vc")
    got = energy_on(boards3, tmp_path, ssh_session_keys.private, "wrist", [
        (meter("jetson"), {"root": str(nano)}),
        (meter("jetson", rail="VDD_SOC"), {"root": str(orin)}),
        (meter("jetson"), {"root": str(agx)}),
        (meter("rapl"), {"root": str(rapl)}),
        (meter("rapl", zone="intel-rapl:1"), {"root": str(rapl)}),
        (meter("pi5-pmic", rail="VDD_CORE"), {"vcgencmd": vc.argv}),
        (meter("pi5-pmic", rail="EXT5V"), {"vcgencmd": vc.argv}),
        (meter("ina260"), {"root": str(dev)}),
    ])
    nano_c, orin_c, agx_c, rapl_c, zone_c, pmic_c, ext_c, ina_c = got
    e = nano_c["energy"]      # JetPack 4 (iio): VDD_IN is the Nano's POM_5V_IN
    assert e.ok and e.detail.startswith("POM_5V_IN (iio, ") and "5072 mV, 1480 mA, 7506 mW, readable by root" in e.detail
    e = orin_c["energy"]
    assert e.ok and e.detail.startswith("VDD_SOC (hwmon, ") and "5008 mV, 392 mA" in e.detail, e
    e = agx_c["energy"]
    assert not e.ok and e.detail == ("no INA3221 rail 'VDD_IN' on this board; rails: VDD_GPU_SOC, VDD_CPU_CV, "
                                     "VIN_SYS_5V0, VDDQ_VDD2_1V8AO") and e.fix == "set energy: {meter: jetson, rail: VDD_GPU_SOC}"
    e = rapl_c["energy"]
    assert e.ok and e.detail.startswith("intel-rapl:0 (package-0): energy_uj readable by root (1000000 uJ"), e
    e = zone_c["energy"]
    assert not e.ok and "no powercap zone 'intel-rapl:1'" in e.detail and "intel-rapl:0, intel-rapl:0:0" in e.detail
    assert e.fix == "set energy: {meter: rapl, zone: intel-rapl:0}"
    e = pmic_c["energy"]
    assert e.ok and e.detail.startswith("vcgencmd pmic_read_adc: 12 rails (") and "VDD_CORE among them" in e.detail, e
    e = ext_c["energy"]
    assert not e.ok and "no PMIC rail 'EXT5V'" in e.detail and "VDD_CORE" in e.detail
    assert ina_c["i2c"].ok and ina_c["i2c"].detail == f"{dev}/dev/i2c-1 present, readable and writable by root"
    assert not ina_c["energy"].ok and ina_c["energy"].detail.startswith(f"{dev}/dev/i2c-1 is not an I2C adapter")
    assert all("energy" in c or "i2c" in c for c in got)


def test_this_machines_own_files_rapl_and_vcgencmd(boards3, ssh_session_keys, tmp_path):
    if Path("/sys/class/powercap/intel-rapl:0").exists() or shutil.which("vcgencmd"):
        pytest.skip("this machine has RAPL or vcgencmd: the failures below would not happen")
    rapl, pmic = energy_on(boards3, tmp_path, ssh_session_keys.private, "chest",
                           [(meter("rapl"), {}), (meter("pi5-pmic"), {})])
    e = rapl["energy"]
    assert not e.ok and e.detail.startswith("no powercap zone 'intel-rapl:0' at /sys/class/powercap/intel-rapl:0"), e
    assert "intel_rapl_msr" in e.fix
    e = pmic["energy"]
    assert not e.ok and e.detail == "vcgencmd not found on the login's PATH" and "Raspberry Pi 5" in e.fix


@pytest.fixture
def shared_root() -> Iterator[Path]:
    """A folder every user can walk (pytest's tmp is root's alone), removed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="tb-meter-"))
    try:
        folder.chmod(0o755)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_root_only_files_are_named_with_the_fix_for_a_user_without_root(boards3, ssh_session_keys, tmp_path,
                                                                           shared_root):
    """Logged in as a user who is not root: JetPack 4's root-only iio files, an Orin's input rail
    made root-only, RAPL's counter (root-only since CVE-2020-8694) and an I2C bus outside the
    user's groups."""
    if not Path(SYSTEM_PY).exists():
        pytest.skip(f"no {SYSTEM_PY} here for the user without root")
    nano, orin, rapl, dev = (shared_root / n for n in ("nano", "orin", "rapl", "dev"))
    for folder in (nano, orin, rapl, dev):
        folder.mkdir()
    nano_tree = trees.jetpack4_nano(nano)
    for files in nano_tree.rails.values():       # as JetPack 4 makes them: root's alone
        for path in files.values():
            path.chmod(0o600)
    orin_tree = trees.jetpack5_orin_nano(orin)
    for key in ("mv", "ma"):
        orin_tree.file("VDD_IN", key).chmod(0o400)
    rapl_tree = trees.rapl_tree(rapl)
    rapl_tree.energy_file().chmod(0o400)
    (dev / "dev").mkdir()
    (dev / "dev" / "i2c-1").write_text("")
    (dev / "dev" / "i2c-1").chmod(0o600)
    user = boards3.nosudo_user
    nano_c, orin_c, rapl_c, ina_c = energy_on(boards3, tmp_path, ssh_session_keys.private, "wrist", [
        (meter("jetson"), {"root": str(nano)}), (meter("jetson"), {"root": str(orin)}),
        (meter("rapl"), {"root": str(rapl)}), (meter("ina219"), {"root": str(dev)})], user=user, python=SYSTEM_PY)
    e = nano_c["energy"]
    assert not e.ok and e.detail.startswith(f"cannot read the INA3221 rail labels as {user}: ") and \
        f"{nano}/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/rail_name_0" in e.detail and \
        "(permission denied)" in e.detail, e
    assert "run the agent as root" in e.fix and "sudo chmod o+r " in e.fix and "rail_name_*" in e.fix
    e = orin_c["energy"]
    hwmon = orin / "sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"     # as the driver's link shows it
    mv, ma = hwmon / "in1_input", hwmon / "curr1_input"
    assert not e.ok and e.detail == f"VDD_IN (hwmon): cannot read {mv}, {ma} as {user} (permission denied)", e
    assert e.fix.endswith(f"sudo chmod o+r {mv} {ma}")
    e = rapl_c["energy"]
    counter = rapl / "sys/class/powercap/intel-rapl:0/energy_uj"
    assert not e.ok and e.detail == f"cannot read {counter} as {user}: permission denied"
    assert "CVE-2020-8694" in e.fix and "root" in e.fix
    e = ina_c["i2c"]
    assert not e.ok and e.detail == f"{dev}/dev/i2c-1 is not readable and writable by {user} (-rw------- root:root)"
    assert e.fix.startswith(f"sudo usermod -aG i2c {user}") and "energy" not in ina_c
