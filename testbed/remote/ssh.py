"""SSH to the bench's ``connect: ssh`` boards, with asyncssh: one connection per board, all in parallel.

Holds ``RemoteError`` (and ``HostKeyError``), ``Session`` (one board's connection: ``run`` an
argv list, ``sudo`` one with ``sudo -n`` so a password prompt fails at once, SFTP), ``connect``
(host key checked against the bench's pinned keys only: an unknown key is refused with its
fingerprint and the ``testbed trust BOARD`` command, a changed key with both fingerprints; agent
forwarding off; keys from the inventory or the ssh agent, never a password) and ``Boards``: a
synchronous facade that keeps one asyncio loop in a thread, connects every board at once and
runs a coroutine on each, returning one ``Outcome`` per board (one board's failure never hides
another's result). ``RemoteRunner`` runs linkemu's tc/nft argv lists on a board through a session.

It must not decide what to run on a board (doctor, deploy and the agents' lifecycle do).
"""
from __future__ import annotations

import asyncio
import shlex
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import asyncssh

from linkemu.errors import LinkError
from linkemu.tc import Runner
from testbed.config import BoardSpec, Inventory
from testbed.errors import TestbedError
from testbed.remote.hostkeys import KnownHosts, fingerprint

__all__ = ["RemoteError", "HostKeyError", "Completed", "Session", "Outcome", "Boards", "RemoteRunner",
           "connect", "offered_host_key", "check_pinned", "SUDO_PASSWORD_HINT"]

T = TypeVar("T")

SUDO_PASSWORD_HINT = ("sudo asked for a password; give the board's user passwordless sudo for tc, nft, ip, "
                      "systemd-run and systemctl (docs/hardware.md, 'sudo')")


class RemoteError(TestbedError):
    """Something on or on the way to a board failed; the message names the board."""


class HostKeyError(RemoteError):
    """A board's host key is not the one pinned for it (or none is pinned)."""

    exit_code = 2


@dataclass(frozen=True)
class Completed:
    argv: str
    code: int
    stdout: str
    stderr: str


def where(board: BoardSpec) -> str:
    return f"{board.name} ({board.user + '@' if board.user else ''}{board.host}:{board.port or 22})"


class _PinningClient(asyncssh.SSHClient):
    """Accepts exactly the pinned keys, and remembers what the board offered."""

    def __init__(self, pinned: Sequence[asyncssh.SSHKey]) -> None:
        self.pinned = list(pinned)
        self.offered: asyncssh.SSHKey | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        self.offered = key
        return any(key.public_data == p.public_data for p in self.pinned)


def _key_files(inventory: Inventory, board: BoardSpec) -> list[str] | None:
    key = board.key or (inventory.ssh.key if inventory.ssh else None)
    return [str(key)] if key else None   # None: asyncssh uses the ssh agent and ~/.ssh's default keys


def _options(inventory: Inventory, board: BoardSpec, **extra: Any) -> dict[str, Any]:
    ssh = inventory.ssh
    return dict(host=board.host, port=board.port or 22, username=board.user, known_hosts=([], [], []),
                client_keys=_key_files(inventory, board), agent_forwarding=False, password=None,
                kbdint_auth=False, password_auth=False, x11_forwarding=False,
                connect_timeout=ssh.connect_timeout_s if ssh else 10.0, keepalive_interval=5,
                keepalive_count_max=3, **extra)


def check_pinned(inventory: Inventory, names: Iterable[str] | None = None) -> None:
    """Every (named) ssh board has a host key pinned in the bench's known_hosts: read only, no
    network, so a bench nobody pinned yet is refused before anything is trained or contacted."""
    if inventory.ssh is None:
        return
    chosen = list(names) if names is not None else [b.name for b in inventory.boards.values() if b.connect == "ssh"]
    known = KnownHosts(inventory.ssh.known_hosts)
    for name in chosen:
        b = inventory.boards[name]
        if not known.keys_for(str(b.host), b.port or 22):
            raise HostKeyError(f"{inventory.path}:{inventory.line_of(f'boards.{name}.host') or '?'}: boards.{name}: "
                               f"no host key pinned for {b.host}:{b.port or 22} in {inventory.ssh.known_hosts}; "
                               f"check the board, then pin it: {_trust_hint(b)}")


def _trust_hint(board: BoardSpec) -> str:
    return f"testbed trust {board.name}"


async def connect(inventory: Inventory, board: BoardSpec) -> Session:
    """A session with ``board`` whose host key is the one pinned in the bench's known_hosts."""
    assert inventory.ssh is not None
    known = KnownHosts(inventory.ssh.known_hosts)
    pinned = known.keys_for(str(board.host), board.port or 22)
    client = _PinningClient(pinned)
    algs = sorted({k.algorithm.decode() for k in pinned}) or ()
    try:
        conn, _ = await asyncssh.create_connection(lambda: client, **_options(
            inventory, board, **({"server_host_key_algs": algs} if algs else {})))
    except asyncssh.HostKeyNotVerifiable:
        raise _host_key_error(inventory, board, pinned, client.offered) from None
    except asyncssh.PermissionDenied as exc:
        raise RemoteError(f"{where(board)}: login refused ({exc.reason}); expected key-based login with "
                          f"{_key_files(inventory, board) or 'the ssh agent'}") from None
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise RemoteError(f"{where(board)}: unreachable: {_reason(exc)}") from None
    return Session(board=board, conn=conn)


