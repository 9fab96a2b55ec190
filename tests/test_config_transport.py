"""A link's transport settings: checked at ``testbed inventory check`` by the rule the board applies.

The inventory reader and the transport constructors share ``nodes.transport_settings``, so a
key typo or a bad value fails on the laptop with file, line and key, and the same settings fail
the same way (same key) when a board constructs the transport.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import DEMO_INVENTORY
from nodes.transport_settings import LOCAL_PAIR, PER_END, SCHEMAS, SettingError, check_file_settings, end_settings
from testbed.cli import main
from testbed.config import load_inventory
from testbed.errors import ConfigError

# the demo inventory's links: wrist-edge serial (links[0]), chest-edge ble (links[1]), ankle-edge mqtt (links[2])
DEMO_LINKS = {"serial": ("    transport: {type: serial, port: pty, baud: 3000000}\n", 0),
              "ble": ("    transport: {type: ble, hci: virtual}\n", 1),
              "mqtt": ("    transport: {type: mqtt}\n", 2)}


def with_transport(tmp_path: Path, kind: str, lines: str) -> tuple[Path, int]:
    """The demo inventory with the ``kind`` link's transport replaced by block ``lines``."""
    old, index = DEMO_LINKS[kind]
    text = DEMO_INVENTORY.read_text()
    assert old in text
    path = tmp_path / "inventory.yaml"
    path.write_text(text.replace(old, "    transport:\n" + lines, 1))
    return path, index


