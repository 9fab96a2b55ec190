"""Tests of testbed.config: the shipped YAML files load, bad files fail with file/line/key."""
from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from types import MappingProxyType

import pytest

from testbed.config import (
    BoardSpec,
    DatasetSpec,
    EnergySpec,
    Experiment,
    FaultSpec,
    Inventory,
    check_compatible,
    load_experiment,
    load_inventory,
    with_overrides,
)
from testbed.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
LAB_INVENTORY = ROOT / "inventory.yaml"
DEMO_INVENTORY = ROOT / "testbed" / "demo" / "inventory.yaml"
DEMO_EXPERIMENT = ROOT / "testbed" / "demo" / "experiment.yaml"

GOOD_INVENTORY = """\
bench: t1
boards:
  wrist:
    role: wearable
    kind: sim
  chest:
    role: wearable
    kind: sim
  edge:
    role: edge
    kind: sim
links:
  - from: wrist
    to: edge
    profile: hbc-1312k
  - from: chest
    to: edge
    profile: hbc-656k
"""

GOOD_EXPERIMENT = """\
name: t
dataset:
  name: digits
model:
  students: 2
  width: 8
  out_dim: 4
train:
  epochs: 1
  batch_size: 32
  lr: 0.01
assignment:
  wrist: 0
  chest: 1
  edge: merge
run:
  samples: 10
  rate_hz: 5
  deadline_ms: 100
  timeout_ms: 500
faults:
  - kind: outage
    link: chest-edge
    at_s: 1
    duration_s: 0.5
  - kind: kill
    board: wrist
    at_s: 2
"""


