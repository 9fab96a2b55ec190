"""Putting a board's environment and bundle on an ssh board: push only what it lacks, switch atomically.

Holds ``BoardBundle`` (the files one board needs, as staged on the laptop: its shard, agent.json,
samples; keyed by the sha256 of their names and contents), ``push_bundle`` (SFTP into
``<workdir>/bundles/.partial-<key>-<nonce>``, every file's sha256 checked on the board, renamed to
``bundles/<key>`` and the ``current`` link switched with one rename, so an interrupted push leaves
the previous bundle running and a second push of the same files transfers nothing),
``push_env`` (the board group's wheels that the board's ``wheels/`` folder lacks, then
``pip install --no-index`` into ``<workdir>/venv``, or, for ``env: python``, this project's wheel
into ``<workdir>/lib``; skipped when the board's ``env.json`` says that wheelhouse is installed)
and ``board_python`` (the interpreter an agent runs with, and its PYTHONPATH).

Board layout: ``<workdir>/{bundles/<key>/, current -> bundles/<key>, wheels/, venv/ | lib/,
env.json, logs/, run/}``. Nothing is written outside the workdir.

It must not start agents (``testbed.remote.agents``) or decide what a board needs (doctor).
"""
from __future__ import annotations

import hashlib
import json
import secrets
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from testbed.bundle import sha256_file
from testbed.config import BoardSpec
from testbed.remote.ssh import RemoteError, Session, board_path, quote_path, where

__all__ = ["BoardBundle", "Pushed", "push_bundle", "push_env", "board_python", "sftp_path", "EnvSpec"]


def sftp_path(path: str) -> str:
    """A workdir path as SFTP sees it: ``~/x`` is relative to the login's home."""
    return path[2:] if path.startswith("~/") else ("." if path == "~" else path)


@dataclass(frozen=True)
class BoardBundle:
    """The staged files of one board (name -> local path) and their sha256s."""

    board: str
    files: dict[str, Path]
    sha256: dict[str, str]

    @classmethod
    def from_dir(cls, board: str, folder: Path) -> BoardBundle:
        files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.endswith(".log")}
        return cls(board, files, {n: sha256_file(p) for n, p in files.items()})

    @property
    def key(self) -> str:
        h = hashlib.sha256("".join(f"{n}\0{s}\n" for n, s in sorted(self.sha256.items())).encode())
        return h.hexdigest()[:20]

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files.values())


@dataclass
class Pushed:
    """What one push did: bytes of payload sent, files sent, and whether anything changed."""

    board: str
    key: str
    bytes: int = 0
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.files)


async def _put(s: Session, sftp: asyncssh.SFTPClient, local: Path, remote: str) -> int:
    try:
        await sftp.put(str(local), sftp_path(remote))
    except (OSError, asyncssh.Error) as exc:
        raise RemoteError(f"{where(s.board)}: SFTP of {local.name} to {remote} failed: "
                          f"{getattr(exc, 'reason', None) or exc}") from None
    n = local.stat().st_size
    s.bytes_sent += n
    return n


async def push_bundle(s: Session, bundle: BoardBundle) -> Pushed:
    """Push ``bundle`` unless ``bundles/<key>`` is complete on the board; switch ``current`` to it."""
    wd = board_path(s.board)
    final = board_path(s.board, "bundles", bundle.key)
    out = Pushed(s.board.name, bundle.key)
    done = await s.run(f"test -f {quote_path(final)}/.complete && readlink {quote_path(board_path(s.board, 'current'))}",
                       check=False)
    if done.code == 0 and done.stdout.strip() == f"bundles/{bundle.key}":
        return out   # nothing changed: nothing transferred
    if done.code != 0:
        partial = board_path(s.board, "bundles", f".partial-{bundle.key}-{secrets.token_hex(3)}")
        # leftovers of interrupted pushes are ours to clear; complete bundles stay (the previous one runs)
        await s.run(f"mkdir -p {quote_path(board_path(s.board, 'bundles'))} {quote_path(board_path(s.board, 'logs'))} "
                    f"{quote_path(board_path(s.board, 'run'))} && rm -rf {quote_path(board_path(s.board, 'bundles'))}/.partial-* "
                    f"&& mkdir {quote_path(partial)}")
        async with s.conn.start_sftp_client() as sftp:
            for name, local in bundle.files.items():
                out.bytes += await _put(s, sftp, local, f"{partial}/{name}")
                out.files.append(name)
        sums = "".join(f"{sha}  {name}\n" for name, sha in bundle.sha256.items())
        check = await s.run(f"cd {quote_path(partial)} && sha256sum -c --quiet -", input=sums, check=False)
        if check.code != 0:
            await s.run(f"rm -rf {quote_path(partial)}", check=False)
            raise RemoteError(f"{where(s.board)}: sha256 differs after transfer: "
                              f"{(check.stdout or check.stderr).strip().splitlines()[0][:200]}")
        await s.run(f"cd {quote_path(partial)} && printf '%s' {shlex.quote(sums)} > SHA256SUMS && touch .complete && "
                    f"(test -d {quote_path(final)} && rm -rf {quote_path(partial)} || mv -T {quote_path(partial)} {quote_path(final)})")
    # one rename switches the link: a reader sees the old bundle or the new one, never neither
    await s.run(f"cd {quote_path(wd)} && ln -sfn bundles/{bundle.key} .current.new && mv -T .current.new current")
    if not out.files:
        out.notes.append("bundle already on the board; current switched to it")
    return out


