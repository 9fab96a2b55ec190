"""Which shaper each link gets, and how the kernel one is reached: the one rule for
``testbed run`` and ``testbed link``.

Holds ``shaper_for(link, board)``: a link sent over MQTT from a ``connect: netns`` board is
shaped by the kernel on the board's ``tb0`` inside its namespace; one sent over MQTT from a
``connect: ssh`` board by the kernel on the board's interface toward the broker (``eth0`` on a
Pi; found with ``ip route get`` at run time), over SSH; every
other link (serial, BLE, or a ``connect: local`` sender) by the user-space shaper on the
sending agent's egress. Also ``kernel_runner`` (the ``linkemu.tc.Runner`` for a kernel
choice), ``plan_kernel_links`` (every kernel-shaped link of a run, its backend probed once
and its plan checked before anything starts), and ``naming_link``, which gives a
``LinkError`` the name of its link; the CLI turns that error into one line and exit 2.

It decides and plans only: it applies nothing (``linkemu.tc.KernelLink`` does, entered by the
orchestrator or ``testbed link``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from linkemu.errors import LinkError
from linkemu.netns import BOARD_MTU
from linkemu.profile import LinkProfile
from linkemu.tc import Runner, choose_backend, plan, probe
from testbed.config import BoardSpec, Inventory, LinkSpec
from testbed.errors import RunError
from testbed.fabric import NETNS_DEV, netns_name

__all__ = ["USER", "KERNEL_NETNS", "KERNEL_SSH", "SSH_DEV", "ShaperChoice", "KernelShaped", "shaper_for",
           "shaper_choices", "kernel_runner", "plan_kernel_links", "naming_link"]

USER = "user"
KERNEL_NETNS = "kernel-netns"
KERNEL_SSH = "kernel-ssh"
SSH_DEV = "eth0"   # an SSH board's data-plane interface (docs/linkemu.md)


@dataclass(frozen=True)
class ShaperChoice:
    """Where ``link`` is shaped: ``kind`` is USER, KERNEL_NETNS or KERNEL_SSH; ``reason`` says why."""

    link: LinkSpec
    board: BoardSpec
    kind: str
    reason: str

    @property
    def kernel(self) -> bool:
        return self.kind != USER

    @property
    def dev(self) -> str | None:
        """The interface the kernel shapes (None for the user-space shaper)."""
        return {KERNEL_NETNS: NETNS_DEV, KERNEL_SSH: SSH_DEV}.get(self.kind)


def shaper_for(link: LinkSpec, board: BoardSpec) -> ShaperChoice:
    """The one rule: which shaper ``link``, sent by ``board``, gets."""
    if board.name != link.src:
        raise ValueError(f"link {link.name} is sent by {link.src}, not {board.name}")
    if link.transport.type != "mqtt":
        return ShaperChoice(link, board, USER, f"transport {link.transport.type} is shaped in user space by the "
                                               "agent (shaper backend)")
    if board.connect == "netns":
        return ShaperChoice(link, board, KERNEL_NETNS, f"MQTT from netns board {board.name}: the kernel shapes "
                                                       f"{NETNS_DEV} in its namespace")
    if board.connect == "ssh":
        return ShaperChoice(link, board, KERNEL_SSH, f"MQTT from ssh board {board.name}: the board's kernel "
                                                     f"shapes its interface toward the broker ({SSH_DEV} on a Pi)")
    return ShaperChoice(link, board, USER, f"board {board.name} has connect: {board.connect}; its traffic is "
                                           "shaped in user space (kernel shaping needs netns or ssh)")


def shaper_choices(inventory: Inventory) -> dict[str, ShaperChoice]:
    """Every link's choice, by link name, in inventory order."""
    return {lk.name: shaper_for(lk, inventory.boards[lk.src]) for lk in inventory.links}


