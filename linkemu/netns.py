"""Network namespaces joined by a veth pair: where the kernel backend shapes for real.

Holds `netns_pair_argv` / `netns_teardown_argv` (pure argv builders) and `NetnsPair`, a
context manager that creates two namespaces, a veth pair between them and the addresses
it is given (inside those namespaces only), and deletes the namespaces (which removes the
veth too) on exit. Also `board_netns_argv` / `board_netns_teardown_argv` and `BoardNetns`:
one namespace joined to the root namespace by a veth pair (a simulated board whose traffic
leaves through its own interface), `host_networks` (what the host already uses) and
`pick_subnets` (free /30s from a pool). Root only. It touches no interface or address but
the ones it creates, and must not import anything from `nodes` or `testbed`.
"""
from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Callable
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from linkemu.errors import LinkError
from linkemu.tc import Runner

__all__ = ["NetnsPair", "netns_pair_argv", "netns_teardown_argv", "BoardNetns", "board_netns_argv",
           "board_netns_teardown_argv", "host_networks", "pick_subnets", "SUBNET_POOL", "BOARD_MTU",
           "existing_namespaces", "namespace_pids"]

# RFC 2544's benchmarking range: reserved for testing network devices, routed nowhere, and
# rarely configured on a workstation. /30s are taken from 198.18.213.0 on; any that overlaps
# an address or route of the host is skipped.
SUBNET_POOL = "198.18.0.0/15"
# A board's veth MTU: 298 = IPv4 20 + TCP 32 + 246, so one TCP segment carries one HBC PSDU's
# payload (255 - 9 header bytes), and no GSO: a token bucket then lets at most one PSDU's worth
# through ahead of its rate, and netem's per-PSDU cells line up with packets.
BOARD_MTU = 298
POOL_START = "198.18.213.0"


@dataclass(frozen=True)
class _End:
    ns: str
    dev: str
    addr: str  # with prefix length, e.g. 10.213.0.1/30


def netns_pair_argv(a: _End, b: _End) -> list[list[str]]:
    return [["ip", "netns", "add", a.ns], ["ip", "netns", "add", b.ns],
            ["ip", "-n", a.ns, "link", "add", a.dev, "type", "veth", "peer", "name", b.dev,
             "netns", b.ns],
            ["ip", "-n", a.ns, "addr", "add", a.addr, "dev", a.dev],
            ["ip", "-n", b.ns, "addr", "add", b.addr, "dev", b.dev],
            ["ip", "-n", a.ns, "link", "set", a.dev, "up"],
            ["ip", "-n", b.ns, "link", "set", b.dev, "up"],
            ["ip", "-n", a.ns, "link", "set", "lo", "up"],
            ["ip", "-n", b.ns, "link", "set", "lo", "up"]]


def netns_teardown_argv(a: _End, b: _End) -> list[list[str]]:
    return [["ip", "netns", "del", b.ns], ["ip", "netns", "del", a.ns]]


def _run_or_undo(runner: Runner, argvs: list[list[str]], *, done: list[list[str]],
                 undo: Callable[[], None]) -> None:
    """Run ``argvs`` in order (root only unless dry run), recording each in ``done``; on any
    failure call ``undo`` (which tears down what ``done`` says was made) and re-raise."""
    if not runner.dry_run and os.geteuid() != 0:
        raise LinkError("network namespaces need root")
    try:
        for argv in argvs:
            runner.run(argv)
            done.append(argv)
    except BaseException:
        undo()
        raise


class NetnsPair:
    """Two fresh namespaces `<prefix>-a` / `<prefix>-b` joined by veth `<dev>a` / `<dev>b`
    with addresses `subnet`.1 and `subnet`.2 (/30). `a` and `b` are the ends."""

    def __init__(self, *, prefix: str | None = None, subnet: str = "10.213.0",
                 dev: str = "le", runner: Runner | None = None) -> None:
        prefix = prefix or f"linkemu-{os.getpid()}"
        self.a = _End(f"{prefix}-a", f"{dev}a", f"{subnet}.1/30")
        self.b = _End(f"{prefix}-b", f"{dev}b", f"{subnet}.2/30")
        self.runner = runner or Runner.local()
        self._done: list[list[str]] = []

    @property
    def addr_a(self) -> str:
        return self.a.addr.split("/")[0]

    @property
    def addr_b(self) -> str:
        return self.b.addr.split("/")[0]

    def exec_prefix(self, end: _End) -> list[str]:
        return ["ip", "netns", "exec", end.ns]

    def __enter__(self) -> NetnsPair:
        _run_or_undo(self.runner, netns_pair_argv(self.a, self.b), done=self._done, undo=self.__exit__)
        return self

    def __exit__(self, *exc: Any) -> None:
        created = {argv[3] for argv in self._done if argv[:3] == ["ip", "netns", "add"]}
        for argv in netns_teardown_argv(self.a, self.b):
            if argv[3] in created:
                self.runner.run(argv, check=False)
        self._done.clear()


# ---------------------------------------------------------------------------- one board


