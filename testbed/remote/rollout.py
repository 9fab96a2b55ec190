"""Rolling a bench out: doctor first, then each board's environment, then its bundle; all boards at once.

Holds ``laptop_address`` (the laptop's own address on the route to a board: where an embedded
broker listens for it; never 0.0.0.0), ``broker_address_for`` (where a board reaches the broker),
``board_route`` (the board's interface and MTU toward an address: where its kernel shapes),
``env_for`` (a board's wheels: its group's wheelhouse,
built on the laptop and cached by content hash, or just this project's wheel for ``env:
python``) and ``rollout`` (for every named board in parallel: refuse what doctor refused, push
the environment, push the staged bundle; one ``Outcome`` per board with what was transferred).

It must not start agents or stage configs (the orchestrator writes each board's files).
"""
from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from linkemu.errors import LinkError
from linkemu.tc import Runner
from testbed.bundle import sha256_file
from testbed.config import BoardSpec, Inventory
from testbed.errors import TestbedError
from testbed.remote.boardpython import BoardPython
from testbed.remote.deploy import BoardBundle, EnvSpec, Pushed, push_board
from testbed.remote.doctor import BoardReport, doctor, summary_line
from testbed.remote.ssh import Boards, Outcome, RemoteError, Session
from testbed.remote.wheelhouse import build_wheelhouse, project_wheel, requirements_for

__all__ = ["MQTT_PORT", "ssh_data_port", "laptop_address", "board_route", "broker_address_for", "env_for", "rollout", "Rolled"]


def laptop_address(host: str, *, port: int = 22) -> str:
    """The address this machine uses to reach ``host`` (a UDP socket's source; nothing is sent)."""
    try:
        infos = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(infos[0][4])
            return str(sock.getsockname()[0])
    except OSError as exc:
        raise RemoteError(f"{host}: no route from this machine ({exc.strerror or exc}); expected a board "
                          f"address on the bench LAN") from None


def board_route(runner: Runner, to: str) -> tuple[str, int]:
    """The interface a board sends to ``to`` through (``ip route get``), and its MTU: where the
    board's kernel shapes its traffic toward the broker."""
    route = runner.run(["ip", "-o", "route", "get", to]).split()
    if "dev" not in route:
        raise LinkError(f"board {getattr(runner, 'name', '?')}: no route to {to}")
    dev = route[route.index("dev") + 1]
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


def env_for(board: BoardSpec, python: BoardPython, *, cache_dir: Path) -> EnvSpec:
    """The wheels ``board`` needs and the requirements pip installs from them."""
    own = project_wheel(cache_dir=cache_dir)
    if board.env == "python":
        wheels = {own.name: own}
        reqs: tuple[str, ...] = ()
        key_src = sha256_file(own)
    else:
        reqs = tuple(requirements_for(runtime=board.runtime, env=str(board.env)))
        house = build_wheelhouse(board=python, requirements=reqs, cache_dir=cache_dir)
        wheels = {name: Path(house.path) / name for name in house.files}
        wheels[own.name] = own
        key_src = f"{house.key}:{sha256_file(own)}"
    sums = {n: sha256_file(p) for n, p in wheels.items()}
    import hashlib
    key = hashlib.sha256(f"{board.env}\0{key_src}\0{','.join(reqs)}".encode()).hexdigest()[:20]
    return EnvSpec(key=key, wheels=wheels, sha256=sums, requirements=reqs, project_wheel=own.name)


@dataclass
class Rolled:
    """One board's rollout: what the environment and the bundle pushes did."""

    env: Pushed
    bundle: Pushed

    @property
    def bytes(self) -> int:
        return self.env.bytes + self.bundle.bytes


def rollout(boards: Boards, inventory: Inventory, staged: Mapping[str, Path], *, cache_dir: Path,
            reports: Mapping[str, BoardReport] | None = None) -> dict[str, Outcome[Rolled]]:
    """Doctor (unless ``reports`` are given), then environment and bundle for every staged board."""
    names = list(staged)
    if reports is None:
        reports = doctor(inventory, names=names, boards=boards, cache_dir=cache_dir)
    out: dict[str, Outcome[Rolled]] = {}
    envs: dict[str, EnvSpec] = {}
    for name in names:
        rep = reports.get(name)
        if rep is None or not rep.ok or rep.python is None:
            out[name] = Outcome(name, error=summary_line({name: rep}) if rep else f"{name}: not checked")
            continue
        try:
            envs[name] = env_for(inventory.boards[name], rep.python, cache_dir=cache_dir)
        except TestbedError as exc:
            out[name] = Outcome(name, error=f"{name}: {exc}", exc=exc)

    async def one(s: Session) -> Rolled:
        env, bundle = await push_board(s, env=envs[s.board.name],
                                       bundle=BoardBundle.from_dir(s.board.name, staged[s.board.name]))
        return Rolled(env=env, bundle=bundle)
    out.update(boards.each(one, names=list(envs)))
    return {n: out[n] for n in names}