def kernel_runner(choice: ShaperChoice, *, bench: str, dry_run: bool = False) -> Runner:
    """The runner that executes tc/nft for a kernel choice: inside the board's namespace, or
    over SSH (batch mode: a password prompt fails at once)."""
    board = choice.board
    if choice.kind == KERNEL_NETNS:
        return Runner.netns(netns_name(bench, board.name), dry_run=dry_run)
    if choice.kind == KERNEL_SSH:
        return Runner.ssh(board.host or board.name, user=board.user, port=board.port or 22,
                          options=("-o", "BatchMode=yes"), dry_run=dry_run)
    raise ValueError(f"link {choice.link.name} is shaped in user space; it has no kernel runner")


@contextmanager
def naming_link(name: str) -> Iterator[None]:
    """Re-raise a LinkError from inside as one that names link ``name``."""
    try:
        yield
    except LinkError as exc:
        raise LinkError(f"link {name}: {exc}") from None


@dataclass(frozen=True)
class KernelShaped:
    """A link the kernel shapes: its choice, the backend, the effective profile."""

    choice: ShaperChoice
    backend: str
    profile: LinkProfile

    @property
    def link(self) -> str:
        return self.choice.link.name

    @property
    def board(self) -> str:
        return self.choice.board.name

    @property
    def shaper(self) -> str:
        return f"kernel:{self.backend}"


def plan_kernel_links(inventory: Inventory, profiles: Mapping[str, LinkProfile], *,
                      caps: dict[str, Any] | None = None,
                      probe_ssh: Callable[[str], dict[str, Any]] | None = None) -> dict[str, KernelShaped]:
    """The links ``shaper_for`` gives the kernel, each with the backend its kernel offers and its
    data-plane plan checked: a knob the backend cannot honour, or a kernel without the
    classifier or nftables the plan needs, is a RunError naming the link's profile, before
    anything starts. netns boards share this machine's kernel (probed once, or ``caps``); an ssh
    board's kernel is probed on the board by ``probe_ssh(board name)``; without it such a link is
    refused (a run that does not reach the board cannot shape its kernel)."""
    chosen = [(i, c) for i, c in enumerate(shaper_choices(inventory).values()) if c.kernel]
    for _, c in chosen:
        if c.kind == KERNEL_SSH and probe_ssh is None:
            raise RunError(f"link {c.link.name}: {c.reason}; shaping it needs an SSH session with the board "
                           "(use `testbed link apply --dry-run` for the commands)")
    if not chosen:
        return {}
    board_caps: dict[str, dict[str, Any]] = {}

    def caps_of(choice: ShaperChoice) -> dict[str, Any]:
        key = choice.board.name if choice.kind == KERNEL_SSH else ""
        if key not in board_caps:
            try:
                if choice.kind == KERNEL_SSH:
                    assert probe_ssh is not None
                    board_caps[key] = probe_ssh(key)
                else:
                    board_caps[key] = caps if caps is not None else probe()
            except LinkError as exc:
                raise RunError(f"kernel shaping of link {choice.link.name} on "
                               f"{choice.board.name if key else 'this machine'}: {exc}") from None
        return board_caps[key]

    out = {}
    for i, choice in chosen:
        name = choice.link.name
        where = f"{inventory.path}:{inventory.line_of(f'links[{i}].profile') or '?'}: links[{i}].profile"
        c = caps_of(choice)
        try:
            backend = choose_backend(c)
            p = plan(profiles[name], NETNS_DEV, backend=backend, dport=1, mtu=BOARD_MTU)
            if p.apply and not c.get("u32"):
                raise LinkError("shaping only the data plane needs tc's u32 classifier, which this kernel lacks "
                                f"({c.get('errors', {}).get('u32', 'probe said no')})")
            if any(argv[0] == "nft" for argv in p.apply) and not c.get("nft"):
                raise LinkError("outages and iid loss need nftables, which is not usable here "
                                f"({c.get('errors', {}).get('nft', 'probe said no')})")
        except LinkError as exc:
            raise RunError(f"{where}: link {name} (from {choice.board.connect} board {choice.board.name}, shaped by "
                           f"the kernel): {exc}") from None
        out[name] = KernelShaped(choice=choice, backend=backend, profile=profiles[name])
    return out
