"""Kernel backend: shape an interface with tc qdiscs and nftables, from a LinkProfile.

Holds pure functions that build argv lists (`netem_argv`, `tbf_argv`, `htb_argv`,
`nft_setup_argv`, `plan`), `probe()` which finds out which qdiscs the kernel has by adding
each to a veth inside a throwaway network namespace, `Runner`, the one place commands are
executed (locally, as `ip netns exec NS ...`, or behind an SSH argv prefix, or recorded
only on a dry run), and `KernelLink`, a context manager that applies a plan, drives the
outage timeline by toggling an nftables drop rule, and undoes everything in reverse order.

Classified form (`plan(..., dport=PORT)`, used for boards in network namespaces whose control
plane shares the interface): an htb root whose default class 1:2 is unshaped, a u32 filter
that sends TCP to `dport` into class 1:1, and the backend's qdisc under 1:1 (netem or tbf as
its child; for htb, 1:1 itself carries the rate over a bfifo leaf). The nftables outage and
loss rules then match `tcp dport PORT` only.

Backends: `netem` (rate with packetoverhead/cellsize/celloverhead for the PHY framing,
delay + jitter, loss random | gemodel) where the kernel has it; `tbf` or `htb` (rate at the
profile's asymptotic goodput, byte queue limit) plus nftables (outage drops, iid loss via
`numgen random`) where it does not. A knob the chosen backend cannot honour raises
`LinkError` naming the knob; it is never ignored. This module must not import anything from
`nodes` or `testbed`, and touches only the interface and namespace it is given.
"""
from __future__ import annotations

import math
import os
import random
import shlex
import subprocess
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from linkemu.errors import LinkError
from linkemu.profile import LinkProfile

__all__ = ["BACKENDS", "Plan", "Runner", "KernelLink", "plan", "netem_argv", "tbf_argv",
           "htb_argv", "nft_setup_argv", "nft_teardown_argv", "nft_outage_argv",
           "nft_clear_outage_argv", "clear_argv", "show_argv", "probe", "choose_backend",
           "nft_table", "classified_argv", "SHAPED_CLASS", "DEFAULT_CLASS"]

BACKENDS = ("netem", "tbf", "htb")
TBF_MIN_BURST = 1600          # one Ethernet frame plus headroom: tbf cannot pass less
DEFAULT_LIMIT_BYTES = 256 * 1024
LOSS_SCALE = 1_000_000        # nft numgen modulus: loss resolution 1e-4 %
SHAPED_CLASS = "1:1"          # classified form: the data plane's class
DEFAULT_CLASS = "1:2"         # classified form: everything else, unshaped
UNLIMITED = "10gbit"          # an htb class that never limits (veth runs far below it)
QUANTUM = "1514"              # one Ethernet frame: keeps htb quiet about huge quanta
HEADER_BYTES = 14 + 20 + 32   # Ethernet + IPv4 + TCP with timestamps: not charged (classified form)


# ---------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Plan:
    """Commands that apply, show and clear one profile on one interface."""

    dev: str
    backend: str
    apply: list[list[str]]
    clear: list[list[str]]
    show: list[list[str]]
    outages: bool = False
    notes: list[str] = field(default_factory=list)


def _refuse(knob: str, backend: str, why: str) -> LinkError:
    return LinkError(f"{knob}: the {backend} backend cannot honour it ({why})")


def _bits(rate_bps: float) -> str:
    return f"{round(rate_bps)}bit"


