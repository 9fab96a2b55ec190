"""`testbed link` (testbed/linkcmd.py): dry runs print the exact commands per board kind;
other transports are listed as user-space shaped; SSH without dry run is refused."""
from __future__ import annotations

from pathlib import Path

import pytest

from linkemu.errors import LinkError
from testbed.linkcmd import LinkCommandError, link_command
from testbed.remote.ssh import HostKeyError

INVENTORY = """\
bench: lab
boards:
  wrist: {role: wearable, kind: rpi4, connect: ssh, host: pi-wrist, user: pi, runtime: tflite}
  ankle: {role: wearable, kind: sim, connect: netns, runtime: tflite}
  chest: {role: wearable, kind: sim, connect: local, runtime: tflite}
  edge: {role: edge, kind: sim, connect: local, runtime: torch}
links:
  - {from: wrist, to: edge, transport: {type: mqtt}, profile: {preset: hbc-328k, delay_ms: 15}}
  - {from: ankle, to: edge, transport: {type: mqtt}, profile: hbc-164k}
  - {from: chest, to: edge, transport: {type: mqtt}, profile: hbc-656k}
"""


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path


def test_dry_run_prints_exact_commands(inventory, capsys):
    assert link_command("apply", inventory_path=inventory, dry_run=True, link=None) == 0
    out = capsys.readouterr().out.splitlines()
    assert ("ssh -p 22 -o BatchMode=yes pi@pi-wrist -- 'tc qdisc replace dev eth0 root netem "
            "delay 15000us rate 328125bit packetoverhead 0 cellsize 246 celloverhead 17'") in out
    assert ("ip netns exec tb-lab-ankle tc qdisc replace dev tb0 root netem rate 164062bit "
            "packetoverhead 0 cellsize 246 celloverhead 16") in out
    assert any("chest-edge" in line and "user space" in line for line in out)


def test_dry_run_clear_with_tbf(inventory, capsys):
    link_command("clear", inventory_path=inventory, dry_run=True, link="ankle-edge",
                 backend="tbf")
    assert "ip netns exec tb-lab-ankle tc qdisc del dev tb0 root" in capsys.readouterr().out


def test_refusals(inventory):
    with pytest.raises(HostKeyError, match="boards.wrist: no host key pinned .* testbed trust wrist"):
        link_command("apply", inventory_path=inventory, dry_run=False, link="wrist-edge")   # before any connection
    with pytest.raises(LinkCommandError, match="no link named 'nope'"):
        link_command("show", inventory_path=inventory, dry_run=True, link="nope")
    with pytest.raises(LinkCommandError, match="unknown action"):
        link_command("reset", inventory_path=inventory, dry_run=True, link=None)
    with pytest.raises(LinkError, match="link wrist-edge: .*delay_ms: the tbf backend cannot honour"):
        link_command("apply", inventory_path=inventory, dry_run=True, link="wrist-edge",
                     backend="tbf")
