"""The one shaping rule (testbed/shaping.py) that `testbed run` and `testbed link` share, and the
one place a LinkError becomes the CLI's one line with exit 2 (a real kernel refusal: the
namespace a kernel link is applied in is gone)."""
from __future__ import annotations

import subprocess

import pytest

from conftest import digits_experiment
from linkemu.errors import LinkError
from test_netns_boards import BENCH, _inventory, _left_over, needs_netns
from testbed import cli, orchestrator
from testbed.config import load_inventory
from testbed.errors import RunError
from testbed.linkcmd import link_command
from testbed.runstate import EventLog
from testbed.shaping import KERNEL_NETNS, KERNEL_SSH, USER, kernel_runner, plan_kernel_links, shaper_choices

MIXED = """\
bench: lab
boards:
  wrist: {role: wearable, kind: rpi4, connect: ssh, host: pi-wrist, user: pi, runtime: tflite}
  ankle: {role: wearable, kind: sim, connect: netns, runtime: tflite}
  chest: {role: wearable, kind: sim, connect: local, runtime: tflite}
  hip: {role: wearable, kind: sim, connect: netns, runtime: tflite}
  edge: {role: edge, kind: sim, connect: local, runtime: torch}
links:
  - {from: wrist, to: edge, transport: {type: mqtt}, profile: hbc-328k}
  - {from: ankle, to: edge, transport: {type: mqtt}, profile: hbc-164k}
  - {from: chest, to: edge, transport: {type: mqtt}, profile: hbc-656k}
  - {from: hip, to: edge, transport: {type: serial, port: /dev/ttyAMA0, baud: 921600}, profile: hbc-656k}
"""


def test_one_rule_for_every_link(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(MIXED)
    inv = load_inventory(path)
    choices = shaper_choices(inv)
    assert {name: c.kind for name, c in choices.items()} == {
        "wrist-edge": KERNEL_SSH, "ankle-edge": KERNEL_NETNS, "chest-edge": USER, "hip-edge": USER}
    assert choices["wrist-edge"].dev == "eth0" and choices["ankle-edge"].dev == "tb0"
    assert choices["chest-edge"].dev is None and "connect: local" in choices["chest-edge"].reason
    assert "transport serial" in choices["hip-edge"].reason
    assert kernel_runner(choices["ankle-edge"], bench="lab").full(["tc"]) == \
        ["ip", "netns", "exec", "tb-lab-ankle", "tc"]
    assert kernel_runner(choices["wrist-edge"], bench="lab").full(["tc"])[:5] == \
        ["ssh", "-p", "22", "-o", "BatchMode=yes"]
    with pytest.raises(ValueError, match="user space"):
        kernel_runner(choices["chest-edge"], bench="lab")
    # an ssh board's link is planned with its own kernel's probe (over SSH), refused without one
    caps = {"netem": True, "tbf": True, "htb": True, "u32": True, "nft": True, "errors": {}}
    with pytest.raises(RunError, match="link wrist-edge: MQTT from ssh board wrist.*needs an SSH session"):
        plan_kernel_links(inv, {lk.name: lk.profile for lk in inv.links}, caps=caps)
    asked: list[str] = []
    both = plan_kernel_links(inv, {lk.name: lk.profile for lk in inv.links}, caps=caps,
                             probe_ssh=lambda name: asked.append(name) or {**caps, "netem": False})
    assert asked == ["wrist"] and {n: k.shaper for n, k in both.items()} == {"wrist-edge": "kernel:tbf",
                                                                              "ankle-edge": "kernel:netem"}
    path.write_text(MIXED.replace("connect: ssh, host: pi-wrist, user: pi", "connect: local"))
    inv = load_inventory(path)
    planned = plan_kernel_links(inv, {lk.name: lk.profile for lk in inv.links}, caps=caps)
    assert set(planned) == {n for n, c in shaper_choices(inv).items() if c.kernel} == {"ankle-edge"}
    assert planned["ankle-edge"].shaper == "kernel:netem" and planned["ankle-edge"].board == "ankle"


def test_a_rate_the_kernel_cannot_take_is_refused_when_planned(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(MIXED.replace("profile: hbc-164k", "profile: {preset: hbc-164k, rate_bps: 0.4}"))
    with pytest.raises(LinkError, match="link ankle-edge: rate_bps: the netem backend cannot honour it"):
        link_command("apply", inventory_path=path, dry_run=True, link="ankle-edge")
    assert cli.main(["link", "apply", "--inventory", str(path), "--link", "ankle-edge", "--dry-run"]) == 2


@needs_netns
def test_a_link_error_is_one_line_and_exit_2(tmp_path, capsys):
    """`testbed link apply` on a netns board whose namespace does not exist: the kernel tools
    refuse, and the CLI prints one line naming the link, exit 2, no traceback."""
    path = tmp_path / "inventory.yaml"
    path.write_text(MIXED)
    assert cli.main(["link", "apply", "--inventory", str(path), "--link", "ankle-edge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("testbed: error: link ankle-edge: ")
    assert "tb-lab-ankle" in err[0] and "Traceback" not in err[0]


@pytest.mark.slow
@needs_netns
def test_a_link_error_during_a_run_is_one_line_exit_2_and_cleans_up(tmp_path, model_cache, monkeypatch, capsys):
    """`testbed run`: the kernel refuses to shape a netns board's link once the run is under way
    (its namespace is gone by the time every board is ready). The CLI prints one line naming
    the link, exits 2 with no traceback, the run's summary is still written, and no namespace
    is left behind."""
    monkeypatch.setenv("HBC_TESTBED_CACHE", str(model_cache))
    inv = _inventory(tmp_path / "inventory.yaml")
    exp = digits_experiment(tmp_path / "exp.yaml", samples=5)
    boards = set(load_inventory(inv).boards)
    ns = f"tb-{BENCH}-ankle"

    class PullsTheNamespace(EventLog):
        """The run's real event log, plus a listener that deletes ankle's namespace the moment
        every board has said ready (on the orchestrator's thread, before it shapes ankle's link)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            ready: set[str] = set()

            def on_event(ev: dict) -> None:
                if ev["type"] == "status" and ev.get("state") == "ready":
                    ready.add(ev["board"])
                    if ready == boards:
                        subprocess.run(["ip", "netns", "del", ns], check=True)
            self.subscribe(on_event)

    monkeypatch.setattr(orchestrator, "EventLog", PullsTheNamespace)
    code = cli.main(["run", str(exp), "--inventory", str(inv), "--headless"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("testbed: error: link ankle-edge: ") and ns in err[0], err
    assert "Traceback" not in "\n".join(err)
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "summary.json").exists()
    assert _left_over() == []
