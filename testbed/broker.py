"""The MQTT broker a run talks through.

Holds ``EmbeddedBroker``: mosquitto started on a free loopback port with a generated config
written into the run directory, stopped in ``finally``; when mosquitto is not installed, the
pure-Python amqtt broker in a subprocess instead (and ``fallback_reason`` says why, so the
dashboard can show it). ``listeners`` adds more (address, port) pairs to the same broker (one
topic space): boards in network namespaces reach it at their veth's host-side address. ``ExternalBroker`` is the inventory's ``broker: external`` case: nothing to
start, only a reachability check.

Also holds the run's credentials: ``BrokerAuth`` (one ``Grant`` per user: the orchestrator and
each board, a fresh random password per run, the topics each may publish and read), which the
embedded mosquitto enforces through a password file (PBKDF2-SHA512, mosquitto's ``$7$``
format) and an ACL file written 0600 into the broker's folder; with ``auth`` set, anonymous
clients are refused. The amqtt fallback cannot enforce the same ACL here, so it is refused when
``auth`` is set (it still serves an inventory that asks for ``anonymous: true``). Passwords
never reach a log, a repr or a file other than the agents' own credential files (written by the
orchestrator, not here). ``auth_kind`` is the one wording of how a broker is logged into (run.json,
the events, the summary, ``inventory check``).
"""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nodes.mqtt import Login, read_password_file, topic
from testbed.errors import BrokerError

if TYPE_CHECKING:
    from testbed.config import BrokerSpec

ORCHESTRATOR_USER = "orchestrator"
PASSWORD_ITERATIONS = 101   # mosquitto_passwd's own default for $7$ (PBKDF2-SHA512)


def board_user(board: str) -> str:
    """The broker user name of ``board`` (board names cannot clash with the orchestrator's)."""
    return f"board-{board}"


@dataclass(frozen=True)
class Grant:
    """One broker user: its password (never shown in a repr) and the topics it may publish and read."""

    username: str
    password: str = field(repr=False)
    publish: tuple[str, ...] = ()
    read: tuple[str, ...] = ()


@dataclass(frozen=True)
class BrokerAuth:
    """The run's users. ``BrokerAuth.for_bench(...)`` makes fresh passwords for every board and the orchestrator."""

    grants: tuple[Grant, ...]

    @classmethod
    def for_bench(cls, *, bench: str, boards: Iterable[str],
                  links: Iterable[tuple[str, str, str]]) -> BrokerAuth:
        """Each board may publish only its own status, telemetry (results are the edge's
        telemetry), clock-sync and the data topics of the links it sends on, and read only its
        own control topic and the data topics of the links it receives; the orchestrator reads
        the bench's topics and publishes control messages (commands and clock-sync answers).
        ``links`` are (name, sender, receiver) triples."""
        links = list(links)
        grants = [Grant(ORCHESTRATOR_USER, _new_password(), publish=(topic(bench, "ctl", "+"),),
                        read=(f"tb/{bench}/#",))]
        for b in boards:
            grants.append(Grant(board_user(b), _new_password(),
                                publish=(topic(bench, "status", b), topic(bench, "tele", b), topic(bench, "time", b),
                                         *(topic(bench, "data", n) for n, src, _ in links if src == b)),
                                read=(topic(bench, "ctl", b), *(topic(bench, "data", n) for n, _, dst in links
                                                                if dst == b))))
        return cls(grants=tuple(grants))

    def grant(self, username: str) -> Grant:
        for g in self.grants:
            if g.username == username:
                return g
        raise BrokerError(f"no broker user {username!r}; expected one of {', '.join(g.username for g in self.grants)}")

    def password(self, username: str) -> str:
        return self.grant(username).password


def _new_password() -> str:
    return secrets.token_urlsafe(24)


def mosquitto_password_line(username: str, password: str, *, salt: bytes | None = None,
                            iterations: int = PASSWORD_ITERATIONS) -> str:
    """One line of a mosquitto 2.x password file: ``user:$7$<iterations>$<salt>$<PBKDF2-SHA512>``
    (what ``mosquitto_passwd -b`` writes)."""
    if ":" in username or "\n" in username:
        raise BrokerError(f"broker user name {username!r}: expected no ':' and no newline")
    salt = salt if salt is not None else secrets.token_bytes(12)
    dk = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{username}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(dk).decode()}"


def mosquitto_password_file(auth: BrokerAuth) -> str:
    return "".join(mosquitto_password_line(g.username, g.password) + "\n" for g in auth.grants)


