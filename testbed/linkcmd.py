"""`testbed link apply|clear|show [--inventory FILE] [--link NAME] [--dry-run]`.

Holds `link_command`, which shapes the sending end of every link that `testbed.shaping`'s one
rule (`shaper_for`, the same rule `testbed run` uses) gives the kernel: MQTT links from
`connect: netns` boards inside their namespace, from `connect: ssh` boards over SSH (host key
pinned, ``sudo -n``, on the board's interface toward the broker, only TCP to the data port a run
uses; the clear commands recorded on the board for `testbed stop`). On a dry run it prints the exact commands and touches nothing. The other
links are listed with the rule's reason. It never calls exit(); errors are TestbedError or a
LinkError naming its link (the CLI prints either on one line, exit 2).

Conventions (documented in docs/linkemu.md): a netns board's namespace is
`tb-<bench>-<board>` and its data-plane interface inside it is `tb0`; an SSH board's is
`eth0` unless the lead wires another name.
"""
from __future__ import annotations

import shlex
import signal
import threading
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from linkemu.tc import BACKENDS, KernelLink, Plan, Runner, choose_backend, plan, probe
from testbed.config import BoardSpec, LinkSpec, load_inventory
from testbed.errors import TestbedError
from testbed.fabric import NETNS_DEV, netns_name
from testbed.shaping import SSH_DEV, ShaperChoice, kernel_runner, naming_link, shaper_choices

__all__ = ["ACTIONS", "LinkCommandError", "link_command", "netns_name", "NETNS_DEV", "SSH_DEV"]

ACTIONS = ("apply", "clear", "show")


class LinkCommandError(TestbedError):
    """`testbed link` was asked for something it cannot do; the message says what works."""

    exit_code = 2


@dataclass(frozen=True)
class _Target:
    choice: ShaperChoice
    runner: Runner
    board_dev: str | None = None   # an ssh board's interface toward the broker (found on the board)
    mtu: int = 1500
    dport: int | None = None       # an ssh board: only its data plane (TCP to the run's data port)

    @property
    def link(self) -> LinkSpec:
        return self.choice.link

    @property
    def board(self) -> BoardSpec:
        return self.choice.board

    @property
    def dev(self) -> str:
        assert self.choice.dev is not None
        return self.board_dev or self.choice.dev


def _targets(inventory_path: Path, link: str | None, *,
             dry_run: bool) -> tuple[list[_Target], list[str]]:
    inv = load_inventory(inventory_path)
    if link is not None and link not in {lk.name for lk in inv.links}:
        raise LinkCommandError(f"no link named {link!r}; expected one of "
                               f"{', '.join(lk.name for lk in inv.links)}")
    targets, skipped = [], []
    for name, choice in shaper_choices(inv).items():
        if link is not None and name != link:
            continue
        if choice.kernel:
            targets.append(_Target(choice, kernel_runner(choice, bench=inv.bench, dry_run=dry_run)))
        else:
            skipped.append(f"{name}: {choice.reason}; nothing to apply")
    return targets, skipped


def _backend(target: _Target, backend: str | None, *, dry_run: bool) -> str:
    if backend is not None and backend not in BACKENDS:
        raise LinkCommandError(f"unknown backend {backend!r}; expected one of "
                               f"{', '.join(BACKENDS)}")
    if dry_run:
        return backend or "netem"  # a dry run probes nothing: the kernels of Pi OS and JetPack
    caps = probe(runner=target.runner) if target.runner.remote else probe()   # the board's kernel, or this one
    return choose_backend(caps, prefer=backend)


def _on_boards(stack: ExitStack, inv: Any, targets: list[_Target]) -> list[_Target]:
    """ssh targets with a session: their runner goes over SSH (host key pinned, ``sudo -n``), their
    device is the board's interface toward the broker."""
    from testbed.remote.network import board_route, broker_address_for, ssh_data_port
    from testbed.remote.ssh import Boards, RemoteError, check_pinned

    names = sorted({t.board.name for t in targets if t.board.connect == "ssh"})
    if not names:
        return targets
    check_pinned(inv, names)
    boards = stack.enter_context(Boards(inv, names))
    if boards.failed:
        raise RemoteError("; ".join(str(o.error) for o in boards.failed.values()))
    out = []
    for t in targets:
        if t.board.connect != "ssh":
            out.append(t)
            continue
        runner = boards.runner(t.board.name)
        dev, mtu = board_route(runner, broker_address_for(inv, t.board))
        out.append(_Target(t.choice, runner, board_dev=dev, mtu=mtu, dport=ssh_data_port(inv)))
    return out


def _print_plan(target: _Target, p: Plan, commands: list[list[str]]) -> None:
    print(f"# link {target.link.name}: {target.board.name} ({target.board.connect}) dev {p.dev}, "
          f"profile {target.link.profile.name}, backend {p.backend}")
    for note in p.notes:
        print(f"#   {note}")
    for argv in commands:
        print(shlex.join(target.runner.full(argv)))


def _remember_clear(target: _Target, p: Plan) -> None:
    """On an ssh board, record the clear commands there (``testbed stop`` runs them)."""
    boards = getattr(target.runner, "boards", None)
    if boards is not None:
        from testbed.remote.agents import record_shaping
        boards.call(record_shaping(boards.live(target.board.name), p.clear))


def _apply(target: _Target, p: Plan, *, dry_run: bool) -> None:
    if not p.outages or dry_run:
        for argv in p.apply:
            target.runner.run(argv)
        return
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with KernelLink(target.link.profile, p.dev, backend=p.backend, runner=target.runner):
            print(f"# link {target.link.name}: driving outages; Ctrl-C to stop and clear")
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one(action: str, target: _Target, backend: str | None, *, dry_run: bool) -> None:
    chosen = _backend(target, backend, dry_run=dry_run)
    p = plan(target.link.profile, target.dev, backend=chosen, mtu=target.mtu, dport=target.dport)
    commands = {"apply": p.apply, "clear": p.clear, "show": p.show}[action]
    if dry_run:
        _print_plan(target, p, commands)
        return
    if action == "apply":
        _remember_clear(target, p)
        _apply(target, p, dry_run=dry_run)
    elif action == "clear":
        for argv in p.clear:
            target.runner.run(argv, check=False)
    else:
        for argv in p.show:
            print(target.runner.run(argv, check=False), end="")


def link_command(action: str, *, inventory_path: Path, dry_run: bool, link: str | None,
                 backend: str | None = None) -> int:
    """Apply, clear or show kernel shaping for the inventory's MQTT links; 0 on success."""
    if action not in ACTIONS:
        raise LinkCommandError(f"unknown action {action!r}; expected one of {', '.join(ACTIONS)}")
    targets, skipped = _targets(Path(inventory_path), link, dry_run=dry_run)
    for line in skipped:
        print(f"# {line}")
    with ExitStack() as stack:   # ssh boards: sessions for the whole command, closed at its end
        if not dry_run:
            targets = _on_boards(stack, load_inventory(Path(inventory_path)), targets)
        for target in targets:
            with naming_link(target.link.name):   # a LinkError: one line naming the link, exit 2
                _one(action, target, backend, dry_run=dry_run)
    if not targets:
        print("# no link is shaped by the kernel backend (MQTT links from netns or ssh boards)")
    return 0