def _host_key_error(inventory: Inventory, board: BoardSpec, pinned: Sequence[asyncssh.SSHKey],
                    offered: asyncssh.SSHKey | None) -> HostKeyError:
    assert inventory.ssh is not None
    got = fingerprint(offered) if offered else "none"
    if not pinned:
        return HostKeyError(f"{where(board)}: unknown host key {got} (not in {inventory.ssh.known_hosts}); if "
                            f"this is your board, pin it: {_trust_hint(board)}")
    return HostKeyError(f"{where(board)}: host key changed: pinned {', '.join(fingerprint(k) for k in pinned)}, "
                        f"the board offers {got} (reflashed? check it, then re-pin: {_trust_hint(board)})")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "connection timed out"
    text = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return str(text).strip().splitlines()[0][:200]


async def offered_host_key(inventory: Inventory, board: BoardSpec) -> asyncssh.SSHKey:
    """The host key ``board`` offers (for ``testbed trust``): a key exchange, no login."""
    client = _PinningClient([])
    try:
        conn, _ = await asyncssh.create_connection(lambda: client, **_options(inventory, board))
        conn.close()   # pragma: no cover - an empty pin list never verifies
    except asyncssh.HostKeyNotVerifiable:
        pass
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        if client.offered is None:
            raise RemoteError(f"{where(board)}: unreachable: {_reason(exc)}") from None
    if client.offered is None:
        raise RemoteError(f"{where(board)}: offered no host key")
    return client.offered