def _us(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"


def _pct(value: float) -> str:
    return f"{value:g}%"


def _check_common(profile: LinkProfile, backend: str) -> None:
    if profile.frames_per_event is not None:
        raise _refuse("frames_per_event", backend, "connection events are not expressible in "
                      "tc; BLE and serial links use the shaper backend")
    if profile.outage_mode == "hold":
        raise _refuse("outage_mode", backend, "the kernel drops during an outage; hold needs "
                      "the shaper backend (over TCP the drops become retransmissions)")
    if profile.outage_trace is not None and any(
            p.rate_bps is not None for p in profile.outage_trace.points):
        raise _refuse("outage_trace", backend, "a trace with a rate column needs the shaper")


def _phy_bytes(profile: LinkProfile) -> int:
    return round(profile.phy_time_s * profile.rate_bps / 8)


def netem_argv(dev: str, profile: LinkProfile) -> list[str]:
    """`tc qdisc replace dev DEV root netem ...` for a profile."""
    _check_common(profile, "netem")
    if profile.queue_limit_bytes is not None:
        raise _refuse("queue_limit_bytes", "netem", "netem's limit counts packets, not bytes; "
                      "use the tbf or htb backend")
    argv = ["tc", "qdisc", "replace", "dev", dev, "root", "netem"]
    if profile.delay_s or profile.jitter_s:
        argv += ["delay", _us(profile.delay_s)]
        if profile.jitter_s:
            if math.isinf(profile.rate_bps) and not profile.reorder:
                raise _refuse("jitter_ms", "netem", "netem reorders jittered packets unless a "
                              "rate is set; set reorder: true or a finite rate")
            argv += [_us(profile.jitter_s)]
    if profile.loss is not None:
        loss = profile.loss
        argv += (["loss", "random", _pct(loss.p)] if loss.model == "random" else
                 ["loss", "gemodel", _pct(loss.p), _pct(loss.r), _pct(loss.one_minus_h),
                  _pct(loss.one_minus_k)])
    if not math.isinf(profile.rate_bps):
        argv += ["rate", _bits(profile.rate_bps)]
        per_frame = profile.overhead_bytes + _phy_bytes(profile)
        if profile.max_psdu_bytes is None:
            argv += ["packetoverhead", str(per_frame)]
        else:  # each cell of max payload bytes is charged its header and PHY time
            argv += ["packetoverhead", "0", "cellsize", str(profile.framing.max_payload),
                     "celloverhead", str(per_frame)]
    elif profile.max_psdu_bytes is not None and profile.phy_time_s:
        raise _refuse("phy_time_us", "netem", "per-frame PHY time needs a finite rate")
    return argv


def _check_tbf_like(profile: LinkProfile, backend: str) -> None:
    _check_common(profile, backend)
    for knob, value in (("delay_ms", profile.delay_s), ("jitter_ms", profile.jitter_s)):
        if value:
            raise _refuse(knob, backend, "only netem delays packets")
    if profile.loss is not None and profile.loss.model != "random":
        raise _refuse("loss", backend, "Gilbert-Elliott loss needs netem; nftables can only "
                      "drop iid (loss model random)")


def _burst(rate: float, floor: int = TBF_MIN_BURST) -> int:
    return max(floor, math.ceil(rate / 8 / 250))  # at least one HZ=250 tick's worth


def tbf_argv(dev: str, profile: LinkProfile, *, min_burst: int = TBF_MIN_BURST) -> list[list[str]]:
    """tbf at the profile's asymptotic goodput (no qdisc for an unlimited link); `min_burst`:
    the bucket's floor in bytes, at least the largest packet it must pass."""
    _check_tbf_like(profile, "tbf")
    rate = profile.asymptotic_goodput_bps
    if math.isinf(rate):
        return []
    limit = profile.queue_limit_bytes or DEFAULT_LIMIT_BYTES
    return [["tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", _bits(rate),
             "burst", str(_burst(rate, min_burst)), "limit", str(limit)]]


def _htb_shaping(profile: LinkProfile, min_burst: int) -> tuple[list[str], list[str]] | None:
    """The shaped htb class's kind and parameters, and its bfifo leaf's; None when unlimited."""
    _check_tbf_like(profile, "htb")
    rate = profile.asymptotic_goodput_bps
    if math.isinf(rate):
        return None
    burst = str(_burst(rate, min_burst))
    limit = str(profile.queue_limit_bytes or DEFAULT_LIMIT_BYTES)
    return (["htb", "rate", _bits(rate), "ceil", _bits(rate), "burst", burst, "cburst", burst],
            ["bfifo", "limit", limit])


def htb_argv(dev: str, profile: LinkProfile, *, min_burst: int = TBF_MIN_BURST) -> list[list[str]]:
    """htb with one class at the profile's asymptotic goodput and a bfifo byte queue."""
    shaping = _htb_shaping(profile, min_burst)
    if shaping is None:
        return []
    shaped, fifo = shaping
    return [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "htb", "default", "1"],
            ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", "1:1", *shaped],
            ["tc", "qdisc", "replace", "dev", dev, "parent", "1:1", "handle", "10:", *fifo]]


