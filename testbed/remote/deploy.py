"""Putting a board's environment and bundle on an ssh board: push only what it lacks, switch atomically.

Holds ``BoardBundle`` (the files one board needs, as staged on the laptop: its shard, agent.json,
samples; keyed by the sha256 of their names and contents), ``EnvSpec`` (its wheels and
requirements), ``push_board`` (one SFTP session reads what the board has: its env stamp, its
verified wheels, whether the bundle is complete, where ``current`` points; what it lacks goes in
the same session, wheels as
``.part`` files, bundle files into ``bundles/.partial-<key>-<nonce>``; one script then checks every
sha256 on the board, installs the environment if it changed (``pip install --no-index`` into
``<workdir>/venv``; ``env: venv-system`` keeps the system's numpy, pinned by ``system-pins.txt``; for ``env: python`` this project's pure wheel unpacked into ``<workdir>/lib``),
renames the bundle to ``bundles/<key>`` and switches ``current`` with one rename, so an
interrupted push leaves the previous bundle, and a board that has everything costs one SFTP
session, no shell and no payload), ``push_bundle`` / ``push_env`` (one half of it) and ``board_python`` (the
interpreter an agent runs with, and its PYTHONPATH).

Board layout: ``<workdir>/{bundles/<key>/, current -> bundles/<key>, wheels/, venv/ | lib/,
env.json, system-pins.txt, logs/, run/}``. Nothing is written outside the workdir.

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

from testbed.hashing import sha256_file
from testbed.config import BoardSpec
from testbed.remote.ssh import RemoteError, Session, board_path, quote_path, where
from testbed.remote.wheelhouse import system_pins_argv

__all__ = ["BoardBundle", "Pushed", "push_board", "push_bundle", "push_env", "board_python", "sftp_path", "EnvSpec"]


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


async def _put(s: Session, sftp: asyncssh.SFTPClient, local: Path, remote: str) -> int:
    try:
        await sftp.put(str(local), sftp_path(remote))
    except (OSError, asyncssh.Error) as exc:
        raise RemoteError(f"{where(s.board)}: SFTP of {local.name} to {remote} failed: "
                          f"{getattr(exc, 'reason', None) or exc}") from None
    n = local.stat().st_size
    s.bytes_sent += n
    return n


@dataclass(frozen=True)
class _State:
    env_key: str | None
    wheels: dict[str, str]       # wheel name -> sha256 the board verified after receiving it
    bundle_complete: bool
    current: str


async def _read(sftp: asyncssh.SFTPClient, path: str, *, limit: int = 1 << 20) -> str:
    """A small file of the board, or "" when it is missing (read over SFTP: no remote shell)."""
    try:
        async with sftp.open(sftp_path(path), "rb") as fh:
            return (await fh.read(limit)).decode("utf-8", "replace")
    except (OSError, asyncssh.SFTPError):
        return ""


async def _state(sftp: asyncssh.SFTPClient, board: BoardSpec, bundle: BoardBundle | None) -> _State:
    """What the board has, read over the SFTP session itself: its env stamp, its verified wheels,
    whether the bundle is complete, where ``current`` points."""
    try:
        stamp = json.loads(await _read(sftp, board_path(board, "env.json")) or "{}")
        env_key = stamp.get("key") if isinstance(stamp, dict) else None
    except ValueError:
        env_key = None   # an unreadable stamp: install again
    wheels = {}
    for line in (await _read(sftp, board_path(board, "wheels", "SHA256SUMS"))).splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2:
            wheels[fields[1].strip().lstrip("*")] = fields[0]
    complete = False
    current = ""
    if bundle is not None:
        complete = await sftp.exists(sftp_path(board_path(board, "bundles", bundle.key, ".complete")))
        try:
            current = str(await sftp.readlink(sftp_path(board_path(board, "current"))))
        except (OSError, asyncssh.SFTPError):
            current = ""
    return _State(env_key, wheels, complete, current)


def _sha_check(folder: str, sums: str, what: str) -> str:
    """A shell step: the files of ``sums`` (sha256sum format) in ``folder`` match, else exit 3."""
    return (f"(cd {quote_path(folder)} && printf '%s' {shlex.quote(sums)} | sha256sum -c --quiet - >&2) "
            f"|| {{ echo 'sha256 of {what} differs after transfer' >&2; exit 3; }}")


def _install_script(board: BoardSpec, env: EnvSpec) -> str:
    wheels = board_path(board, "wheels")
    own = f"{quote_path(wheels)}/{shlex.quote(env.project_wheel)}"
    if board.env == "python":
        # a pure wheel unpacked into lib/ is what pip --target would write (no scripts, no data)
        lib, new = quote_path(board_path(board, "lib")), quote_path(board_path(board, ".lib.new"))
        return (f"rm -rf {new} && {shlex.quote(board.python)} -m zipfile -e {own} {new} && rm -rf {lib} && "
                f"mv -T {new} {lib}")
    pip_opts = "--no-index --disable-pip-version-check --no-input -q"
    venv = board_path(board, "venv")
    py = f"{quote_path(venv)}/bin/python"
    system = " --system-site-packages" if board.env == "venv-system" else ""
    reqs = " ".join(shlex.quote(r) for r in env.requirements)
    pins = ""
    if board.env == "venv-system":   # the system's numpy stays: pinned, or refused when too old
        path = quote_path(board_path(board, "system-pins.txt"))
        check = " ".join([py, *map(shlex.quote, system_pins_argv(venv_python="", requirements=env.requirements)[1:])])
        pins = f"{check} > {path} && "
        pip_opts += f" --constraint {path}"
    # a subshell: under `set -e` a failing command inside an && list would not stop the script
    return (f"((test -x {py} || {shlex.quote(board.python)} -m venv{system} {quote_path(venv)}) && {pins}"
            f"{py} -m pip install {pip_opts} --find-links {quote_path(wheels)} {reqs} && "
            f"{py} -m pip install {pip_opts} --no-deps --force-reinstall {own})")


async def push_board(s: Session, *, env: EnvSpec | None, bundle: BoardBundle | None) -> tuple[Pushed, Pushed]:
    """Make the board hold ``env`` and run ``bundle``: one SFTP session reads what it has and
    sends the wheels and files it lacks; one script checks their sha256, installs the
    environment if it changed, completes the bundle and switches ``current`` with one rename.
    A board that has both already costs the SFTP session's reads: no shell, no payload."""
    board = s.board
    env_out = Pushed(board.name, env.key if env else "")
    b_out = Pushed(board.name, bundle.key if bundle else "")
    partial = board_path(board, "bundles", f".partial-{bundle.key}-{secrets.token_hex(3)}") if bundle else ""
    try:
        async with s.conn.start_sftp_client() as sftp:
            st = await _state(sftp, board, bundle)
            env_todo = env is not None and st.env_key != env.key
            wheels_todo = [n for n, sha in env.sha256.items() if st.wheels.get(n) != sha] if env_todo and env else []
            bundle_todo = bundle is not None and not st.bundle_complete
            switch = bundle is not None and st.current != f"bundles/{bundle.key}"
            if not (env_todo or bundle_todo or switch):
                return env_out, b_out
            for d in ([board_path(board, "wheels")] if wheels_todo else []) + ([partial] if bundle_todo else []):
                await sftp.makedirs(sftp_path(d), exist_ok=True)
            for name in wheels_todo:
                assert env is not None
                env_out.bytes += await _put(s, sftp, env.wheels[name], board_path(board, "wheels", name + ".part"))
                env_out.files.append(name)
            for name, local in (bundle.files.items() if bundle_todo and bundle else ()):
                b_out.bytes += await _put(s, sftp, local, f"{partial}/{name}")
                b_out.files.append(name)
    except (OSError, asyncssh.Error) as exc:
        if isinstance(exc, RemoteError):
            raise
        raise RemoteError(f"{where(board)}: SFTP failed: {getattr(exc, 'reason', None) or exc}") from None
    steps = [f"mkdir -p {quote_path(board_path(board, 'logs'))} {quote_path(board_path(board, 'run'))}"]
    if wheels_todo and env:
        wd = board_path(board, "wheels")
        steps += [f"cd {quote_path(wd)}"] + [f"mv -f {shlex.quote(n + '.part')} {shlex.quote(n)}" for n in wheels_todo]
        steps.append(_sha_check(wd, "".join(f"{env.sha256[n]}  {n}\n" for n in wheels_todo), "a wheel"))
        kept = {n: sha for n, sha in st.wheels.items() if n not in wheels_todo}
        sums = "".join(f"{sha}  {n}\n" for n, sha in sorted({**kept, **{n: env.sha256[n] for n in wheels_todo}}.items()))
        steps.append(f"printf '%s' {shlex.quote(sums)} > SHA256SUMS")
    if env_todo and env:
        stamp = json.dumps({"key": env.key, "env": board.env, "wheels": env.sha256}) + "\n"
        steps += [_install_script(board, env), f"printf '%s' {shlex.quote(stamp)} > {quote_path(board_path(board, 'env.json'))}"]
    if bundle_todo and bundle:
        final = quote_path(board_path(board, "bundles", bundle.key))
        sums = "".join(f"{sha}  {name}\n" for name, sha in bundle.sha256.items())
        steps += [_sha_check(partial, sums, "the bundle"),
                  f"printf '%s' {shlex.quote(sums)} > {quote_path(partial)}/SHA256SUMS && touch {quote_path(partial)}/.complete",
                  f"if [ -d {final} ]; then rm -rf {quote_path(partial)}; else mv -T {quote_path(partial)} {final}; fi"]
    if bundle is not None:
        wd = quote_path(board_path(board))
        # leftovers of interrupted pushes are ours to clear; complete bundles stay (the previous one ran)
        steps += [f"cd {wd} && rm -rf bundles/.partial-*",
                  f"ln -sfn bundles/{bundle.key} .current.new && mv -T .current.new current"]
    done = await s.run("set -e; " + "\n".join(steps), check=False, timeout=900)
    if done.code != 0:
        err = (done.stderr or done.stdout).strip().splitlines()
        raise RemoteError(f"{where(board)}: deploy step failed ({done.code}): {err[-1][:300] if err else 'no output'}")
    return env_out, b_out


async def push_bundle(s: Session, bundle: BoardBundle) -> Pushed:
    """Push ``bundle`` unless ``bundles/<key>`` is complete on the board; switch ``current`` to it."""
    return (await push_board(s, env=None, bundle=bundle))[1]


async def push_env(s: Session, env: EnvSpec) -> Pushed:
    """Make the board's Python environment match ``env``; transfers only the wheels it lacks."""
    return (await push_board(s, env=env, bundle=None))[0]
