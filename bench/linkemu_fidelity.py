"""Fidelity of the link emulator against the exact airtime formula, on real sockets.

For each HBC preset and frame size (256 B, 4 KiB, 64 KiB): a sender pushes frames back to
back through `ShapedSender` into a loopback TCP socket; a receiver thread timestamps each
complete frame. Per row: the profile's effective rate n*8/airtime(n), the measured goodput
over the frames delivered before an outage and their ratio; the per-frame delivery-time
error (arrival minus the time an independent reference computes from the airtime formula
and the outage window) p50/p99; and the outage edge error (the worst error of the frames
whose timing the outage decides: the frame it cuts, held and resent, and the next one).
The outage is a 250 ms `hold` window placed mid-frame. Then, as root on a kernel with tbf,
the same bytes as a TCP stream between two network namespaces over a veth shaped by tbf at
the profile's asymptotic goodput, side by side (skipped, with the reason, otherwise).

Usage: python bench/linkemu_fidelity.py [--quick] [--json] [--no-kernel]
With --json the last line of stdout is {"rows": [...]}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from linkemu.outage import Outage  # noqa: E402
from linkemu.profile import PRESETS, LinkProfile  # noqa: E402
from linkemu.shaper import ShapedSender  # noqa: E402

HBC = ("hbc-164k", "hbc-328k", "hbc-656k", "hbc-1312k")
SIZES = (256, 4096, 65536)
OUTAGE_S = 0.25
TARGETS = {"goodput_ratio": 0.01, "delivery_error_p99_ms": 2.0, "outage_edge_error_ms": 5.0}


# ---------------------------------------------------------------------------- reference


def reference_ends(profile: LinkProfile, n: int, frames: int, outage: Outage) -> list[float]:
    """End times (from t = 0) of `frames` back-to-back frames of n bytes under a hold outage,
    computed from the formula alone: each PSDU takes phy + (payload + header) * 8 / rate; a
    PSDU that would overlap the outage starts again, whole, at its end."""
    cap = profile.max_psdu_bytes - profile.overhead_bytes
    sizes = [cap] * (n // cap) + ([n % cap] if n % cap else [])
    t, ends = 0.0, []
    for _ in range(frames):
        for payload in sizes:
            d = profile.phy_time_s + (payload + profile.overhead_bytes) * 8 / profile.rate_bps
            if t < outage.end_s and t + d > outage.start_s:
                t = max(t, outage.end_s)
            t += d
        ends.append(t)
    return ends


# ---------------------------------------------------------------------------- loopback run


RX_ALL = textwrap.dedent("""
    import json, socket, struct, sys, time
    s = socket.create_server((sys.argv[1], int(sys.argv[2])))
    print("ready", s.getsockname()[1], flush=True)
    c, _ = s.accept(); buf = bytearray(); t = []
    while chunk := c.recv(1 << 20):
        now = time.monotonic(); buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + (n := struct.unpack_from("<I", buf)[0]):
            t.append(now); del buf[:4 + n]
    print(json.dumps(t), flush=True)