def _under_shaped_class(argv: list[str]) -> list[str]:
    """A `... root <qdisc> ...` argv moved under the shaped class as handle 10:."""
    i = argv.index("root")
    return argv[:i] + ["parent", SHAPED_CLASS, "handle", "10:"] + argv[i + 1:]


def classified_argv(dev: str, profile: LinkProfile, *, backend: str, dport: int,
                    mtu: int = 1500) -> list[list[str]]:
    """htb root, default class 1:2 unshaped, TCP to `dport` into class 1:1 shaped by the
    backend (netem/tbf as 1:1's child qdisc; htb: 1:1 at the rate over a bfifo leaf).
    A size table charges each packet without its Ethernet/IPv4/TCP headers (`HEADER_BYTES`):
    the link carries the frame's bytes, not the emulation's TCP. `mtu` is DEV's MTU: the
    bucket need only pass one packet of it. No qdisc at all when the backend would install
    none (an unlimited link on tbf/htb)."""
    if backend == "netem":
        leaf = [_under_shaped_class(netem_argv(dev, profile))]
        shaped = ["htb", "rate", UNLIMITED, "quantum", QUANTUM]
    elif backend == "tbf":
        leaf = [_under_shaped_class(a) for a in tbf_argv(dev, profile, min_burst=mtu)]
        shaped = ["htb", "rate", UNLIMITED, "quantum", QUANTUM]
    elif backend == "htb":
        shaping = _htb_shaping(profile, mtu)
        leaf = []
        if shaping is not None:
            shaped, fifo = shaping
            leaf = [["tc", "qdisc", "replace", "dev", dev, "parent", SHAPED_CLASS, "handle", "10:", *fifo]]
    else:
        raise LinkError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not leaf:
        return []
    return [["tc", "qdisc", "replace", "dev", dev, "root", "handle", "1:", "stab", "overhead",
             str(-HEADER_BYTES), "htb", "default", "2"],
            ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", DEFAULT_CLASS,
             "htb", "rate", UNLIMITED, "quantum", QUANTUM],
            ["tc", "class", "replace", "dev", dev, "parent", "1:", "classid", SHAPED_CLASS, *shaped],
            *leaf,
            ["tc", "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
             "match", "ip", "protocol", "6", "0xff", "match", "ip", "dport", str(dport), "0xffff",
             "flowid", SHAPED_CLASS]]


def nft_table(dev: str) -> str:
    return f"linkemu_{dev}".replace("-", "_").replace(".", "_")


def nft_setup_argv(dev: str, profile: LinkProfile, *, backend: str,
                   match: Sequence[str] = ()) -> list[list[str]]:
    """An nftables table with two chains on DEV's egress: `outage` (flushed or holding one
    drop rule) and `loss` (iid loss by numgen when the backend is not netem). `match`
    (e.g. `tcp dport 1884`) narrows both to some of DEV's traffic."""
    table = nft_table(dev)
    match = list(match)
    argv = [["nft", "add", "table", "inet", table],
            ["nft", "add", "chain", "inet", table, "egress",
             "{ type filter hook postrouting priority 0 ; }"],
            ["nft", "add", "chain", "inet", table, "outage"],
            ["nft", "add", "rule", "inet", table, "egress", "oifname", dev, *match, "jump", "outage"]]
    if backend != "netem" and profile.loss is not None and profile.loss.p > 0:
        threshold = round(profile.loss.p / 100 * LOSS_SCALE)
        argv.append(["nft", "add", "rule", "inet", table, "egress", "oifname", dev, *match,
                     "numgen", "random", "mod", str(LOSS_SCALE), "<", str(threshold), "drop"])
    return argv