def board_netns_argv(ns: str, *, host_dev: str, inner_dev: str, host_addr: str,
                     ns_addr: str, mtu: int | None = None) -> list[list[str]]:
    """Namespace `ns`, a veth pair `host_dev` (root namespace, `host_addr`, e.g. 10.0.0.1/30)
    <-> `inner_dev` (inside `ns`, `ns_addr`), both up, and `ns`'s loopback up; with `mtu`,
    both ends get that MTU and no GSO (one segment per packet)."""
    sizing = [] if mtu is None else [
        ["ip", "link", "set", host_dev, "mtu", str(mtu), "gso_max_segs", "1"],
        ["ip", "-n", ns, "link", "set", inner_dev, "mtu", str(mtu), "gso_max_segs", "1"]]
    return [["ip", "netns", "add", ns],
            ["ip", "link", "add", host_dev, "type", "veth", "peer", "name", inner_dev, "netns", ns],
            *sizing,
            ["ip", "addr", "add", host_addr, "dev", host_dev],
            ["ip", "-n", ns, "addr", "add", ns_addr, "dev", inner_dev],
            ["ip", "link", "set", host_dev, "up"],
            ["ip", "-n", ns, "link", "set", inner_dev, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"]]


def board_netns_teardown_argv(ns: str, *, host_dev: str) -> list[list[str]]:
    """Undo `board_netns_argv`: the host end first (its peer goes with it), then `ns`."""
    return [["ip", "link", "del", host_dev], ["ip", "netns", "del", ns]]


def host_networks(runner: Runner | None = None) -> list[ipaddress.IPv4Network]:
    """IPv4 networks of the root namespace's addresses and routes (all tables)."""
    runner = runner or Runner.local()
    nets: list[ipaddress.IPv4Network] = []
    for entry in json.loads(runner.run(["ip", "-j", "-4", "addr", "show"]) or "[]"):
        for a in entry.get("addr_info", []):
            nets.append(ipaddress.ip_network(f"{a['local']}/{a.get('prefixlen', 32)}", strict=False))
    for r in json.loads(runner.run(["ip", "-j", "-4", "route", "show", "table", "all"]) or "[]"):
        dst = r.get("dst", "")
        if dst in ("default", "") or ":" in dst:
            continue
        try:
            nets.append(ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False))
        except ValueError:
            continue
    return nets


def pick_subnets(n: int, *, used: Iterable[ipaddress.IPv4Network], pool: str = SUBNET_POOL,
                 start: str = POOL_START) -> list[ipaddress.IPv4Network]:
    """`n` /30s of `pool`, from `start` on, none overlapping `used`."""
    used = list(used)
    base = ipaddress.ip_network(pool)
    out: list[ipaddress.IPv4Network] = []
    for net in base.subnets(new_prefix=30):
        if net.network_address < ipaddress.ip_address(start):
            continue
        if not any(net.overlaps(u) for u in used):
            out.append(net)
            if len(out) == n:
                return out
    raise LinkError(f"no {n} free /30 subnets left in {pool} from {start} (the host uses them)")


class BoardNetns:
    """One namespace joined to the root namespace by a veth pair. `subnet` is a /30: the
    host end gets its first address, the namespace end its second. Deleted on exit, also
    after a failure half-way through setting it up."""

    def __init__(self, ns: str, *, host_dev: str, inner_dev: str,
                 subnet: ipaddress.IPv4Network | str, mtu: int | None = BOARD_MTU,
                 runner: Runner | None = None) -> None:
        if len(host_dev) > 15 or len(inner_dev) > 15:
            raise LinkError(f"interface names are at most 15 characters; got {host_dev!r}, {inner_dev!r}")
        net = ipaddress.ip_network(subnet)
        if net.prefixlen != 30:
            raise LinkError(f"expected a /30 subnet for namespace {ns}; got {net}")
        hosts = list(net.hosts())
        self.ns, self.host_dev, self.inner_dev, self.subnet = ns, host_dev, inner_dev, net
        self.host_addr, self.ns_addr = str(hosts[0]), str(hosts[1])
        self.mtu = mtu
        self.runner = runner or Runner.local()
        self._done: list[list[str]] = []

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def as_dict(self) -> dict[str, Any]:
        return {"namespace": self.ns, "subnet": str(self.subnet), "host_dev": self.host_dev,
                "host_addr": self.host_addr, "inner_dev": self.inner_dev, "ns_addr": self.ns_addr,
                "mtu": self.mtu}

    def argv(self) -> list[list[str]]:
        return board_netns_argv(self.ns, host_dev=self.host_dev, inner_dev=self.inner_dev,
                                host_addr=f"{self.host_addr}/30", ns_addr=f"{self.ns_addr}/30", mtu=self.mtu)

    def __enter__(self) -> BoardNetns:
        _run_or_undo(self.runner, self.argv(), done=self._done, undo=self.__exit__)
        return self

    def __exit__(self, *exc: Any) -> None:
        made_ns = any(a[:3] == ["ip", "netns", "add"] for a in self._done)
        made_dev = any(a[:3] == ["ip", "link", "add"] for a in self._done)
        for argv in board_netns_teardown_argv(self.ns, host_dev=self.host_dev):
            if (argv[1] == "link" and made_dev) or (argv[1] == "netns" and made_ns):
                self.runner.run(argv, check=False)
        self._done.clear()


def existing_namespaces(runner: Runner | None = None) -> list[str]:
    """Names listed by `ip netns list`."""
    out = (runner or Runner.local()).run(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(ns: str, runner: Runner | None = None) -> list[int]:
    out = (runner or Runner.local()).run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in out.split() if x.isdigit()]
