"""Network namespaces joined by a veth pair: where the kernel backend shapes for real.

Holds `netns_pair_argv` / `netns_teardown_argv` (pure argv builders) and `NetnsPair`, a
context manager that creates two namespaces, a veth pair between them and the addresses
it is given (inside those namespaces only), and deletes the namespaces (which removes the
veth too) on exit. Root only. It touches no other interface or address, and must not
import anything from `nodes` or `testbed`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from linkemu.errors import LinkError
from linkemu.tc import Runner

__all__ = ["NetnsPair", "netns_pair_argv", "netns_teardown_argv"]


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
        if not self.runner.dry_run and os.geteuid() != 0:
            raise LinkError("network namespaces need root")
        try:
            for argv in netns_pair_argv(self.a, self.b):
                self.runner.run(argv)
                self._done.append(argv)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        created = {argv[3] for argv in self._done if argv[:3] == ["ip", "netns", "add"]}
        for argv in netns_teardown_argv(self.a, self.b):
            if argv[3] in created:
                self.runner.run(argv, check=False)
        self._done.clear()