def line_of(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def check_cli(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``testbed inventory check FILE`` through the real CLI entry point."""
    code = main(["inventory", "check", str(path)])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------ through the CLI


def test_a_ble_key_typo_fails_inventory_check_with_file_line_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, i = with_transport(tmp_path, "ble", "      type: ble\n      hci: virtual\n      conect_timeout_s: 5\n")
    code, err = check_cli(path, capsys)
    assert code == 2
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"testbed: error: {path}:{line_of(path, 'conect_timeout_s')}: "
                          f"links[{i}].transport.conect_timeout_s: unknown ble setting; expected one of ")
    assert "(did you mean 'connect_timeout_s'?)" in err


def test_an_unknown_mqtt_key_fails_inventory_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, i = with_transport(tmp_path, "mqtt", "      type: mqtt\n      qso: 1\n")
    code, err = check_cli(path, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert f"{path}:{line_of(path, 'qso')}: links[{i}].transport.qso: unknown mqtt setting" in err
    assert "(did you mean 'qos'?)" in err


def test_an_mqtt_value_of_the_wrong_type_fails_inventory_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, i = with_transport(tmp_path, "mqtt", "      type: mqtt\n      max_queued: lots\n")
    code, err = check_cli(path, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert (f"{path}:{line_of(path, 'max_queued')}: links[{i}].transport.max_queued: "
            "expected an int >= 0 (0: no limit); got 'lots'") in err


def test_valid_transport_settings_pass_inventory_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = with_transport(tmp_path, "ble", "      type: ble\n      hci: virtual\n      mtu: 185\n"
                                              "      connect_timeout_s: 5\n      reconnect_delay_s: 0\n")
    assert main(["inventory", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


# ------------------------------------------------------------------------------ what the reader keeps


def test_the_settings_a_file_sets_are_kept_checked_and_nothing_else(tmp_path: Path) -> None:
    path, _ = with_transport(tmp_path, "ble", "      type: ble\n      hci: virtual\n      connect_timeout_s: 5\n"
                                              "      address: null\n")
    settings = dict(load_inventory(path).link("chest-edge").transport.settings)
    assert settings == {"hci": "virtual", "connect_timeout_s": 5.0}   # null means "not set"


# ------------------------------------------------------------------------------ every kind of mistake

@pytest.mark.parametrize(("kind", "lines", "key", "phrase"), [
    ("ble", "      type: ble\n      hci: virtual\n      mtu: 600\n", "mtu", "expected an int in [12, 517]; got 600"),
    ("ble", "      type: ble\n      hci: virtual\n      reconnect_delay_s: -1\n", "reconnect_delay_s",
     "expected a number of seconds >= 0; got -1"),
    ("ble", "      type: ble\n      hci: virtual\n      address: AA:BB:CC\n", "address",
     "expected a BLE address of six hex pairs"),
    ("ble", "      type: ble\n      stack: zephyr\n", "stack", "expected one of bumble, bluez; got 'zephyr'"),
    ("ble", "      type: ble\n      stack: bluez\n      mtu: 185\n", "mtu",
     "applies to stack 'bumble' only (BlueZ negotiates the MTU itself)"),
    ("ble", "      type: ble\n      hci: virtual\n      link: x\n", "link", "set by the harness"),
    ("mqtt", "      type: mqtt\n      qos: 2\n", "qos", "expected 0 or 1; got 2"),
    ("mqtt", "      type: mqtt\n      topic: tb/+/data\n", "topic", "without wildcards"),
    ("mqtt", "      type: mqtt\n      host: 10.0.0.1\n", "host", "set by the harness (the run's broker"),
    ("mqtt", "      type: mqtt\n      receive: true\n", "receive", "set by the harness (the agent sets it"),
    ("serial", "      type: serial\n      port: pty\n      baud: 9600\n      xonxoff: true\n", "xonxoff",
     "expected false (not supported: software flow control"),
    ("serial", "      type: serial\n      port: pty\n      baud: 9600\n      rtscts: yes please\n", "rtscts",
     "expected true or false; got 'yes please'"),
])
def test_a_bad_setting_names_file_line_key(tmp_path: Path, kind: str, lines: str, key: str, phrase: str) -> None:
    path, i = with_transport(tmp_path, kind, lines)
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    err = info.value
    assert (err.file, err.line, err.key) == (str(path), line_of(path, f" {key}:"), f"links[{i}].transport.{key}")
    assert phrase in err.detail, str(err)


def test_a_missing_required_setting_points_at_the_transport(tmp_path: Path) -> None:
    path, i = with_transport(tmp_path, "serial", "      type: serial\n      port: /dev/ttyAMA0\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    transport_lines = [n for n, ln in enumerate(path.read_text().splitlines(), 1)
                       if ln.strip().startswith("transport")]
    assert (info.value.key, info.value.line) == (f"links[{i}].transport.baud", transport_lines[i])
    assert "required key missing; expected a positive int" in info.value.detail


def test_a_bumble_link_without_a_radio_fails_inventory_check(tmp_path: Path) -> None:
    """stack bumble (the default when none is named) needs hci; a board would refuse it at start."""
    for lines in ("      type: ble\n      adapter: hci0\n", "      type: ble\n      stack: bumble\n"):
        path, i = with_transport(tmp_path, "ble", lines)
        with pytest.raises(ConfigError, match=r"links\[1\]\.transport: .*needs exactly one of 'hci'"):
            load_inventory(path)
    path, _ = with_transport(tmp_path, "ble", "      type: ble\n      stack: bluez\n      adapter: hci0\n")
    assert load_inventory(path).links[1].transport.settings["stack"] == "bluez"


# ------------------------------------------------------------------------------ one rule, both sides


# what a board's end needs besides the setting under test, as keyword arguments and as inventory lines
BOARD_BASE: dict[str, dict[str, Any]] = {
    "ble": {"hci": "usb:0", "address": "F0:00:00:00:00:01"},
    "serial": {"port": "/dev/ttyAMA0", "baud": 9600},
    "mqtt": {"host": "127.0.0.1", "port": 1883, "topic": "t"},
}
FILE_BASE = {"ble": "      type: ble\n      hci: virtual\n", "serial": "      type: serial\n      port: pty\n",
             "mqtt": "      type: mqtt\n"}


def _board_error(kind: str, key: str, value: object) -> SettingError:
    """What the board's constructor says about ``key: value`` (constructing opens nothing)."""
    from nodes.ble_transport import BleTransport
    from nodes.serial_transport import SerialTransport
    from nodes.transport import MqttTransport

    cls: Any = {"ble": BleTransport, "serial": SerialTransport, "mqtt": MqttTransport}[kind]
    with pytest.raises(SettingError) as info:
        cls(receive=False, **{**BOARD_BASE[kind], key: value})
    return info.value


@pytest.mark.parametrize(("kind", "key", "value", "yaml_value"), [
    ("ble", "connect_timeout_s", 0, "0"),
    ("ble", "mtu", 8, "8"),
    ("ble", "name", "", "''"),
    ("mqtt", "qos", 2, "2"),
    ("mqtt", "max_queued", -1, "-1"),
    ("serial", "baud", 0, "0"),
    ("serial", "write_timeout", "soon", "soon"),
])
def test_the_board_and_the_inventory_refuse_the_same_value_for_the_same_key(
        tmp_path: Path, kind: str, key: str, value: object, yaml_value: str) -> None:
    board = _board_error(kind, key, value)
    extra = "      baud: 9600\n" if kind == "serial" and key != "baud" else ""
    path, i = with_transport(tmp_path, kind, FILE_BASE[kind] + extra + f"      {key}: {yaml_value}\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert board.key == key and info.value.key == f"links[{i}].transport.{key}"
    assert board.detail == info.value.detail


# ------------------------------------------------------------------------------ per-end settings (edge_<key>)


def test_edge_port_gives_the_edge_its_own_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, i = with_transport(tmp_path, "serial", "      type: serial\n      port: /dev/ttyAMA0\n"
                                                 "      edge_port: /dev/ttyTHS1\n      baud: 2000000\n")
    assert main(["inventory", "check", str(path)]) == 0, capsys.readouterr().err
    settings = load_inventory(path).links[i].transport.settings
    assert dict(settings) == {"port": "/dev/ttyAMA0", "edge_port": "/dev/ttyTHS1", "baud": 2000000}
    assert end_settings("serial", settings, "tx") == {"port": "/dev/ttyAMA0", "baud": 2000000}
    assert end_settings("serial", settings, "rx") == {"port": "/dev/ttyTHS1", "baud": 2000000}


def test_without_an_edge_value_both_ends_get_the_same_settings() -> None:
    for kind, settings in (("serial", {"port": "/dev/ttyUSB0", "baud": 9600, "rtscts": True}),
                           ("ble", {"stack": "bluez", "adapter": "hci0", "address": "F0:00:00:00:00:01"}),
                           ("mqtt", {"qos": 1})):
        assert end_settings(kind, settings, "tx") == end_settings(kind, settings, "rx") == settings
    with pytest.raises(ValueError, match="unknown link end 'edge'; expected one of tx, rx"):
        end_settings("serial", {"port": "/dev/ttyUSB0", "baud": 9600}, "edge")


def test_ble_controllers_are_per_end() -> None:
    settings = check_file_settings("ble", {"hci": "usb:0", "edge_hci": "usb:1", "address": "F0:00:00:00:00:01"})
    assert end_settings("ble", settings, "tx") == {"hci": "usb:0", "address": "F0:00:00:00:00:01"}
    assert end_settings("ble", settings, "rx") == {"hci": "usb:1", "address": "F0:00:00:00:00:01"}
    settings = check_file_settings("ble", {"stack": "bluez", "adapter": "hci0", "edge_adapter": "hci1",
                                           "name": "x"})
    assert end_settings("ble", settings, "rx")["adapter"] == "hci1"


def test_the_per_end_table_names_user_settings_and_the_fabric_agrees_on_local_pairs() -> None:
    from testbed import fabric

    assert set(PER_END) == set(SCHEMAS)
    assert all(k in SCHEMAS[t].user_keys for t, keys in PER_END.items() for k in keys)
    assert LOCAL_PAIR["serial"][:2] == ("port", fabric.PTY) and LOCAL_PAIR["ble"][:2] == ("hci", fabric.VIRTUAL)


@pytest.mark.parametrize(("kind", "lines", "key", "phrase"), [
    ("serial", "      type: serial\n      port: /dev/ttyAMA0\n      baud: 9600\n      edge_baud: 115200\n",
     "edge_baud", "baud is the same on both ends of a serial link; expected no edge_baud "
                  "(the per-end settings of serial: edge_port)"),
    ("serial", "      type: serial\n      port: /dev/ttyAMA0\n      baud: 9600\n      edge_rtscts: true\n",
     "edge_rtscts", "rtscts is the same on both ends of a serial link"),
    ("serial", "      type: serial\n      port: /dev/ttyAMA0\n      baud: 9600\n      edge_prot: /dev/ttyTHS1\n",
     "edge_prot", "unknown serial setting; expected one of port, baud, rtscts, xonxoff, max_frame, "
                  "write_timeout, edge_port (did you mean 'edge_port'?)"),
    ("serial", "      type: serial\n      port: /dev/ttyAMA0\n      baud: 9600\n      edge_port: ''\n",
     "edge_port", "expected a device path such as /dev/ttyAMA0; got ''"),
    ("serial", "      type: serial\n      port: pty\n      edge_port: /dev/ttyTHS1\n      baud: 9600\n",
     "edge_port", "port: pty makes both ends (a local socat pty pair); expected no edge_port with port: pty"),
    ("serial", "      type: serial\n      port: /dev/ttyAMA0\n      edge_port: pty\n      baud: 9600\n",
     "edge_port", "'pty' is only for port"),
    ("mqtt", "      type: mqtt\n      edge_port: 1884\n", "edge_port",
     "mqtt links have no per-end settings (both ends share all); expected no edge_port"),
    ("ble", "      type: ble\n      hci: virtual\n      edge_hci: usb:0\n", "edge_hci",
     "hci: virtual makes both ends (bumble's virtual controllers); expected no edge_hci"),
    ("ble", "      type: ble\n      stack: bluez\n      adapter: hci0\n      edge_hci: usb:0\n", "edge_hci",
     "applies to stack 'bumble' only (BlueZ reaches its controller through the adapter); expected no hci "
     "with stack bluez (edge_hci is the edge's hci)"),
    ("ble", "      type: ble\n      hci: virtual\n      edge_mtu: 185\n", "edge_mtu",
     "mtu is the same on both ends of a ble link; expected no edge_mtu (the per-end settings of ble: "
     "edge_adapter, edge_hci)"),
])
def test_a_bad_per_end_setting_names_file_line_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    kind: str, lines: str, key: str, phrase: str) -> None:
    path, i = with_transport(tmp_path, kind, lines)
    code, err = check_cli(path, capsys)
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
    assert err.startswith(f"testbed: error: {path}:{line_of(path, f' {key}:')}: links[{i}].transport.{key}: "), err
    assert phrase in err, err


def test_an_edge_value_that_leaves_the_wearable_without_a_radio_says_which_end(tmp_path: Path) -> None:
    path, i = with_transport(tmp_path, "ble", "      type: ble\n      edge_hci: usb:0\n")
    with pytest.raises(ConfigError) as info:
        load_inventory(path)
    assert info.value.key == f"links[{i}].transport"
    assert "on the wearable's end: stack 'bumble' needs exactly one of 'hci'" in info.value.detail


def test_a_board_never_takes_an_edge_key() -> None:
    """end_settings strips them; one that reaches a board anyway is an unknown setting there."""
    from nodes.serial_transport import SerialTransport

    with pytest.raises(SettingError, match=r"unknown setting\(s\) 'edge_port'") as info:
        SerialTransport(port="/dev/ttyAMA0", baud=9600, receive=False,
                        edge_port="/dev/ttyTHS1")  # type: ignore[arg-type]
    assert info.value.key == "edge_port"


def test_the_lab_inventory_wires_the_pi_uart_to_the_jetson_uart(tmp_path: Path) -> None:
    """The repo's inventory.yaml: each end of the wrist-edge serial link gets its own board's UART."""
    from conftest import ROOT
    from testbed.fabric import LocalFabric

    inv = load_inventory(ROOT / "inventory.yaml")
    link = inv.link("wrist-edge")
    with LocalFabric(inventory=inv, workdir=tmp_path, broker_host="192.168.50.10", broker_port=1883) as fab:
        tx, rx = fab.endpoint(link, "tx"), fab.endpoint(link, "rx")
        ends = [fab.endpoint(lk, e) for lk in inv.links for e in ("tx", "rx")]
    assert (tx["type"], tx["port"], tx["baud"]) == ("serial", "/dev/ttyAMA0", 2000000)
    assert (rx["type"], rx["port"], rx["baud"]) == ("serial", "/dev/ttyTHS1", 2000000)
    assert not any(k.startswith("edge_") for end in ends for k in end)


def test_the_fabric_refuses_a_hand_built_pty_link_with_an_edge_port(tmp_path: Path) -> None:
    """The inventory refuses it with file:line:key; a LinkSpec built in code meets the fabric's check."""
    from dataclasses import replace
    from types import MappingProxyType

    from testbed.config import TransportSpec
    from testbed.errors import RunError
    from testbed.fabric import LocalFabric

    inv = load_inventory(DEMO_INVENTORY)
    bad = TransportSpec(type="serial", settings=MappingProxyType({"port": "pty", "edge_port": "/dev/ttyTHS1",
                                                                  "baud": 9600}))
    inv = replace(inv, links=(replace(inv.links[0], transport=bad),))
    with pytest.raises(RunError, match="link wrist-edge: port: pty makes both ends .*expected no edge_port"):
        with LocalFabric(inventory=inv, workdir=tmp_path, broker_host="127.0.0.1", broker_port=1883):
            pass