def mosquitto_acl(auth: BrokerAuth) -> str:
    """mosquitto's ACL file: per user, ``topic write`` / ``topic read`` lines; nothing else is allowed."""
    out = ["# generated by hbc-testbed for one run: each user may do only what is listed"]
    for g in auth.grants:
        out.append(f"\nuser {g.username}")
        out += [f"topic write {t}" for t in g.publish]
        out += [f"topic read {t}" for t in g.read]
    return "\n".join(out) + "\n"


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never world-readable in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_listening(host: str, port: int, *, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Block until ``host:port`` accepts TCP connections; BrokerError on timeout or early exit."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before listening on {host}:{port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise BrokerError(f"broker did not listen on {host}:{port} within {timeout:.0f} s")


def mosquitto_config(*, host: str, port: int, listeners: tuple[tuple[str, int], ...] = (),
                     password_file: Path | None = None, acl_file: Path | None = None) -> str:
    """mosquitto 2.x config for a private, non-persistent broker; each of ``listeners`` is one
    more (address, port) it listens on. With ``password_file`` and ``acl_file`` only their users
    get in, each limited to its ACL; without them it is anonymous."""
    extra = "".join(f"listener {p} {h}\n" for h, p in listeners)
    if password_file is not None and acl_file is not None:
        auth = f"allow_anonymous false\npassword_file {password_file}\nacl_file {acl_file}\n"
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            auth += "user root\n"   # as root mosquitto would drop to 'mosquitto', who cannot read the 0600 files
    else:
        auth = "allow_anonymous true\n"
    return f"# generated by hbc-testbed for one run\nlistener {port} {host}\n" + extra + auth + textwrap.dedent("""\
        persistence false
        max_queued_messages 10000
        set_tcp_nodelay true
        log_dest stdout
        log_type error
        log_type warning
        log_type notice
        """)


_AMQTT_SCRIPT = textwrap.dedent("""\
    import asyncio, sys
    from amqtt.broker import Broker
    async def main(host, port, *more):
        binds = [f"{host}:{port}"] + list(more)
        cfg = {"listeners": {("default" if i == 0 else f"l{i}"): {"type": "tcp", "bind": b}
                             for i, b in enumerate(binds)},
               "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}}}
        broker = Broker(cfg)
        await broker.start()
        await asyncio.Event().wait()
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:]))
    """)


@dataclass
class EmbeddedBroker:
    """A broker private to one run. ``with EmbeddedBroker(workdir=...) as b: b.host, b.port``."""

    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    prefer: str = "mosquitto"
    listeners: tuple[tuple[str, int], ...] = ()
    auth: BrokerAuth | None = None   # None: anonymous (only where the inventory asks for it)
    kind: str = field(default="", init=False)
    fallback_reason: str | None = field(default=None, init=False)
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _log: object = field(default=None, init=False, repr=False)

    def start(self) -> EmbeddedBroker:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        exe = shutil.which("mosquitto") or next(
            (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if Path(p).exists()), None)
        if self.prefer == "mosquitto" and exe:
            conf = self.workdir / "mosquitto.conf"
            pw = acl = None
            if self.auth is not None:
                pw, acl = (self.workdir / "passwd").resolve(), (self.workdir / "acl").resolve()
                _write_private(pw, mosquitto_password_file(self.auth))
                _write_private(acl, mosquitto_acl(self.auth))
            conf.write_text(mosquitto_config(host=self.host, port=self.port, listeners=self.listeners,
                                             password_file=pw, acl_file=acl))
            argv = [exe, "-c", str(conf)]
            self.kind = "mosquitto"
        elif self.auth is not None:
            why = "mosquitto is not installed" if not exe else f"broker {self.prefer!r} was requested"
            raise BrokerError(f"an authenticated broker (per-run passwords and topic ACLs) needs mosquitto, but {why}; "
                              "the amqtt fallback cannot enforce the same ACL: apt-get install mosquitto, "
                              "or set broker: {anonymous: true} in the inventory to run without authentication")
        else:
            self.fallback_reason = ("mosquitto not installed (apt-get install mosquitto)" if not exe
                                    else f"broker {self.prefer!r} requested")
            argv = [sys.executable, "-c", _AMQTT_SCRIPT, self.host, str(self.port),
                    *(f"{h}:{p}" for h, p in self.listeners)]
            self.kind = "amqtt"
        self._log = open(self.workdir / f"{self.kind}.log", "wb")
        try:
            self._proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            for host, port in ((self.host, self.port), *self.listeners):
                wait_listening(host, port, timeout=15.0, proc=self._proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(timeout=5)
        finally:
            self._proc = None
            if self._log is not None:
                self._log.close()
                self._log = None

    @property
    def anonymous(self) -> bool:
        return self.auth is None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def auth_kind(spec: BrokerSpec) -> str:
    """How clients log in to the broker the inventory's ``spec`` names, in the words run.json,
    the run's events and its summary (``broker_auth``) use: ``anonymous`` (only where the
    inventory asks for it by name), ``per-run users and ACL`` (embedded), or for an external
    broker ``password``, ``client certificate`` or both. Never a secret."""
    if spec.anonymous:
        return "anonymous"
    if spec.mode == "embedded":
        return "per-run users and ACL"
    return " and ".join(w for w, on in (("password", spec.username is not None),
                                       ("client certificate", spec.cert_file is not None)) if on)


def external_login(spec: Any) -> Login:
    """The login the harness uses with the inventory's external broker (``BrokerSpec``): its
    username and the password read from its password_file, its TLS files; none when anonymous."""
    def text(p: Path | None) -> str | None:
        return None if p is None else str(p)
    anonymous = bool(spec.anonymous)
    password = read_password_file(spec.password_file) if spec.password_file is not None and not anonymous else None
    return Login(username=None if anonymous else spec.username, password=password, ca_file=text(spec.ca_file),
                 cert_file=text(spec.cert_file), key_file=text(spec.key_file))


@dataclass
class ExternalBroker:
    """A broker somebody else runs (the inventory's ``broker: external``)."""

    host: str
    port: int
    kind: str = "external"
    fallback_reason: str | None = None
    anonymous: bool = False   # the inventory's broker.anonymous: no user name, no password

    def __enter__(self) -> ExternalBroker:
        wait_listening(self.host, self.port, timeout=5.0)
        return self

    def __exit__(self, *exc: object) -> None:
        return None