def write(tmp_path: Path, text: str, name: str = "inventory.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the nth line containing ``needle``."""
    hits = [i for i, ln in enumerate(textwrap.dedent(text).splitlines(), 1) if needle in ln]
    return hits[nth - 1]


def expect_error(load, path: Path, *, line: int | None, key: str | None,
                 phrase: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(path)
    err = info.value
    assert err.file == str(path)
    assert err.line == line, str(err)
    assert err.key == key, str(err)
    assert phrase in err.detail, str(err)
    assert str(err).startswith(f"{path}:{line}: " if line is not None else f"{path}: ")
    return err


# --------------------------------------------------------------------------- valid files


def test_lab_inventory_loads() -> None:
    inv = load_inventory(LAB_INVENTORY)
    assert inv.bench == "lab1"
    assert inv.broker.mode == "external"
    assert inv.broker.host == "192.168.50.10" and inv.broker.port == 1883
    assert list(inv.boards) == ["wrist", "chest", "ankle", "edge"]
    assert inv.edge.name == "edge" and inv.edge.kind == "jetson-orin-nano"
    assert inv.edge.runtime == "torch"
    assert [b.name for b in inv.wearables] == ["wrist", "chest", "ankle"]
    assert all(b.runtime == "tflite" and b.connect == "ssh" and b.user == "pi"
               for b in inv.wearables)
    wrist = inv.link_from("wrist")
    assert wrist.name == "wrist-edge" and wrist.dst == "edge"
    assert wrist.transport.type == "serial"
    assert wrist.transport.settings["port"] == "/dev/ttyAMA0"
    assert wrist.transport.settings["baud"] == 2_000_000
    assert inv.link("chest-edge").transport.type == "ble"
    ankle = inv.link("ankle-edge")
    assert ankle.transport.type == "mqtt"
    assert ankle.profile.delay_s == pytest.approx(0.015)
    assert ankle.profile.rate_bps == pytest.approx(328_000, rel=0.01)
    assert wrist.profile.rate_bps == pytest.approx(1_312_500, rel=0.01)


def test_demo_inventory_loads() -> None:
    inv = load_inventory(DEMO_INVENTORY)
    assert inv.bench == "demo"
    assert inv.broker.mode == "embedded" and inv.broker.host is None and inv.broker.port is None
    model = EnergySpec(meter="model", settings=MappingProxyType(
        {"active_w": None, "idle_w": None, "radio_w": None, "rate_hz": 50.0}))   # the demo models every board
    assert inv.boards["wrist"] == BoardSpec(name="wrist", role="wearable", kind="sim",
                                            connect="local", runtime="torch", energy=model)
    assert inv.edge == BoardSpec(name="edge", role="edge", kind="sim", connect="local",
                                 runtime="torch", energy=model)
    assert [l.name for l in inv.links] == ["wrist-edge", "chest-edge", "ankle-edge"]
    # one transport per wearable, each made locally by the harness
    assert [(l.transport.type, dict(l.transport.settings)) for l in inv.links] == [
        ("serial", {"port": "pty", "baud": 3000000}), ("ble", {"hci": "virtual"}), ("mqtt", {})]
    assert all(l.encoding == "f32" and l.compression == "none" for l in inv.links)
    assert inv.line_of("boards.chest.kind") == line_of(DEMO_INVENTORY.read_text(), "kind", 2)


def test_demo_experiment_loads_and_fits_demo_inventory() -> None:
    exp = load_experiment(DEMO_EXPERIMENT)
    assert exp.name == "demo" and exp.seed == 0
    assert exp.dataset.name == "fashion-mnist"
    assert exp.dataset.path == Path("/usr/share/datasets/fashion-mnist")
    # widths and learning rates are tuned for the demo's time budget; only the shape is pinned
    assert (exp.model.family, exp.model.students) == ("cnn-students", 3)
    assert exp.model.width >= 1 and exp.model.out_dim >= 1 and exp.train.epochs >= 1
    assert dict(exp.assignment) == {"wrist": 0, "chest": 1, "ankle": 2, "edge": "merge"}
    assert exp.run.samples == 500 and exp.run.rate_hz == 20.0
    assert exp.run.deadline_ms == 300 and exp.run.timeout_ms == 2000
    assert exp.run.output == Path("runs")
    assert exp.faults == (FaultSpec(kind="outage", at_s=10, link="ankle-edge",
                                    duration_s=5),)
    check_compatible(exp, load_inventory(DEMO_INVENTORY))


def test_minimal_files_and_defaults(tmp_path: Path) -> None:
    inv = load_inventory(write(tmp_path, GOOD_INVENTORY))
    assert isinstance(inv, Inventory)
    assert inv.broker.mode == "embedded"
    assert inv.link_from("chest").name == "chest-edge"
    assert inv.link_from(inv.boards["wrist"]).name == "wrist-edge"
    with pytest.raises(KeyError):
        inv.link_from("edge")
    with pytest.raises(KeyError):
        inv.link("nope")
    b = inv.boards["wrist"]
    assert (b.connect, b.runtime, b.energy, b.python, b.host) == \
        ("local", "torch", None, "python3", None)

    exp = load_experiment(write(tmp_path, GOOD_EXPERIMENT, "experiment.yaml"))
    assert isinstance(exp, Experiment)
    assert exp.dataset == DatasetSpec(name="digits", path=None)
    assert exp.model.family == "cnn-students" and exp.seed == 0
    assert exp.faults[1] == FaultSpec(kind="kill", at_s=2.0, board="wrist")
    check_compatible(exp, inv)


def test_rpi_defaults(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace(
        "  wrist:\n    role: wearable\n    kind: sim\n",
        "  wrist:\n    role: wearable\n    kind: rpi4\n    host: w.local\n")
    b = load_inventory(write(tmp_path, text)).boards["wrist"]
    assert (b.connect, b.runtime, b.port, b.workdir) == ("ssh", "tflite", 22, "~/hbc-testbed")


def test_with_overrides() -> None:
    exp = load_experiment(DEMO_EXPERIMENT)
    new = with_overrides(exp, samples=20, rate_hz=50, output="/tmp/x", faults=[],
                         dataset="digits", train={"epochs": 1, "subset": 256})
    assert new.run.samples == 20 and new.run.rate_hz == 50.0 and new.run.output == Path("/tmp/x")
    assert new.run.deadline_ms == exp.run.deadline_ms
    assert new.faults == () and new.dataset == DatasetSpec("digits", None)
    assert new.train.epochs == 1 and new.train.subset == 256 and new.train.lr == exp.train.lr
    assert new.line_of("assignment.edge") == exp.line_of("assignment.edge")
    assert with_overrides(exp) == exp
    with pytest.raises(ConfigError) as info:
        with_overrides(exp, samples=0)
    assert info.value.key == "run.samples" and "expected an integer from 1 to 100000" in info.value.detail


# --------------------------------------------------------------------------- bad inventories


def test_missing_file(tmp_path: Path) -> None:
    expect_error(load_inventory, tmp_path / "nope.yaml", line=None, key=None,
                 phrase="file not found; expected an inventory")


def test_energy_a_name_or_a_mapping_checked_by_the_meter_rules(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    role: wearable\n    kind: sim\n  chest:",
                                  "    role: wearable\n    kind: sim\n    energy: model\n  chest:")
    text = text.replace("    role: edge\n", "    role: edge\n    energy: {meter: ina226, address: 0x41, "
                                            "shunt_ohms: 0.01, averaging: 4}\n")
    inv = load_inventory(write(tmp_path, text))
    wrist, edge = inv.boards["wrist"].energy, inv.boards["edge"].energy
    assert wrist.meter == "model" and wrist.modelled and wrist.settings["rate_hz"] == 50.0
    assert edge.meter == "ina226" and not edge.modelled
    # conversion time unset: fitted so that one cycle (2 x 1100 us x 4) fills most of the 10 ms period
    assert (edge.settings["address"], edge.settings["shunt_ohms"], edge.settings["conversion_us"]) == (0x41, 0.01, 1100)
    assert inv.boards["chest"].energy is None

    bad = text.replace("address: 0x41", "address: 0x20")
    expect_error(load_inventory, write(tmp_path, bad), line=line_of(bad, "0x20"), key="boards.edge.energy.address",
                 phrase="expected a 7-bit I2C address from 0x40 to 0x4F")
    bad = text.replace("averaging: 4", "averaging: 1024, conversion_us: 1100")
    expect_error(load_inventory, write(tmp_path, bad), line=line_of(bad, "averaging"),
                 key="boards.edge.energy.rate_hz", phrase="expected at most 0.443892")
    bad = text.replace("meter: ina226", "meter: ina3221")
    expect_error(load_inventory, write(tmp_path, bad), line=line_of(bad, "ina3221"), key="boards.edge.energy.meter",
                 phrase="expected one of ina219, ina226, ina260, jetson, model, pi5-pmic, rapl")
    bad = text.replace("energy: model", "energy: [model]")
    expect_error(load_inventory, write(tmp_path, bad), line=line_of(bad, "[model]"), key="boards.wrist.energy",
                 phrase="expected none, a meter name")


def test_yaml_syntax_error(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    kind: sim\n  chest:", "    kind: sim\n   chest: [\n  x:")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    err = info.value
    assert err.file == str(path) and err.key is None
    assert "invalid YAML" in err.detail
    assert err.line is not None and 4 <= err.line <= 8


def test_yaml_syntax_error_line(tmp_path: Path) -> None:
    text = "bench: t1\nboards:\n  wrist:\n    role: wearable: edge\n"
    expect_error(load_inventory, write(tmp_path, text), line=4, key=None,
                 phrase="invalid YAML syntax: mapping values are not allowed here")


def test_tabs_hint(tmp_path: Path) -> None:
    text = "bench: t1\nboards:\n\twrist: {}\n"
    err = expect_error(load_inventory, write(tmp_path, text), line=3, key=None,
                       phrase="invalid YAML")
    assert "expected indentation with spaces, not tabs" in err.detail


def test_unknown_key(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    role: edge\n", "    role: edge\n    rutime: torch\n")
    err = expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "rutime"),
                       key="boards.edge.rutime", phrase="unknown key; expected one of role, kind")
    assert "did you mean 'runtime'?" in err.detail


def test_unknown_top_level_key(tmp_path: Path) -> None:
    text = GOOD_INVENTORY + "extra: 1\n"
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "extra"),
                 key="extra", phrase="unknown key; expected one of bench, broker, ssh, boards, links")


def test_bad_role(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    role: wearable\n    kind: sim\n  edge",
                                  "    role: wearble\n    kind: sim\n  edge")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "wearble"),
                 key="boards.chest.role", phrase="expected one of wearable, edge; got 'wearble'")


