"""Simulated boards in network namespaces (`connect: netns`): golden argv of the classified
kernel plan and of a board's namespace, subnet picking, the broker's extra listeners, the
refusal without root, and (root only) end-to-end runs: a netns wearable's agent runs inside
its namespace, its MQTT data plane is shaped by the kernel on tb0 while its control plane is
not, an outage drops its frames, and no namespace is left behind, also after a failed run."""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import digits_experiment, last_json, read_jsonl, run_cli
from linkemu.errors import LinkError
from linkemu.netns import BoardNetns, board_netns_argv, board_netns_teardown_argv, pick_subnets
from linkemu.profile import PRESETS, resolve_profile
from linkemu.tc import Runner, plan
from testbed.broker import mosquitto_config
from testbed.config import load_inventory
from testbed.errors import RunError
from testbed.fabric import host_dev_name, netns_name
from testbed.orchestrator import check_runnable
from testbed.shaping import plan_kernel_links


def _netns_ok() -> tuple[bool, str]:
    if not (hasattr(os, "geteuid") and os.geteuid() == 0):
        return False, "netns boards need root"
    if not all(shutil.which(t) for t in ("ip", "tc", "nft")):
        return False, "netns boards need iproute2 (ip, tc) and nftables"
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if done.returncode != 0:
        return False, f"`ip netns list` failed: {done.stderr.strip()}"
    return True, ""


_OK, _WHY = _netns_ok()
needs_netns = pytest.mark.skipif(not _OK, reason=_WHY or "ok")

BENCH = "nstest"


def _inventory(path: Path, *, wrist_port: str = "pty", chest_connect: str = "local",
               chest_transport: str = "{type: mqtt}") -> Path:
    path.write_text(f"""\
bench: {BENCH}
broker: {{mode: embedded}}
boards:
  wrist: {{role: wearable, kind: sim, connect: netns, runtime: torch}}
  chest: {{role: wearable, kind: sim, connect: {chest_connect}, runtime: torch}}
  ankle: {{role: wearable, kind: sim, connect: netns, runtime: torch}}
  edge: {{role: edge, kind: sim, connect: local, runtime: torch}}
links:
  - {{name: wrist-edge, from: wrist, to: edge, transport: {{type: serial, port: {wrist_port}, baud: 3000000}},
      profile: hbc-1312k}}
  - {{name: chest-edge, from: chest, to: edge, transport: {chest_transport}, profile: hbc-1312k}}
  - name: ankle-edge
    from: ankle
    to: edge
    transport: {{type: mqtt}}
    profile: hbc-164k
""")
    return path


def _left_over() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln for ln in out.splitlines() if ln.startswith(f"tb-{BENCH}-")]


# ---------------------------------------------------------------------------- pure parts


def test_classified_tbf_plan_golden():
    p = plan(PRESETS["hbc-164k"].with_outages([]), "tb0", backend="tbf", dport=41883, mtu=298)
    assert [" ".join(a) for a in p.apply] == [
        "tc qdisc replace dev tb0 root handle 1: stab overhead -66 htb default 2",
        "tc class replace dev tb0 parent 1: classid 1:2 htb rate 10gbit quantum 1514",
        "tc class replace dev tb0 parent 1: classid 1:1 htb rate 10gbit quantum 1514",
        "tc qdisc replace dev tb0 parent 1:1 handle 10: tbf rate 154043bit burst 298 limit 262144",
        "tc filter add dev tb0 parent 1: protocol ip prio 1 u32 match ip protocol 6 0xff "
        "match ip dport 41883 0xffff flowid 1:1"]
    assert p.clear == [["tc", "qdisc", "del", "dev", "tb0", "root"]]


def test_classified_htb_and_netem_golden():
    htb = plan(PRESETS["hbc-328k"], "tb0", backend="htb", dport=7)
    assert [" ".join(a) for a in htb.apply[2:4]] == [
        "tc class replace dev tb0 parent 1: classid 1:1 htb rate 306915bit ceil 306915bit burst 1500 cburst 1500",
        "tc qdisc replace dev tb0 parent 1:1 handle 10: bfifo limit 262144"]
    netem = plan(PRESETS["hbc-328k"], "tb0", backend="netem", dport=7)
    assert " ".join(netem.apply[3]) == ("tc qdisc replace dev tb0 parent 1:1 handle 10: netem rate 328125bit "
                                        "packetoverhead 0 cellsize 246 celloverhead 17")
    assert plan(PRESETS["ideal"], "tb0", backend="tbf", dport=7).apply == []