def nft_outage_argv(dev: str) -> list[str]:
    return ["nft", "add", "rule", "inet", nft_table(dev), "outage", "drop"]


def nft_clear_outage_argv(dev: str) -> list[str]:
    return ["nft", "flush", "chain", "inet", nft_table(dev), "outage"]


def nft_teardown_argv(dev: str) -> list[str]:
    return ["nft", "delete", "table", "inet", nft_table(dev)]


def clear_argv(dev: str) -> list[str]:
    return ["tc", "qdisc", "del", "dev", dev, "root"]


def show_argv(dev: str) -> list[str]:
    return ["tc", "-s", "qdisc", "show", "dev", dev]


def _needs_nft(profile: LinkProfile, backend: str) -> bool:
    iid = profile.loss is not None and profile.loss.model == "random" and profile.loss.p > 0
    return profile.has_outages or (backend != "netem" and iid)


def plan(profile: LinkProfile, dev: str, *, backend: str, dport: int | None = None,
         mtu: int = 1500) -> Plan:
    """The commands for `profile` on `dev` with `backend` (netem | tbf | htb); with `dport`,
    the classified form that shapes (and drops, in outages) only TCP to that port (`mtu`:
    DEV's MTU, which sizes the bucket of that form)."""
    if backend not in BACKENDS:
        raise LinkError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if not math.isinf(profile.rate_bps) and round(profile.rate_bps) < 1:   # tc takes whole bit/s; "0bit" is refused only when applied
        raise _refuse("rate_bps", backend, f"the kernel shapes whole bits per second; "
                                           f"expected >= 1, got {profile.rate_bps:g}")
    if dport is not None:
        qdisc = classified_argv(dev, profile, backend=backend, dport=dport, mtu=mtu)
    else:
        qdisc = ([netem_argv(dev, profile)] if backend == "netem" else
                 tbf_argv(dev, profile) if backend == "tbf" else htb_argv(dev, profile))
    nft = _needs_nft(profile, backend)
    match = ["tcp", "dport", str(dport)] if dport is not None else []
    apply = list(qdisc) + (nft_setup_argv(dev, profile, backend=backend, match=match) if nft else [])
    clear = ([nft_teardown_argv(dev)] if nft else []) + ([clear_argv(dev)] if qdisc else [])
    show = [show_argv(dev)] + ([["nft", "list", "table", "inet", nft_table(dev)]] if nft else [])
    notes = []
    if backend != "netem" and not math.isinf(profile.rate_bps):
        notes.append(f"{backend} rate = the profile's asymptotic goodput "
                     f"{profile.asymptotic_goodput_bps:.1f} bit/s (PHY framing averaged)")
    if profile.has_outages:
        notes.append("outages are driven by toggling an nftables drop rule at each edge")
    if dport is not None:
        notes.append(f"only TCP to port {dport} is shaped (class {SHAPED_CLASS}); "
                     f"other traffic takes the unshaped class {DEFAULT_CLASS}; each packet is "
                     f"charged without its {HEADER_BYTES} header bytes (size table)")
    return Plan(dev, backend, apply, clear, show, outages=profile.has_outages, notes=notes)


# ---------------------------------------------------------------------------- runner