""")


class Receiver:
    """A receiver process (its own interpreter: no GIL shared with the sender) that accepts
    one TCP connection and timestamps each length-prefixed frame on completion with the
    system-wide CLOCK_MONOTONIC, the same clock as the sender's time.monotonic()."""

    def __init__(self, *, prefix: list[str] | None = None, host: str = "127.0.0.1") -> None:
        self.proc = subprocess.Popen([*(prefix or []), sys.executable, "-c", RX_ALL, host, "0"],
                                     stdout=subprocess.PIPE, text=True)
        word, port = self.proc.stdout.readline().split()
        assert word == "ready"
        self.port = int(port)

    def arrivals(self, *, timeout: float) -> list[float]:
        try:
            return json.loads(self.proc.communicate(timeout=timeout)[0])
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def loopback_row(preset: str, n: int, *, budget_s: float) -> dict:
    base = PRESETS[preset]
    airtime = base.airtime_s(n)
    frames = max(3, min(4000, math.ceil(budget_s / airtime)))
    cut = frames // 2                      # the outage starts halfway through this frame
    outage = Outage((cut + 0.5) * airtime, OUTAGE_S)
    profile = base.with_outages([outage]).replace(outage_mode="hold")
    rx = Receiver()
    sock = socket.create_connection(("127.0.0.1", rx.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = os.urandom(n)
    # a saturating sender: every frame is offered at t0, 50 ms from now (the sender's clock
    # reads t0 until then), so the link is busy from t0 on whatever the submit loop costs
    t0 = time.monotonic() + 0.05
    sender = ShapedSender(lambda f, _tag: sock.sendall(struct.pack("<I", len(f)) + f), profile,
                          clock=lambda: max(time.monotonic(), t0))
    sender.start(t0=t0)
    for _ in range(frames):
        sender.submit(payload)
    sender.close(timeout=frames * airtime + OUTAGE_S + 10)
    sock.close()
    arrivals = rx.arrivals(timeout=30)
    ends = reference_ends(profile, n, frames, outage)
    errors = [(a - t0 - e) * 1000 for a, e in zip(arrivals, ends)]
    assert len(errors) == frames, (preset, n, len(arrivals), frames)
    goodput = cut * n * 8 / (arrivals[cut - 1] - t0)
    effective = base.goodput_bps(n)
    abs_err = sorted(abs(e) for e in errors)
    return {"preset": preset, "frame_bytes": n, "frames": frames,
            "effective_rate_bps": round(effective, 1),
            "measured_goodput_bps": round(goodput, 1),
            "goodput_ratio": round(goodput / effective, 5),
            "delivery_error_p50_ms": round(statistics.median(abs_err), 3),
            "delivery_error_p99_ms": round(_quantile(abs_err, 0.99), 3),
            "outage_edge_error_ms": round(max(abs(errors[cut]), abs(errors[min(cut + 1,
                                                                               frames - 1)])), 3),
            "late_ms_max": sender.snapshot()["late_ms_max"]}


def _quantile(sorted_values: list[float], q: float) -> float:
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


# ---------------------------------------------------------------------------- kernel side

RX = textwrap.dedent("""
    import socket, struct, sys, time
    s = socket.create_server((sys.argv[1], int(sys.argv[2])))
    print("ready", flush=True)
    c, _ = s.accept(); buf = bytearray(); t = []
    while chunk := c.recv(1 << 20):
        now = time.monotonic(); buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + (n := struct.unpack_from("<I", buf)[0]):
            t.append(now); del buf[:4 + n]
    print(len(t), t[0], t[-1], flush=True)
""")
TX = textwrap.dedent("""
    import socket, struct, sys
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n, k = int(sys.argv[3]), int(sys.argv[4])
    frame = struct.pack("<I", n) + b"x" * n
    for _ in range(k): s.sendall(frame)
    s.close()
""")


def kernel_reason() -> str | None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not root: kernel shaping needs network namespaces"
    if not (shutil.which("ip") and shutil.which("tc")):
        return "iproute2 (ip, tc) not installed"
    from linkemu.tc import probe
    caps = probe()
    if not caps.get("tbf"):
        return f"this kernel has no tbf ({caps['errors'].get('tbf')})"
    return None


def tbf_row(pair, preset: str, n: int, *, budget_bytes: int, port: int) -> dict:
    from linkemu.tc import KernelLink, Runner
    profile = PRESETS[preset]
    frames = max(2, budget_bytes // n)
    with KernelLink(profile, pair.a.dev, backend="tbf", runner=Runner.netns(pair.a.ns)):
        rx = subprocess.Popen([*pair.exec_prefix(pair.b), sys.executable, "-c", RX, pair.addr_b,
                               str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert rx.stdout.readline().strip() == "ready"
            subprocess.run([*pair.exec_prefix(pair.a), sys.executable, "-c", TX, pair.addr_b,
                            str(port), str(n), str(frames)], check=True, timeout=600)
            count, first, last = rx.communicate(timeout=600)[0].split()
        finally:
            if rx.poll() is None:
                rx.kill()
    # the first frame's arrival opens the clock: goodput over the remaining frames
    goodput = (int(count) - 1) * n * 8 / (float(last) - float(first))
    return {"tbf_rate_bps": round(profile.asymptotic_goodput_bps, 1),
            "tbf_goodput_bps": round(goodput, 1),
            "tbf_goodput_ratio": round(goodput / profile.goodput_bps(n), 5)}


# ---------------------------------------------------------------------------- main


def _table(rows: list[dict]) -> str:
    head = ("| preset | frame B | frames | effective kbit/s | shaper kbit/s | ratio | "
            "p50 ms | p99 ms | outage edge ms | tbf kbit/s | tbf ratio |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        tbf = r.get("tbf_goodput_bps")
        lines.append(
            f"| {r['preset']} | {r['frame_bytes']} | {r['frames']} | "
            f"{r['effective_rate_bps'] / 1000:.2f} | {r['measured_goodput_bps'] / 1000:.2f} | "
            f"{r['goodput_ratio']:.4f} | {r['delivery_error_p50_ms']:.3f} | "
            f"{r['delivery_error_p99_ms']:.3f} | {r['outage_edge_error_ms']:.3f} | "
            + (f"{tbf / 1000:.2f} | {r['tbf_goodput_ratio']:.4f} |" if tbf else "- | - |"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="short runs (< 60 s in all)")
    ap.add_argument("--json", action="store_true", help='last line: {"rows": [...]}')
    ap.add_argument("--no-kernel", action="store_true", help="skip the tbf side")
    args = ap.parse_args(argv)
    budget_s = 0.8 if args.quick else 6.0
    budget_bytes = 24 * 1024 if args.quick else 256 * 1024
    rows = []
    for preset in HBC:
        for n in SIZES:
            rows.append(loopback_row(preset, n, budget_s=budget_s))
            print(f"# {preset} {n} B: {json.dumps(rows[-1])}", file=sys.stderr)
    reason = "--no-kernel" if args.no_kernel else kernel_reason()
    if reason is None:
        from linkemu.netns import NetnsPair
        with NetnsPair(prefix=f"le-bench-{os.getpid()}") as pair:
            for i, row in enumerate(rows):
                row.update(tbf_row(pair, row["preset"], row["frame_bytes"],
                                   budget_bytes=max(budget_bytes, 2 * row["frame_bytes"]),
                                   port=5300 + i))
    else:
        for row in rows:
            row["tbf_skipped"] = reason
    print(_table(rows))
    if reason:
        print(f"\ntbf side skipped: {reason}")
    misses = [f"{r['preset']} {r['frame_bytes']} B {k}"
              for r in rows for k, lim in TARGETS.items()
              if (abs(r[k] - 1) if k == "goodput_ratio" else r[k]) > lim]
    print(f"\ntargets: goodput within 1 %, p99 <= 2 ms, outage edges <= 5 ms; "
          f"misses: {', '.join(misses) or 'none'}")
    if args.json:
        print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