@dataclass
class Session:
    """One board's connection. ``run`` / ``sudo`` take argv lists (quoted here, once)."""

    board: BoardSpec
    conn: asyncssh.SSHClientConnection
    bytes_sent: int = 0

    async def run(self, argv: Sequence[str] | str, *, check: bool = True, timeout: float = 120.0,
                  input: str | None = None, sudo: bool = False) -> Completed:
        """Run ``argv`` (a list; a string is a shell script) on the board; RemoteError when it exits
        non-zero and ``check``. ``sudo``: prefix ``sudo -n`` unless the login is root."""
        cmd = argv if isinstance(argv, str) else shlex.join(argv)
        if sudo:   # an argv list goes to sudo as it is (a sudoers rule may name just tc, nft, ...)
            via = f"sh -c {shlex.quote(cmd)}" if isinstance(argv, str) else cmd
            cmd = f"if [ \"$(id -u)\" = 0 ]; then {cmd}; else sudo -n -- {via}; fi"
        try:
            done = await asyncio.wait_for(self.conn.run(cmd, input=input, check=False), timeout)
        except asyncio.TimeoutError:
            raise RemoteError(f"{where(self.board)}: `{cmd[:120]}` did not finish within {timeout:.0f} s") from None
        except (OSError, asyncssh.Error) as exc:
            raise RemoteError(f"{where(self.board)}: connection lost during `{cmd[:120]}`: {_reason(exc)}") from None
        out = Completed(cmd, done.exit_status if done.exit_status is not None else -1,
                        str(done.stdout or ""), str(done.stderr or ""))
        if check and out.code != 0:
            err = (out.stderr or out.stdout).strip()
            if sudo and "password is required" in err:
                raise RemoteError(f"{where(self.board)}: {SUDO_PASSWORD_HINT}")
            raise RemoteError(f"{where(self.board)}: `{cmd[:160]}` exited {out.code}: "
                              f"{err.splitlines()[-1][:300] if err else 'no output'}")
        return out

    def close(self) -> None:
        self.conn.close()


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """One board's result: ``value``, or ``error`` (the one-line reason)."""

    board: str
    value: T | None = None
    error: str | None = None
    exc: BaseException | None = field(default=None, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.error is None


class Boards:
    """``with Boards(inventory, names) as boards: boards.each(fn)``: sessions with every named ssh
    board (connected in parallel, on entry), a loop thread that runs their coroutines, and every
    connection closed on exit. A board that cannot be reached gets an Outcome with its error."""

    def __init__(self, inventory: Inventory, names: Iterable[str] | None = None) -> None:
        self.inventory = inventory
        chosen = list(names) if names is not None else [b.name for b in inventory.boards.values()
                                                        if b.connect == "ssh"]
        self.boards = [inventory.boards[n] for n in chosen]
        self.sessions: dict[str, Session] = {}
        self.failed: dict[str, Outcome[Any]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ssh-loop", daemon=True)

    def __enter__(self) -> Boards:
        self._thread.start()
        try:
            self.reconnect([b.name for b in self.boards])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        async def close_all() -> None:
            for s in self.sessions.values():
                s.close()
            await asyncio.gather(*(s.conn.wait_closed() for s in self.sessions.values()),
                                 return_exceptions=True)
        if self._thread.is_alive():
            try:
                self.call(close_all(), timeout=10)
            except Exception:
                pass
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self.sessions.clear()

    def call(self, coro: Awaitable[T], *, timeout: float | None = None) -> T:
        """Run one coroutine on the loop thread and wait for it."""
        fut: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        return fut.result(timeout)

    def reconnect(self, names: Iterable[str]) -> None:
        """(Re)connect the named boards in parallel; failures land in ``failed``."""
        boards = [self.inventory.boards[n] for n in names]

        async def one(b: BoardSpec) -> Session:
            return await connect(self.inventory, b)
        for o in self._gather(boards, one):
            if o.ok:
                self.sessions[o.board] = o.value  # type: ignore[assignment]
                self.failed.pop(o.board, None)
            else:
                self.failed[o.board] = o

    def _gather(self, boards: Sequence[BoardSpec], fn: Callable[[BoardSpec], Awaitable[T]]) -> list[Outcome[T]]:
        async def guarded(b: BoardSpec) -> Outcome[T]:
            try:
                return Outcome(b.name, value=await fn(b))
            except TestbedError as exc:
                return Outcome(b.name, error=str(exc), exc=exc)
            except (OSError, asyncssh.Error, LinkError) as exc:
                return Outcome(b.name, error=f"{where(b)}: {_reason(exc)}", exc=exc)

        async def all_of() -> list[Outcome[T]]:
            return list(await asyncio.gather(*(guarded(b) for b in boards)))
        return self.call(all_of())

    def each(self, fn: Callable[[Session], Awaitable[T]], *, names: Iterable[str] | None = None) -> dict[str, Outcome[T]]:
        """``fn(session)`` on every connected board at once (a dropped connection is made again
        first); unreachable boards keep their error."""
        wanted = [self.inventory.boards[n] for n in (names if names is not None else [b.name for b in self.boards])]
        dropped = [b.name for b in wanted if b.name in self.sessions and self.sessions[b.name].conn.is_closed()]
        if dropped:
            self.reconnect(dropped)
        live = [b for b in wanted if b.name in self.sessions]
        done = {o.board: o for o in self._gather(live, lambda b: fn(self.sessions[b.name]))}
        return {b.name: done.get(b.name) or self.failed.get(b.name) or Outcome(b.name, error="not connected")
                for b in wanted}

    def live(self, name: str) -> Session:
        """``name``'s session, connected again if the connection dropped (a board rebooted, the
        laptop's network blinked); RemoteError when the board cannot be reached."""
        s = self.sessions.get(name)
        if s is None or s.conn.is_closed():
            self.reconnect([name])
        return self.session(name)

    def session(self, name: str) -> Session:
        if name not in self.sessions:
            raise RemoteError(self.failed[name].error if name in self.failed else f"{name}: not connected")
        return self.sessions[name]

    def runner(self, name: str, *, sudo: bool = True) -> RemoteRunner:
        return RemoteRunner(self, name, sudo=sudo)


class RemoteRunner(Runner):
    """linkemu's Runner over a board's session: tc/nft argv lists run on the board (``sudo -n``
    unless the login is root). ``prefix`` (e.g. ``ip netns exec NS``) composes as locally."""

    remote = True

    def __init__(self, boards: Boards, name: str, *, sudo: bool = True, prefix: Sequence[str] = (),
                 timeout_s: float = 30.0) -> None:
        super().__init__(prefix=prefix, timeout_s=timeout_s)
        self.boards, self.name, self.sudo = boards, name, sudo

    def within(self, prefix: Sequence[str]) -> RemoteRunner:
        return RemoteRunner(self.boards, self.name, sudo=self.sudo, prefix=[*self.prefix, *prefix],
                            timeout_s=self.timeout_s)

    def run(self, argv: Sequence[str], *, check: bool = True) -> str:
        full = self.full(argv)
        self.log.append(full)
        try:
            session = self.boards.live(self.name)
            done = self.boards.call(session.run(full, check=False, sudo=self.sudo, timeout=self.timeout_s))
        except RemoteError as exc:
            raise LinkError(str(exc)) from None
        if check and done.code != 0:
            err = (done.stderr or done.stdout).strip()
            if "password is required" in err:
                raise LinkError(f"{where(session.board)}: {SUDO_PASSWORD_HINT}")
            raise LinkError(f"{self.name}: {shlex.join(full)} failed ({done.code}): {err}")
        return done.stdout


def board_path(board: BoardSpec, *parts: str) -> str:
    """A path under the board's workdir, for a shell on the board (``~`` left for it to expand)."""
    base = (board.workdir or "~/hbc-testbed").rstrip("/")
    return "/".join([base, *parts])


def quote_path(path: str) -> str:
    """Quote a board path for its shell, keeping a leading ``~/`` expandable."""
    if path == "~":
        return "~"
    if path.startswith("~/"):
        return "~/" + shlex.quote(path[2:])
    return shlex.quote(path)
