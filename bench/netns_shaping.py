"""Kernel vs user-space shaping of a netns board's MQTT data plane, against the airtime formula.

Setup, as `testbed run` makes it for a `connect: netns` board: a namespace joined to the root
namespace by a veth pair (`tb0` inside), mosquitto listening on the veth's host address on a
control port and a data port, a receiver subscribed on loopback. A sender inside the namespace
publishes 4 KiB activations (QoS 0, one frame per message) to the data port, one at a time
(each submitted 1.5 airtimes after the previous one, so frames never queue behind each other).
Per-frame delivery time = arrival at the receiver - submission by the sender (CLOCK_MONOTONIC
is shared across network namespaces). Then the same frames back to back: the spacing of their
arrivals (last - first) / (n - 1) against the airtime, i.e. the sustained rate.

Modes, on the same link, for hbc-164k and hbc-328k:
- kernel: the classified tc plan on tb0 (htb root, u32 on the data port, each backend the
  kernel has under class 1:1: netem, tbf, htb), the sender unshaped;
- user: no qdisc, the sender's frames pass `linkemu.shaper.ShapedSender` with the profile.
Baseline: `LinkProfile.airtime_s(4096)` (the exact PSDU formula). Root only.

Usage: python bench/netns_shaping.py [--quick] [--json]
With --json the last line of stdout is {"rows": [...]}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkemu.netns import BOARD_MTU, BoardNetns, host_networks, pick_subnets  # noqa: E402
from linkemu.profile import PRESETS  # noqa: E402
from linkemu.tc import KernelLink, Runner, probe  # noqa: E402
from nodes.mqtt import MqttClient  # noqa: E402
from testbed.broker import EmbeddedBroker, free_port  # noqa: E402

FRAME = 4096
PRESET_NAMES = ("hbc-164k", "hbc-328k")
TOPIC = "tb/bench/data/netns"

SENDER = textwrap.dedent("""
    import json, struct, sys, time
    sys.path.insert(0, sys.argv[1])
    from linkemu.profile import LinkProfile
    from linkemu.shaper import ShapedSender
    from nodes.mqtt import MqttClient
    host, port, n, gap, size = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
    profile = LinkProfile.from_dict(json.loads(sys.argv[7]))
    with MqttClient(host=host, port=port, client_id="bench-sender") as c:
        sender = ShapedSender(lambda f, _tag: c.publish("%s", f, qos=0), profile)
        time.sleep(0.3)
        t0 = time.monotonic()
        sender.start(t0=t0)
        for i in range(n):
            while time.monotonic() < t0 + i * gap:
                time.sleep(0.0005)
            now = time.monotonic()
            sender.submit(struct.pack("<Id", i, now) + bytes(size - 12))
        time.sleep(gap + 0.5)
        sender.close()
    """ % TOPIC)


def _measure(ns: BoardNetns, *, data_port: int, broker_port: int, n: int, gap: float,
             profile_dict: dict, root: str) -> tuple[list[float], list[float]]:
    """(delivery times, arrival times) of the frames that arrived, in sequence order."""
    got: dict[int, tuple[float, float]] = {}
    lock = threading.Lock()

    def on_msg(_t: str, payload: bytes) -> None:
        now = time.monotonic()
        import struct
        seq, sent = struct.unpack_from("<Id", payload)
        with lock:
            got[seq] = (now - sent, now)

    with MqttClient(host="127.0.0.1", port=broker_port, client_id="bench-receiver", on_message=on_msg) as rx:
        rx.subscribe(TOPIC, qos=0)
        time.sleep(0.3)
        done = subprocess.run([*ns.exec_prefix(), sys.executable, "-c", SENDER, root, ns.host_addr, str(data_port),
                               str(n), str(gap), str(FRAME), json.dumps(profile_dict)],
                              capture_output=True, text=True, timeout=120 + n * gap)
        if done.returncode != 0:
            raise RuntimeError(f"sender failed: {done.stderr[-800:]}")
        time.sleep(0.3)
    with lock:
        return [got[i][0] for i in sorted(got)], [got[i][1] for i in sorted(got)]


def _row(preset: str, mode: str, times: list[float], n: int, airtime: float, b2b: list[float]) -> dict:
    ms = sorted(t * 1000 for t in times)
    p50 = statistics.median(ms) if ms else float("nan")
    spacing = (b2b[-1] - b2b[0]) / (len(b2b) - 1) if len(b2b) > 1 else float("nan")
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))] if ms else float("nan")
    return {"preset": preset, "shaper": mode, "frames": n, "delivered": len(ms),
            "airtime_ms": round(airtime * 1000, 2), "delivery_ms_p50": round(p50, 2),
            "delivery_ms_p95": round(p95, 2), "delivery_ms_min": round(ms[0], 2) if ms else None,
            "error_ms_p50": round(p50 - airtime * 1000, 2), "ratio_p50": round(p50 / (airtime * 1000), 4),
            "b2b_spacing_ms": round(spacing * 1000, 2), "b2b_ratio": round(spacing / airtime, 4)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 frames per row instead of 30")
    ap.add_argument("--json", action="store_true", help='last line: {"rows": [...]}')
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("skipped: network namespaces and tc need root")
        return 0
    n = 8 if args.quick else 30
    root = str(Path(__file__).resolve().parents[1])
    caps = probe()
    backends = [b for b in ("netem", "tbf", "htb") if caps.get(b)]
    subnet = pick_subnets(1, used=host_networks())[0]
    rows = []
    with BoardNetns(f"tb-bench-{os.getpid()}", host_dev=f"tbh-b{os.getpid() % 100000}", inner_dev="tb0",
                    subnet=subnet) as ns:
        port, data_port = free_port(), free_port()
        with EmbeddedBroker(workdir=Path(f"/tmp/netns-shaping-{os.getpid()}"), port=port,
                            listeners=((ns.host_addr, port), (ns.host_addr, data_port))):
            for name in PRESET_NAMES:
                profile = PRESETS[name]
                airtime = profile.airtime_s(FRAME)
                gap = 1.5 * airtime + 0.02
                ideal = PRESETS["ideal"].as_dict()
                for backend in backends:
                    with KernelLink(profile, "tb0", backend=backend, runner=Runner.netns(ns.ns), dport=data_port,
                                    mtu=BOARD_MTU):
                        k, _ = _measure(ns, data_port=data_port, broker_port=port, n=n, gap=gap,
                                        profile_dict=ideal, root=root)
                        _, kb = _measure(ns, data_port=data_port, broker_port=port, n=n, gap=0.0,
                                         profile_dict=ideal, root=root)
                    rows.append(_row(name, f"kernel:{backend}", k, n, airtime, kb))
                u, _ = _measure(ns, data_port=data_port, broker_port=port, n=n, gap=gap,
                                profile_dict=profile.as_dict(), root=root)
                _, ub = _measure(ns, data_port=data_port, broker_port=port, n=n, gap=0.0,
                                 profile_dict=profile.as_dict(), root=root)
                rows.append(_row(name, "user", u, n, airtime, ub))
    print(f"netns board, MQTT data plane, {FRAME} B frames one at a time; baseline = exact airtime formula")
    print(f"{'preset':10} {'shaper':12} {'n':>3} {'airtime ms':>10} {'p50 ms':>8} {'p95 ms':>8} "
          f"{'min ms':>8} {'p50-air':>8} {'p50/air':>8} {'b2b ms':>8} {'b2b/air':>8}")
    for r in rows:
        print(f"{r['preset']:10} {r['shaper']:12} {r['delivered']:>3} {r['airtime_ms']:>10.2f} "
              f"{r['delivery_ms_p50']:>8.2f} {r['delivery_ms_p95']:>8.2f} {r['delivery_ms_min']:>8.2f} "
              f"{r['error_ms_p50']:>8.2f} {r['ratio_p50']:>8.4f} {r['b2b_spacing_ms']:>8.2f} {r['b2b_ratio']:>8.4f}")
    if args.json:
        print(json.dumps({"rows": rows, "backends": backends}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
