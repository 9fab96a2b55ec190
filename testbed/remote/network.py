"""Where a physical bench's traffic goes: addresses, ports and a board's route, with no SSH library.

Holds ``MQTT_PORT``, ``ssh_data_port`` (the one rule for the broker port kernel-shaped senders on
ssh boards publish to), ``laptop_address`` (this machine's address on the route to a board: where
an embedded broker listens for it; never 0.0.0.0), ``broker_address_for`` (where an ssh board
reaches the broker) and ``board_route`` (the board's interface and MTU toward an address: where its
kernel shapes). Light on purpose: the orchestrator imports it for every run, simulated ones too.
"""
from __future__ import annotations

import re
import socket

from linkemu.errors import LinkError
from linkemu.tc import Runner
from testbed.config import BoardSpec, Inventory
from testbed.errors import TestbedError

__all__ = ["MQTT_PORT", "ssh_data_port", "laptop_address", "board_route", "broker_address_for"]

_DEV_RE = re.compile(r"[A-Za-z0-9_.@:-]{1,15}")   # a Linux interface name


def laptop_address(host: str, *, port: int = 22) -> str:
    """The address this machine uses to reach ``host`` (a UDP socket's source; nothing is sent)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(infos[0][4])
            return str(sock.getsockname()[0])
    except OSError as exc:
        raise TestbedError(f"{host}: no route from this machine ({exc.strerror or exc}); expected a board "
                          f"address on the bench LAN") from None


def board_route(runner: Runner, to: str) -> tuple[str, int]:
    """The interface a board sends to ``to`` through (``ip route get``), and its MTU: where the
    board's kernel shapes its traffic toward the broker."""
    route = runner.run(["ip", "-o", "route", "get", to]).split()
    dev = route[route.index("dev") + 1] if "dev" in route[:-1] else ""
    if not _DEV_RE.fullmatch(dev):   # what the board printed is not trusted to name a device
        raise LinkError(f"board {getattr(runner, 'name', '?')}: no route to {to} "
                        f"(`ip route get` printed {' '.join(route)[:120]!r})")
    mtu = runner.run(["cat", f"/sys/class/net/{dev}/mtu"]).strip()
    return dev, int(mtu) if mtu.isdigit() else 1500


MQTT_PORT = 1883   # an embedded broker's port on a physical bench (the inventory's broker.port wins)


def ssh_data_port(inventory: Inventory) -> int:
    """The broker port that kernel-shaped senders on ssh boards publish to (the board's kernel
    classifies their data plane by it): an embedded broker's port + 1 (it listens there too),
    fixed, so agent.json stays the same; an external broker has only its own port, which the
    sender's control plane then shares (its telemetry is shaped with the data)."""
    if inventory.broker.mode == "external":
        return inventory.broker.port or MQTT_PORT
    return (inventory.broker.port or MQTT_PORT) + 1


def broker_address_for(inventory: Inventory, board: BoardSpec) -> str:
    """Where an ssh board reaches the broker: the external broker's host, the inventory's
    embedded broker host, or this machine's address on the route to the board."""
    spec = inventory.broker
    if spec.mode == "external" or spec.host:
        return str(spec.host)
    return laptop_address(str(board.host), port=board.port or 22)
