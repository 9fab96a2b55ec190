"""`testbed link apply|clear|show [--inventory FILE] [--link NAME] [--dry-run]`.

Holds `link_command`, which shapes the wearable (sender) end of every MQTT link of the
inventory with the kernel backend of `linkemu.tc`: inside the board's network namespace for
`connect: netns` boards, over SSH for `connect: ssh` boards (dry run only in this step).
On a dry run it prints the exact commands and touches nothing. Links on other transports
(serial, BLE) and boards on `connect: local` are shaped in user space by the agent and are
listed as such. It never calls exit(); errors are TestbedError (the CLI prints them).

Conventions (documented in docs/linkemu.md): a netns board's namespace is
`tb-<bench>-<board>` and its data-plane interface inside it is `tb0`; an SSH board's is
`eth0` unless the lead wires another name.
"""
from __future__ import annotations

import shlex
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

from linkemu.errors import LinkError
from linkemu.tc import BACKENDS, KernelLink, Plan, Runner, choose_backend, plan, probe
from testbed.config import BoardSpec, LinkSpec, load_inventory
from testbed.errors import TestbedError
from testbed.fabric import NETNS_DEV, netns_name

__all__ = ["ACTIONS", "LinkCommandError", "link_command", "netns_name", "NETNS_DEV", "SSH_DEV"]

ACTIONS = ("apply", "clear", "show")
SSH_DEV = "eth0"
KERNEL_CONNECTS = ("netns", "ssh")


class LinkCommandError(TestbedError):
    """`testbed link` was asked for something it cannot do; the message says what works."""

    exit_code = 2


@dataclass(frozen=True)
class _Target:
    link: LinkSpec
    board: BoardSpec
    dev: str
    runner: Runner


def _runner(bench: str, board: BoardSpec, *, dry_run: bool) -> tuple[Runner, str]:
    if board.connect == "netns":
        return Runner.netns(netns_name(bench, board.name), dry_run=dry_run), NETNS_DEV
    return Runner.ssh(board.host or board.name, user=board.user, port=board.port or 22,
                      options=("-o", "BatchMode=yes"), dry_run=dry_run), SSH_DEV


def _targets(inventory_path: Path, link: str | None, *,
             dry_run: bool) -> tuple[list[_Target], list[str]]:
    inv = load_inventory(inventory_path)
    links = [lk for lk in inv.links if link is None or lk.name == link]
    if link is not None and not links:
        raise LinkCommandError(f"no link named {link!r}; expected one of "
                               f"{', '.join(lk.name for lk in inv.links)}")
    targets, skipped = [], []
    for lk in links:
        board = inv.boards[lk.src]
        if lk.transport.type != "mqtt":
            skipped.append(f"{lk.name}: transport {lk.transport.type} is shaped in user space by "
                           "the agent (shaper backend); nothing to apply")
        elif board.connect not in KERNEL_CONNECTS:
            skipped.append(f"{lk.name}: board {board.name} has connect: {board.connect}; its "
                           "traffic is shaped in user space (kernel shaping needs netns or ssh)")
        else:
            runner, dev = _runner(inv.bench, board, dry_run=dry_run)
            targets.append(_Target(lk, board, dev, runner))
    return targets, skipped


def _backend(target: _Target, backend: str | None, *, dry_run: bool) -> str:
    if backend is not None and backend not in BACKENDS:
        raise LinkCommandError(f"unknown backend {backend!r}; expected one of "
                               f"{', '.join(BACKENDS)}")
    if dry_run:
        return backend or "netem"  # a dry run probes nothing: the kernels of Pi OS and JetPack
    return choose_backend(probe(), prefer=backend)


def _print_plan(target: _Target, p: Plan, commands: list[list[str]]) -> None:
    print(f"# link {target.link.name}: {target.board.name} ({target.board.connect}) dev {p.dev}, "
          f"profile {target.link.profile.name}, backend {p.backend}")
    for note in p.notes:
        print(f"#   {note}")
    for argv in commands:
        print(shlex.join(target.runner.full(argv)))


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
    if target.board.connect == "ssh" and not dry_run:
        raise LinkCommandError(f"link {target.link.name}: board {target.board.name} is reached "
                               "over SSH, which `testbed link` only prints in this version; "
                               "run with --dry-run and apply the commands yourself")
    chosen = _backend(target, backend, dry_run=dry_run)
    try:
        p = plan(target.link.profile, target.dev, backend=chosen)
    except LinkError as exc:
        raise LinkCommandError(f"link {target.link.name}: {exc}") from None
    commands = {"apply": p.apply, "clear": p.clear, "show": p.show}[action]
    if dry_run:
        _print_plan(target, p, commands)
        return
    if action == "apply":
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
    for target in targets:
        try:
            _one(action, target, backend, dry_run=dry_run)
        except LinkError as exc:
            raise LinkCommandError(f"link {target.link.name}: {exc}") from None
    if not targets:
        print("# no link is shaped by the kernel backend (MQTT links from netns or ssh boards)")
    return 0