def test_classified_outages_and_loss_match_the_data_port_only():
    prof = resolve_profile({"preset": "hbc-164k", "loss": {"model": "random", "p": 2},
                            "outages": [{"at_s": 1, "duration_s": 1}]})
    p = plan(prof, "tb0", backend="tbf", dport=41883)
    nft = [" ".join(a) for a in p.apply if a[0] == "nft"]
    assert nft[-2:] == [
        "nft add rule inet linkemu_tb0 egress oifname tb0 tcp dport 41883 jump outage",
        "nft add rule inet linkemu_tb0 egress oifname tb0 tcp dport 41883 numgen random mod 1000000 < 20000 drop"]
    with pytest.raises(LinkError, match="^delay_ms: the tbf backend cannot honour"):
        plan(resolve_profile({"preset": "hbc-164k", "delay_ms": 3}), "tb0", backend="tbf", dport=1)


def test_board_netns_argv_golden():
    assert [" ".join(a) for a in board_netns_argv("tb-b-x", host_dev="tbh-0badcafe", inner_dev="tb0",
                                                  host_addr="198.18.213.1/30", ns_addr="198.18.213.2/30",
                                                  mtu=298)] == [
        "ip netns add tb-b-x",
        "ip link add tbh-0badcafe type veth peer name tb0 netns tb-b-x",
        "ip link set tbh-0badcafe mtu 298 gso_max_segs 1",
        "ip -n tb-b-x link set tb0 mtu 298 gso_max_segs 1",
        "ip addr add 198.18.213.1/30 dev tbh-0badcafe",
        "ip -n tb-b-x addr add 198.18.213.2/30 dev tb0",
        "ip link set tbh-0badcafe up",
        "ip -n tb-b-x link set tb0 up",
        "ip -n tb-b-x link set lo up"]
    assert board_netns_teardown_argv("tb-b-x", host_dev="tbh-0badcafe") == [
        ["ip", "link", "del", "tbh-0badcafe"], ["ip", "netns", "del", "tb-b-x"]]


def test_board_netns_undoes_a_half_made_namespace():
    class FailAt(Runner):
        def run(self, argv, *, check=True):
            out = super().run(argv, check=check)
            if argv[:3] == ["ip", "addr", "add"]:
                raise LinkError("boom")
            return out

    r = FailAt(dry_run=True)
    with pytest.raises(LinkError, match="boom"):
        with BoardNetns("tb-b-x", host_dev="tbh-1", inner_dev="tb0", subnet="198.18.213.0/30", runner=r):
            pass
    assert r.log[-2:] == [["ip", "link", "del", "tbh-1"], ["ip", "netns", "del", "tb-b-x"]]
    assert ["ip", "link", "set", "tbh-1", "mtu", "298", "gso_max_segs", "1"] in r.log


def test_pick_subnets_skips_what_the_host_uses():
    used = [ipaddress.ip_network("198.18.213.0/29"), ipaddress.ip_network("10.0.0.0/8")]
    assert [str(n) for n in pick_subnets(2, used=used)] == ["198.18.213.8/30", "198.18.213.12/30"]
    with pytest.raises(LinkError, match="no 1 free /30"):
        pick_subnets(1, used=[ipaddress.ip_network("198.18.0.0/15")])


def test_names_fit_the_interface_limit():
    assert netns_name("demo", "wrist") == "tb-demo-wrist"
    dev = host_dev_name("a-very-long-bench-name", "a-very-long-board-name")
    assert dev.startswith("tbh-") and len(dev) <= 15


def test_mosquitto_config_lists_extra_listeners():
    conf = mosquitto_config(host="127.0.0.1", port=1883, listeners=(("198.18.213.1", 1883),
                                                                    ("198.18.213.1", 41883)))
    assert conf.splitlines()[1:4] == ["listener 1883 127.0.0.1", "listener 1883 198.18.213.1",
                                      "listener 41883 198.18.213.1"]


def test_netns_without_root_is_refused_naming_the_board(tmp_path, monkeypatch):
    inv = load_inventory(_inventory(tmp_path / "inventory.yaml"))
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(RunError, match=r"inventory.yaml:\d+: boards.wrist.connect: 'netns' needs root"):
        check_runnable(inv)


def test_an_unhonourable_knob_is_refused_before_anything_starts(tmp_path):
    inv = load_inventory(_inventory(tmp_path / "inventory.yaml"))
    caps = {"netem": False, "tbf": True, "htb": True, "u32": True, "nft": True, "errors": {}}
    profiles = {lk.name: lk.profile for lk in inv.links}
    assert {n: k.shaper for n, k in plan_kernel_links(inv, profiles, caps=caps).items()} == {"ankle-edge": "kernel:tbf"}
    profiles["ankle-edge"] = resolve_profile({"preset": "hbc-164k", "jitter_ms": 2})
    with pytest.raises(RunError, match=r"links\[2\].profile: link ankle-edge .*jitter_ms: the tbf backend cannot"):
        plan_kernel_links(inv, profiles, caps=caps)
    with pytest.raises(RunError, match="u32 classifier"):
        plan_kernel_links(inv, {lk.name: lk.profile for lk in inv.links}, caps={**caps, "u32": False})