@dataclass(frozen=True)
class EnvSpec:
    """The environment a board gets: its wheels (name -> local path, sha256), the requirements
    pip installs from them, and the key of that set (the board's env.json records it)."""

    key: str
    wheels: dict[str, Path]
    sha256: dict[str, str]
    requirements: tuple[str, ...]
    project_wheel: str

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.wheels.values())


def board_python(board: BoardSpec) -> tuple[str, dict[str, str]]:
    """The interpreter a board's agent runs with, and the environment it adds."""
    if board.env == "python":
        return board.python, {"PYTHONPATH": board_path(board, "lib")}
    return board_path(board, "venv", "bin", "python"), {}


async def push_env(s: Session, env: EnvSpec) -> Pushed:
    """Make the board's Python environment match ``env``; transfers only the wheels it lacks."""
    board = s.board
    out = Pushed(board.name, env.key)
    stamp = board_path(board, "env.json")
    done = await s.run(f"cat {quote_path(stamp)} 2>/dev/null", check=False)
    try:
        if json.loads(done.stdout or "{}").get("key") == env.key:
            return out
    except ValueError:
        pass   # an unreadable stamp: reinstall
    wheels = board_path(board, "wheels")
    listing = await s.run(f"mkdir -p {quote_path(wheels)} && cd {quote_path(wheels)} && "
                          f"(ls *.whl >/dev/null 2>&1 && sha256sum *.whl || true)")
    present = {}
    for line in listing.stdout.splitlines():
        parts = line.split(None, 1)
        if len(parts) == 2:
            present[parts[1].strip().lstrip("*")] = parts[0]
    todo = [n for n, sha in env.sha256.items() if present.get(n) != sha]
    if todo:
        async with s.conn.start_sftp_client() as sftp:
            for name in todo:
                out.bytes += await _put(s, sftp, env.wheels[name], f"{wheels}/{name}.part")
                out.files.append(name)
        await s.run(f"cd {quote_path(wheels)} && " + " && ".join(f"mv -f {shlex.quote(n + '.part')} {shlex.quote(n)}"
                                                                  for n in todo))
        sums = "".join(f"{env.sha256[n]}  {n}\n" for n in todo)
        check = await s.run(f"cd {quote_path(wheels)} && sha256sum -c --quiet -", input=sums, check=False)
        if check.code != 0:
            raise RemoteError(f"{where(board)}: a wheel's sha256 differs after transfer: "
                              f"{(check.stdout or check.stderr).strip()[:200]}")
    await _install(s, env)
    await s.run(f"cat > {quote_path(stamp)}", input=json.dumps({"key": env.key, "env": board.env,
                                                                "wheels": env.sha256}) + "\n")
    return out


async def _install(s: Session, env: EnvSpec) -> None:
    board = s.board
    wheels = board_path(board, "wheels")
    pip_opts = "--no-index --disable-pip-version-check --no-input -q"
    own = f"{quote_path(wheels)}/{shlex.quote(env.project_wheel)}"
    if board.env == "python":
        lib = board_path(board, "lib")
        cmd = (f"rm -rf {quote_path(lib)} && {shlex.quote(board.python)} -m pip install {pip_opts} --no-deps "
               f"--target {quote_path(lib)} {own}")
    else:
        venv = board_path(board, "venv")
        py = f"{quote_path(venv)}/bin/python"
        system = " --system-site-packages" if board.env == "venv-system" else ""
        reqs = " ".join(shlex.quote(r) for r in env.requirements)
        cmd = (f"(test -x {py} || {shlex.quote(board.python)} -m venv{system} {quote_path(venv)}) && "
               f"{py} -m pip install {pip_opts} --find-links {quote_path(wheels)} {reqs} && "
               f"{py} -m pip install {pip_opts} --no-deps --force-reinstall {own}")
    await s.run(cmd, timeout=900)