class Runner:
    """Runs argv lists: locally, inside `ip netns exec NS`, or behind an SSH prefix; on a
    dry run it only records them. `log` holds every full argv in order."""

    def __init__(self, *, prefix: Sequence[str] = (), dry_run: bool = False,
                 timeout_s: float = 30.0) -> None:
        self.prefix = list(prefix)
        self.dry_run = dry_run
        self.timeout_s = timeout_s
        self.log: list[list[str]] = []

    @classmethod
    def local(cls, *, dry_run: bool = False) -> Runner:
        return cls(dry_run=dry_run)

    @classmethod
    def netns(cls, name: str, *, dry_run: bool = False) -> Runner:
        return cls(prefix=["ip", "netns", "exec", name], dry_run=dry_run)

    @classmethod
    def ssh(cls, host: str, *, user: str | None = None, port: int = 22,
            options: Sequence[str] = (), dry_run: bool = False) -> Runner:
        target = f"{user}@{host}" if user else host
        return cls(prefix=["ssh", "-p", str(port), *options, target, "--"], dry_run=dry_run)

    remote = False   # True where argv lists run on another machine (that machine's root decides)

    def within(self, prefix: Sequence[str]) -> Runner:
        """The same runner with ``prefix`` (e.g. ``ip netns exec NS``) added in front of each argv."""
        return type(self)(prefix=[*self.prefix, *prefix], dry_run=self.dry_run, timeout_s=self.timeout_s)

    def full(self, argv: Sequence[str]) -> list[str]:
        argv = list(argv)
        if self.prefix and self.prefix[0] == "ssh":  # the remote shell re-splits: quote
            return self.prefix + [shlex.join(argv)]
        return self.prefix + argv

    def run(self, argv: Sequence[str], *, check: bool = True) -> str:
        full = self.full(argv)
        self.log.append(full)
        if self.dry_run:
            return ""
        try:
            done = subprocess.run(full, capture_output=True, text=True, timeout=self.timeout_s)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LinkError(f"{shlex.join(full)}: {exc}") from None
        if check and done.returncode != 0:
            raise LinkError(f"{shlex.join(full)} failed ({done.returncode}): "
                            f"{(done.stderr or done.stdout).strip()}")
        return done.stdout


# ---------------------------------------------------------------------------- probe


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


_PROBE_QDISCS = {
    "netem": ["netem", "delay", "1ms"],
    "tbf": ["tbf", "rate", "1mbit", "burst", "1600", "limit", "10000"],
    "htb": ["htb", "default", "1"],
}


def probe(*, runner: Runner | None = None) -> dict[str, Any]:
    """Which qdiscs (and whether nft) work here. Adds each qdisc to a veth inside a
    throwaway namespace (root only; the namespace is deleted afterwards). Returns
    {"netem": bool, "tbf": bool, "htb": bool, "u32": bool, "nft": bool, "errors": {name: message}}
    (u32: an htb root with a u32 filter, which the classified form needs)."""
    runner = runner or Runner.local()
    if runner.prefix[:1] != ["ssh"] and not runner.remote and not _is_root():
        raise LinkError("probe needs root (it adds a qdisc on a veth in a temporary network "
                        "namespace)")
    ns = f"linkemu-probe-{os.getpid()}-{random.randrange(10**6)}"
    inside = runner.within(["ip", "netns", "exec", ns])
    out: dict[str, Any] = {"errors": {}}
    runner.run(["ip", "netns", "add", ns])
    try:
        inside.run(["ip", "link", "add", "lp0", "type", "veth", "peer", "name", "lp1"])
        inside.run(["ip", "link", "set", "lp0", "up"])
        for name, args in _PROBE_QDISCS.items():
            try:
                inside.run(["tc", "qdisc", "add", "dev", "lp0", "root", *args])
                inside.run(clear_argv("lp0"))
                out[name] = True
            except LinkError as exc:
                out[name] = False
                out["errors"][name] = str(exc).rsplit(": ", 1)[-1]
        try:  # the classified form: htb root + u32 filter
            inside.run(["tc", "qdisc", "add", "dev", "lp0", "root", "handle", "1:", "htb"])
            inside.run(["tc", "filter", "add", "dev", "lp0", "parent", "1:", "protocol", "ip",
                        "prio", "1", "u32", "match", "ip", "dport", "1", "0xffff", "flowid", "1:1"])
            out["u32"] = True
        except LinkError as exc:
            out["u32"] = False
            out["errors"]["u32"] = str(exc).rsplit(": ", 1)[-1]
        finally:
            inside.run(clear_argv("lp0"), check=False)
        try:
            inside.run(["nft", "add", "table", "inet", "linkemu_probe"])
            out["nft"] = True
        except LinkError as exc:
            out["nft"] = False
            out["errors"]["nft"] = str(exc).rsplit(": ", 1)[-1]
    finally:
        runner.run(["ip", "netns", "del", ns], check=False)
    return out