def test_missing_role_names_parent_line(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("  chest:\n    role: wearable\n", "  chest:\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "chest:"),
                 key="boards.chest.role",
                 phrase="required key missing; expected one of wearable, edge")


def test_two_edges(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("  chest:\n    role: wearable\n", "  chest:\n    role: edge\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "role: edge", 2),
                 key="boards.edge.role", phrase="expected exactly one board with role edge")


def test_link_to_unknown_board(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("  - from: chest\n    to: edge\n",
                                  "  - from: chest\n    to: egde\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "egde"),
                 key="links[1].to",
                 phrase="unknown board; expected one of wrist, chest, edge; got 'egde'")


def test_wearable_without_link(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.split("  - from: chest")[0]
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "links:"),
                 key="links", phrase="expected exactly one link from every wearable")


def test_serial_without_port(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace(
        "  - from: chest\n    to: edge\n",
        "  - from: chest\n    to: edge\n    transport:\n      type: serial\n      baud: 115200\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "transport:"),
                 key="links[1].transport.port",
                 phrase="required key missing; expected a device path such as /dev/ttyAMA0")


def test_serial_bad_baud(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace(
        "  - from: chest\n    to: edge\n",
        "  - from: chest\n    to: edge\n    transport:\n      type: serial\n"
        "      port: /dev/ttyUSB0\n      baud: -3\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "baud"),
                 key="links[1].transport.baud", phrase="expected a positive int; got -3")


def test_bad_profile_preset(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("profile: hbc-656k", "profile: hbc-999k")
    err = expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "hbc-999k"),
                       key="links[1].profile", phrase="hbc-999k")
    for known in ("hbc-164k", "hbc-328k", "hbc-656k", "hbc-1312k"):
        assert known in err.detail


def test_inline_profile_negative_rate(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    profile: hbc-1312k\n",
                                  "    profile:\n      rate_bps: -5\n      delay_ms: 1\n")
    err = expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "rate_bps"),
                       key="links[0].profile.rate_bps", phrase="expected a number > 0")
    assert "-5" in err.detail


def test_inline_profile_missing_rate_cites_profile_line(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    profile: hbc-1312k\n",
                                  "    profile:\n      delay_ms: 1\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "profile:"),
                 key="links[0].profile.rate_bps", phrase="expected a number > 0")


def test_inline_profile_bad_preset_and_outage(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    profile: hbc-1312k\n",
                                  "    profile:\n      preset: hbc-1m\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "preset:"),
                 key="links[0].profile.preset", phrase="expected one of hbc-164k")
    text = GOOD_INVENTORY.replace(
        "    profile: hbc-1312k\n",
        "    profile:\n      preset: ideal\n      outages:\n        - {at_s: 1, duration_s: 2}\n"
        "        - at_s: 5\n          duration_s: 0\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "duration_s: 0"),
                 key="links[0].profile.outages[1].duration_s", phrase="expected a number > 0")


def test_ssh_host_required(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("  wrist:\n    role: wearable\n    kind: sim\n",
                                  "  wrist:\n    role: wearable\n    kind: rpi4\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "wrist:"),
                 key="boards.wrist.host", phrase="required key missing; expected a host name")


def test_duplicate_key(tmp_path: Path) -> None:
    text = GOOD_INVENTORY.replace("    role: edge\n", "    role: edge\n    role: edge\n")
    expect_error(load_inventory, write(tmp_path, text), line=line_of(text, "role: edge", 2),
                 key="boards.edge.role", phrase="duplicate key (first given at line")


# --------------------------------------------------------------------------- bad experiments


def load_checked(inv_path: Path):
    def load(path: Path) -> Experiment:
        exp = load_experiment(path)
        check_compatible(exp, load_inventory(inv_path))
        return exp
    return load


def test_assignment_to_unknown_board(tmp_path: Path) -> None:
    inv = write(tmp_path, GOOD_INVENTORY)
    text = GOOD_EXPERIMENT.replace("  chest: 1\n", "  chset: 1\n")
    expect_error(load_checked(inv), write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "chset"), key="assignment.chset",
                 phrase="unknown board; expected one of wrist, chest, edge")


def test_merge_on_wearable(tmp_path: Path) -> None:
    inv = write(tmp_path, GOOD_INVENTORY)
    text = GOOD_EXPERIMENT.replace("  wrist: 0\n  chest: 1\n  edge: merge\n",
                                   "  edge: 0\n  chest: 1\n  wrist: merge\n")
    expect_error(load_checked(inv), write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "edge: 0"), key="assignment.edge",
                 phrase="expected 'merge' for the edge board; got 0")


