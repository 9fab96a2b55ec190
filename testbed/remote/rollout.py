"""Rolling a bench out: doctor first, then each board's environment, then its bundle; all boards at once.

Holds ``env_for`` (a board's wheels: its group's wheelhouse,
built on the laptop and cached by content hash, or just this project's wheel for ``env:
python``) and ``rollout`` (for every named board in parallel: refuse what doctor refused, push
the environment, push the staged bundle; one ``Outcome`` per board with what was transferred).

It must not start agents or stage configs (the orchestrator writes each board's files).
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from testbed.hashing import sha256_file
from testbed.config import BoardSpec, Inventory
from testbed.errors import TestbedError
from testbed.remote.boardpython import BoardPython
from testbed.remote.deploy import BoardBundle, EnvSpec, Pushed, push_board
from testbed.remote.doctor import BoardReport, doctor, summary_line
from testbed.remote.ssh import Boards, Outcome, Session
from testbed.remote.wheelhouse import build_wheelhouse, project_wheel, requirements_for

__all__ = ["env_for", "rollout", "Rolled"]


def env_for(board: BoardSpec, python: BoardPython, *, cache_dir: Path) -> EnvSpec:
    """The wheels ``board`` needs and the requirements pip installs from them."""
    if board.env == "python":   # the interpreter as it is: only this project's wheel
        own = project_wheel(cache_dir=cache_dir)
        sums, folder, reqs = {own.name: sha256_file(own)}, own.parent, ()
        own_name, key_src = own.name, sums[own.name]
    else:                       # the group's wheelhouse, this project's wheel included (hashes from its list)
        reqs = tuple(requirements_for(runtime=board.runtime, env=str(board.env)))
        house = build_wheelhouse(board=python, requirements=reqs, cache_dir=cache_dir)
        assert house.project_wheel is not None
        sums, folder, own_name, key_src = dict(house.files), Path(house.path), house.project_wheel, house.key
    wheels = {name: folder / name for name in sums}
    key = hashlib.sha256(f"{board.env}\0{key_src}\0{','.join(reqs)}".encode()).hexdigest()[:20]
    return EnvSpec(key=key, wheels=wheels, sha256=sums, requirements=reqs, project_wheel=own_name)


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