def choose_backend(caps: dict[str, Any], *, prefer: str | None = None) -> str:
    """netem where the kernel has it, else tbf, else htb; `prefer` if it is available."""
    if prefer is not None:
        if not caps.get(prefer):
            raise LinkError(f"backend {prefer!r} is not available here "
                            f"({caps.get('errors', {}).get(prefer, 'probe said no')})")
        return prefer
    for name in BACKENDS:
        if caps.get(name):
            return name
    raise LinkError("no usable qdisc: the kernel has none of netem, tbf, htb")


# ---------------------------------------------------------------------------- applying


class KernelLink:
    """Apply a plan on enter; drive its outages (nft drop rule on at each down edge, off at
    each up edge, following the profile's schedule, process and trace on a clock whose time
    zero is `t0`); undo everything in reverse order on exit. By default the outages are driven
    from enter; with `drive=False` the caller starts them with `drive_outages(t0=...)` once the
    plan is applied (a run: on its own clock, taken after every link is shaped). With the same
    profile seed and `t0` as the run's other readers, its edges are the run's windows."""

    def __init__(self, profile: LinkProfile, dev: str, *, backend: str, runner: Runner,
                 clock: Any = None, dport: int | None = None, mtu: int = 1500, drive: bool = True) -> None:
        import time
        self.profile = profile
        self.plan = plan(profile, dev, backend=backend, dport=dport, mtu=mtu)
        self.runner = runner
        self._clock = clock or time.monotonic
        self._drive_on_enter = drive
        self._t0: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._applied: list[list[str]] = []
        self.edges: list[tuple[str, float]] = []   # ("down"|"up", clock time applied)

    def __enter__(self) -> KernelLink:
        try:
            for argv in self.plan.apply:
                self.runner.run(argv)
                self._applied.append(argv)
            if self._drive_on_enter:
                self.drive_outages()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def drive_outages(self, *, t0: float | None = None) -> None:
        """Start toggling the outage rule, time zero at `t0` on this link's clock (default:
        now); nothing to do for a plan without outages or on a dry run."""
        if self._thread is not None:
            raise LinkError(f"outages of {self.plan.dev} are already being driven")
        self._t0 = self._clock() if t0 is None else t0
        if self.plan.outages and not self.runner.dry_run:
            self._thread = threading.Thread(target=self._drive, daemon=True,
                                            name=f"linkemu-outages-{self.plan.dev}")
            self._thread.start()

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
        if self._applied:
            for argv in self.plan.clear:
                self.runner.run(argv, check=False)
            self._applied.clear()

    def _drive(self) -> None:
        seed = self.profile.seed if self.profile.seed is not None else random.randrange(2**63)
        line = self.profile.timeline(seed=seed)
        t0 = self._t0 if self._t0 is not None else self._clock()
        rel = max(0.0, self._clock() - t0)   # started late: begin where the run's clock is
        down = line.is_down(rel)
        if down:
            self._edge("down")
        while not self._stop.is_set():
            rel = line.next_up(rel) if down else line.next_down(rel)
            if math.isinf(rel) or self._stop.wait(max(0.0, t0 + rel - self._clock())):
                return
            down = not down
            self._edge("down" if down else "up")

    def _edge(self, state: str) -> None:
        dev = self.plan.dev
        self.runner.run(nft_outage_argv(dev) if state == "down" else nft_clear_outage_argv(dev),
                        check=False)
        self.edges.append((state, self._clock()))