def test_duplicated_student_index(tmp_path: Path) -> None:
    text = GOOD_EXPERIMENT.replace("  chest: 1\n", "  chest: 0\n")
    expect_error(load_experiment, write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "chest: 0"), key="assignment.chest",
                 phrase="expected a distinct student index per board; 0 is already assigned "
                        "to 'wrist'")


def test_student_index_out_of_range(tmp_path: Path) -> None:
    text = GOOD_EXPERIMENT.replace("  chest: 1\n", "  chest: 2\n")
    expect_error(load_experiment, write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "chest: 2"), key="assignment.chest",
                 phrase="expected a student index 0..1 or 'merge'; got 2")


def test_fault_on_unknown_link(tmp_path: Path) -> None:
    inv = write(tmp_path, GOOD_INVENTORY)
    text = GOOD_EXPERIMENT.replace("link: chest-edge", "link: ankle-edge")
    expect_error(load_checked(inv), write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "ankle-edge"), key="faults[0].link",
                 phrase="unknown link; expected one of wrist-edge, chest-edge")


def test_timeout_not_above_deadline(tmp_path: Path) -> None:
    text = GOOD_EXPERIMENT.replace("timeout_ms: 500", "timeout_ms: 100")
    expect_error(load_experiment, write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "timeout_ms"), key="run.timeout_ms",
                 phrase="expected a number > deadline_ms (100); got 100")