# ---------------------------------------------------------------------------- end to end (root)


@pytest.mark.slow
@needs_netns
def test_netns_wearable_is_shaped_by_the_kernel_and_its_outage_drops_frames(tmp_path, model_cache):
    n = 40  # 2 s at 20 Hz; ankle-edge (kernel-shaped) down from 0.5 s to 1.5 s
    # wrist: netns on a serial pty (a file: works across namespaces); chest: netns on BLE (bumble's
    # controller listens on chest's veth host address); ankle: netns on MQTT, kernel-shaped at 164k
    inv = _inventory(tmp_path / "inventory.yaml", chest_connect="netns", chest_transport="{type: ble, hci: virtual}")
    exp = digits_experiment(tmp_path / "exp.yaml", samples=n, faults="""faults:
  - {kind: outage, link: ankle-edge, at_s: 0.5, duration_s: 1.0}""")
    proc = run_cli("run", str(exp), "--inventory", str(inv), "--headless", "--json", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _left_over() == [], "every namespace is deleted after the run"
    s = last_json(proc.stdout)
    run_dir = Path(s["run_dir"])
    assert s["samples"] == n and s["completed"] + s["timed_out"] == n
    run = json.loads((run_dir / "run.json").read_text())

    # the agents of netns boards ran inside their namespaces
    spaces = run["netns"]["boards"]
    assert set(spaces) == {"wrist", "chest", "ankle"} and spaces["ankle"]["namespace"] == f"tb-{BENCH}-ankle"
    own = os.readlink("/proc/self/ns/net")
    statuses = {e["board"]: e["net_ns"] for e in read_jsonl(run_dir / "events.jsonl")
                if e["type"] == "status" and e.get("state") == "ready"}
    for board in ("wrist", "chest", "ankle"):
        assert statuses[board] == f"net:[{spaces[board]['inode']}]" != own
    assert statuses["edge"] == own

    # the agent of ankle reaches the broker at its veth's host address, data plane on its own port
    cfg = json.loads((run_dir / "boards" / "ankle" / "agent.json").read_text())
    assert cfg["broker"]["host"] == spaces["ankle"]["host_addr"]
    assert cfg["link"]["transport"]["port"] == run["broker"]["data_port"] != cfg["broker"]["port"]
    assert cfg["link"]["shaper"].startswith("kernel:")
    assert cfg["link"]["profile"] == PRESETS["ideal"].as_dict(), "the user-space shaper is off: no double shaping"

    # which shaper each link used, in run.json and in the summary
    assert run["shaping"]["ankle-edge"]["shaper"] in ("kernel:netem", "kernel:tbf", "kernel:htb")
    assert run["shaping"]["wrist-edge"]["shaper"] == run["shaping"]["chest-edge"]["shaper"] == "user"
    links = {lk["name"]: lk for lk in s["links"]}
    assert links["ankle-edge"]["shaper"] == run["shaping"]["ankle-edge"]["shaper"]

    # the shaped class on tb0 carried the data plane; the outage rule went down and up once
    stats = run["kernel_stats"]["ankle-edge"]
    assert stats["dev"] == "tb0" and stats["shaped_bytes"] > 0 and stats["shaped_packets"] > 0
    assert stats["outage_edges"] == ["down", "up"]
    assert {q["kind"] for q in stats["qdisc"]} >= {"htb"}

    # the kernel's outage cost ankle's part of samples (TCP retransmits after the deadline)
    results = [e for e in read_jsonl(run_dir / "events.jsonl") if e["type"] == "result"]
    partial = [r for r in results if r["status"] == "partial"]
    assert partial and all(r["missing"] == ["ankle"] for r in partial)
    assert any(r["status"] == "complete" for r in results)


@pytest.mark.slow
@needs_netns
def test_a_failed_run_leaves_no_namespace_behind(tmp_path, model_cache):
    inv = _inventory(tmp_path / "inventory.yaml", wrist_port="/dev/hbc-no-such-tty")
    exp = digits_experiment(tmp_path / "exp.yaml", samples=5)
    proc = run_cli("run", str(exp), "--inventory", str(inv), "--headless", cache=model_cache, cwd=tmp_path)
    assert proc.returncode == 1 and "failed to start" in proc.stderr and "Traceback" not in proc.stderr
    assert _left_over() == []
    hosts = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert host_dev_name(BENCH, "wrist") not in hosts and host_dev_name(BENCH, "ankle") not in hosts