def test_fault_unknown_key_for_kind(tmp_path: Path) -> None:
    text = GOOD_EXPERIMENT.replace("    board: wrist\n", "    board: wrist\n    duration_s: 1\n")
    expect_error(load_experiment, write(tmp_path, text, "experiment.yaml"),
                 line=line_of(text, "duration_s", 2), key="faults[1].duration_s",
                 phrase="unknown key; expected one of kind, board, at_s")


def test_missing_section_names_top_line(tmp_path: Path) -> None:
    text = GOOD_EXPERIMENT.split("run:")[0]
    expect_error(load_experiment, write(tmp_path, text, "experiment.yaml"), line=1, key="run",
                 phrase="required key missing; expected a mapping with samples")


def test_float_accepts_exponent_text(tmp_path: Path) -> None:
    text = GOOD_EXPERIMENT.replace("lr: 0.01", "lr: 3e-3")
    assert load_experiment(write(tmp_path, text, "experiment.yaml")).train.lr == 0.003


def test_inventory_tables_render() -> None:
    from rich.console import Console

    from testbed.inventory_view import inventory_tables

    tables = inventory_tables(load_inventory(LAB_INVENTORY))
    assert len(tables) == 3   # broker login, boards, links
    console = Console(record=True, width=160, color_system=None)
    for t in tables:
        console.print(t)
    out = console.export_text()
    for text in ("wrist", "jetson-orin-nano", "pi@wrist.local", "tflite", "ina219",
                 "wrist→edge", "serial /dev/ttyAMA0 @2000000", "hbc-328k", "1312.5", "15"):
        assert text in out, text


def test_an_override_obeys_the_files_rules_and_names_its_source() -> None:
    exp = load_experiment(DEMO_EXPERIMENT)
    with pytest.raises(ConfigError) as info:
        with_overrides(exp, rate_hz=-1, samples=5, sources={"run.rate_hz": "--rate", "run.samples": "--samples"})
    assert (info.value.file, info.value.line, info.value.key) == ("--rate", None, "run.rate_hz")
    assert str(info.value) == "--rate: run.rate_hz: expected a number > 0 and <= 1000; got -1"
    with pytest.raises(ConfigError) as info:   # a source not named: <override>
        with_overrides(exp, faults=[FaultSpec(kind="outage", at_s=1, link="ankle-edge", duration_s=0)])
    assert (info.value.file, info.value.key) == ("<override>", "faults[0].duration_s")
    assert "expected a number > 0; got 0" in info.value.detail
    with pytest.raises(ConfigError) as info:
        with_overrides(exp, faults=[{"kind": "kill", "board": "wrist", "at_s": 1, "link": "x"}],
                       sources={"faults": "--faults"})
    assert (info.value.file, info.value.key) == ("--faults", "faults[0].link")
    assert "unknown key; expected one of kind, board, at_s" in info.value.detail
    with pytest.raises(ConfigError) as info:
        with_overrides(exp, train={"epoch": 3}, sources={"train.epochs": "--epochs"})
    assert (info.value.file, info.value.key) == ("<override>", "train.epoch")
    assert "did you mean 'epochs'?" in info.value.detail


def test_overrides_keep_what_they_do_not_touch() -> None:
    exp = load_experiment(DEMO_EXPERIMENT)
    new = with_overrides(exp, train={"subset": 100}, dataset="digits")
    assert new.train == dataclasses.replace(exp.train, subset=100)
    assert with_overrides(new, train={"subset": None}).train == exp.train
    assert new.run == exp.run and new.faults == exp.faults and new.dataset == DatasetSpec("digits", None)
    assert with_overrides(new, dataset="fashion-mnist").dataset == exp.dataset
    assert with_overrides(exp, output="~/r").run.output == Path("~/r").expanduser()
    kill = FaultSpec(kind="kill", at_s=3, board="chest")
    assert with_overrides(exp, faults=[kill]).faults == (kill,)


def test_a_train_override_on_a_partition_experiment_is_refused() -> None:
    exp = load_experiment(ROOT / "examples" / "partition" / "resilient.yaml")
    with pytest.raises(ConfigError) as info:
        with_overrides(exp, train={"epochs": 1}, sources={"train.epochs": "--epochs"})
    assert (info.value.file, info.value.key) == ("--epochs", "train.epochs")
    assert "expected no train override" in info.value.detail


def test_a_bad_override_on_the_command_line_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from testbed.cli import main

    code = main(["run", str(DEMO_EXPERIMENT), "--inventory", str(DEMO_INVENTORY), "--samples", "0", "--headless"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "run.samples: expected an integer from 1 to 100000; got 0" in err
