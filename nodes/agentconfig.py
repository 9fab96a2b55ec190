"""The board config (``agent.json``): versioned frozen dataclasses, written by the laptop, read by the agent.

Holds ``FORMAT`` (the version of the file's layout), the config's dataclasses
(``WearableConfig`` and ``EdgeConfig`` over a common ``AgentConfig``, with ``Broker``,
``TransportEnd``, ``WearableLink``, ``MergeSpec`` and ``InboundLink``), their JSON form
(``to_dict`` / ``write``) and its parser (``from_dict`` / ``load``), which checks every field
and names it by its path (``agent.json: link.encoding: expected one of f32, f16, int8; got
'f64'``). A file of another format is refused with one line naming both versions. It also
holds ``RunStart``, the run-time part of the config that the ``start`` command carries (run
id, and the orchestrator's wall clock at the run's time zero), with the mapping of that time
zero onto the board's monotonic clock.

Relative file names resolve against the config file's folder. Errors are ``AgentConfigError``.
This module does no I/O beyond reading and writing the one file, and must not import torch,
yaml or ``testbed``: the deploy side builds these objects, the board only parses them.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar, Union

from linkemu.errors import ProfileError, as_float
from linkemu.profile import LinkProfile
from nodes.energy import METER_NAMES
from nodes.energy.settings import MeterSettingError, check_meter_settings
from nodes.errors import AgentConfigError
from nodes.merge import MERGE_RULES
from nodes.runtime import RUNTIMES
from nodes.transport import TRANSPORTS
from nodes.transport_settings import shown   # one way to show a refused value, file or board
from nodes.vocab import COMPRESSIONS, ENCODINGS

__all__ = ["FORMAT", "AgentConfig", "EnergyConfig", "WearableConfig", "EdgeConfig", "BoardConfig", "Broker", "TransportEnd",
           "WearableLink", "MergeSpec", "InboundLink", "RunStart", "from_dict", "load"]

FORMAT = 3   # 2: the energy section; 3: broker credentials (username, password_file, tls)
MAX_PART_DIM = 1 << 20   # values per student output: far above any model, low enough to allocate
"""The layout version of agent.json this code writes and reads. Bump it on any change of layout."""

ROLES = ("wearable", "edge")

T = TypeVar("T")


# ---------------------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class Broker:
    """Where the control plane's MQTT broker is, as this board reaches it, and how the board
    logs in: ``username`` (None: anonymous), ``password_file`` (the file holding the password,
    never the password itself: agent.json is shipped and cached, the password changes every
    run; ``~`` is the agent's home, a relative name resolves against agent.json's folder), and
    TLS files (``ca_file`` turns TLS on; ``cert_file``/``key_file``: a client certificate)."""

    host: str
    port: int
    username: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def to_dict(self) -> dict[str, Any]:
        tls = None if self.ca_file is None and self.cert_file is None else \
            {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        return {"host": self.host, "port": self.port, "username": self.username,
                "password_file": self.password_file, "tls": tls}


@dataclass(frozen=True)
class TransportEnd:
    """One end of a data-plane link: the transport backend's name and its settings (keyword
    arguments of that backend; the backend checks them when it opens)."""

    type: str
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> TransportEnd:
        """From the flat form ``{"type": ..., **settings}`` (what an endpoint gives)."""
        return cls(type=spec["type"], settings={k: v for k, v in spec.items() if k != "type"})

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **self.settings}


@dataclass(frozen=True)
class WearableLink:
    """A wearable's outbound link: its transport, the profile its user-space shaper applies,
    and how activations are encoded on it (names from ``nodes.vocab``)."""

    name: str
    transport: TransportEnd
    profile: LinkProfile
    encoding: str = "f32"
    compression: str = "none"
    compression_level: int | None = None
    shaper: str = "user"  # which shaper the link uses ("user", "kernel:netem", ...), reported in telemetry

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "transport": self.transport.to_dict(), "profile": self.profile.as_dict(),
                "encoding": self.encoding, "compression": self.compression,
                "compression_level": self.compression_level, "shaper": self.shaper}


@dataclass(frozen=True)
class InboundLink:
    """An edge's inbound link: its name and the receiving end's transport."""

    name: str
    transport: TransportEnd

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "transport": self.transport.to_dict()}


@dataclass(frozen=True)
class MergeSpec:
    """What the edge merges: the students' shard ids, the part each student learns (``average``),
    each part's vector length, the deadline and the rule, and the merge shard's file."""

    shard: str
    parts: tuple[int, ...]
    part_dim: int
    deadline_ms: float
    rule: str = "concat"
    student_part: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        if self.student_part is not None:
            object.__setattr__(self, "student_part", tuple(self.student_part))

    def to_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "parts": list(self.parts),
                "student_part": None if self.student_part is None else list(self.student_part),
                "part_dim": self.part_dim, "deadline_ms": self.deadline_ms, "rule": self.rule}


@dataclass(frozen=True)
class EnergyConfig:
    """The board's power meter: the backend (``nodes.energy.METERS``), its settings (checked by
    ``nodes.energy.settings`` on both ends) and the board's kind (the model meter's table row)."""

    meter: str
    settings: Mapping[str, Any]
    kind: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def to_dict(self) -> dict[str, Any]:
        return {"meter": self.meter, "settings": dict(self.settings), "kind": self.kind}


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """What every board's agent needs: bench and board names, the broker, the shard runtime,
    the telemetry rate, the number of clock-sync probes and its power meter (None: none). ``folder`` is where relative file
    names resolve (the config file's folder) and ``source`` names the file in errors; neither
    is part of the file."""

    ROLE: ClassVar[str] = ""

    bench: str
    board: str
    broker: Broker
    runtime: str
    telemetry_hz: float = 2.0
    clock_probes: int = 8
    energy: EnergyConfig | None = None
    folder: Path | None = field(default=None, compare=False)
    source: str = field(default="agent.json", compare=False)

    @property
    def role(self) -> str:
        return self.ROLE

    @property
    def shard_file(self) -> str:
        """The shard file this board's runtime loads (relative to ``folder``)."""
        raise NotImplementedError

    def path(self, name: str) -> Path:
        """``name`` as a path: absolute as is, relative against ``folder``."""
        p = Path(name)
        return p if p.is_absolute() or self.folder is None else self.folder / p

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, ``format`` first; ``from_dict`` is its inverse."""
        return {"format": FORMAT, "bench": self.bench, "board": self.board, "role": self.role,
                "broker": self.broker.to_dict(), "runtime": self.runtime, "telemetry_hz": self.telemetry_hz,
                "clock_probes": self.clock_probes, "energy": self.energy.to_dict() if self.energy else None,
                **self._role_dict()}

    def _role_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def write(self, path: Path) -> Path:
        """Write agent.json to ``path``, after checking that an agent of this version reads it back."""
        data = self.to_dict()
        from_dict(data, source=str(path))
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        return Path(path)


@dataclass(frozen=True, kw_only=True)
class WearableConfig(AgentConfig):
    """A wearable: its student shard (``shard_index`` is the shard id its frames carry), its
    local copy of the sample inputs (a .npy file) and its one outbound link."""

    ROLE: ClassVar[str] = "wearable"

    shard: str
    shard_index: int
    samples: str
    link: WearableLink

    @property
    def shard_file(self) -> str:
        return self.shard

    def _role_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "shard_index": self.shard_index, "samples": self.samples,
                "link": self.link.to_dict()}


@dataclass(frozen=True, kw_only=True)
class EdgeConfig(AgentConfig):
    """The edge: what it merges and its inbound links."""

    ROLE: ClassVar[str] = "edge"

    merge: MergeSpec
    inbound: tuple[InboundLink, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "inbound", tuple(self.inbound))

    @property
    def shard_file(self) -> str:
        return self.merge.shard

    def _role_dict(self) -> dict[str, Any]:
        return {"merge": self.merge.to_dict(), "inbound": [lk.to_dict() for lk in self.inbound]}


BoardConfig = Union[WearableConfig, EdgeConfig]


# ---------------------------------------------------------------------------- run start


@dataclass(frozen=True)
class RunStart:
    """The ``start`` command: ``{"cmd": "start", "run": RUN_ID, "t0_ns": INT}``. ``t0_ns`` is the
    orchestrator's wall clock (time.time_ns()) at the run's time zero; None when an older
    orchestrator did not send it (the board then starts its clock when the command arrives)."""

    run: str
    t0_ns: int | None = None

    KEYS: ClassVar[tuple[str, ...]] = ("cmd", "run", "t0_ns")

    @classmethod
    def from_message(cls, msg: Mapping[str, Any]) -> RunStart:
        """Parse a decoded start command; AgentConfigError naming the bad field otherwise. Keys
        it does not know are ignored: a newer orchestrator may send more, and this board can
        still start its run on what it understands."""
        known = {k: v for k, v in msg.items() if k in cls.KEYS} if isinstance(msg, Mapping) else msg
        r = _Reader(known, source="start command", path="", keys=cls.KEYS)
        if r.data.get("cmd") != "start":
            raise r.bad("cmd", "'start'", r.data.get("cmd"))
        return cls(run=r.field("run", _text), t0_ns=r.field("t0_ns", _optional(_epoch_ns), default=None))

    def to_message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"cmd": "start", "run": self.run}
        if self.t0_ns is not None:
            msg["t0_ns"] = self.t0_ns
        return msg

    def board_t0(self, *, offset_ns: float | None, wall_ns: int, mono_s: float,
                 max_skew_s: float) -> tuple[float, str | None]:
        """The run's time zero on the board's monotonic clock, and why it is the command's
        arrival (``mono_s``) instead of ``t0_ns`` mapped, if it is: no ``t0_ns`` (said: None), no
        clock estimate (``offset_ns`` None: None), or a mapped time zero more than
        ``max_skew_s`` from now (a wrong clock or a forged command: a one-line reason)."""
        if self.t0_ns is None or offset_ns is None:
            return mono_s, None
        t0 = self.monotonic_t0(offset_ns=offset_ns, wall_ns=wall_ns, mono_s=mono_s)
        if abs(mono_s - t0) <= max_skew_s:
            return t0, None
        return mono_s, (f"start: t0_ns is {mono_s - t0:+.1f} s from now on this board's clock (expected within "
                        f"±{max_skew_s:.0f} s); the run clock starts on arrival instead: check the board's "
                        "clock (chrony)")

    def monotonic_t0(self, *, offset_ns: float, wall_ns: int, mono_s: float) -> float:
        """The run's time zero on the board's monotonic clock.

        ``wall_ns`` and ``mono_s`` are the board's wall and monotonic clocks read at one
        instant; ``offset_ns`` is the clock-sync estimate (orchestrator ≈ board + offset; 0
        without one). The run has been going for ``wall_ns + offset_ns - t0_ns`` (negative when
        t0 is still ahead). Without ``t0_ns`` the run starts now: ``mono_s``.
        """
        if self.t0_ns is None:
            return mono_s
        elapsed_s = (wall_ns + offset_ns - self.t0_ns) / 1e9
        return mono_s - elapsed_s


# ---------------------------------------------------------------------------- parsing


class _Expected(Exception):
    """A converter's complaint: what it expected (the reader adds path and value)."""


class _Reader:
    """One JSON object of the config: reads its fields, naming each by its path in errors."""

    def __init__(self, data: Any, *, source: str, path: str, keys: Collection[str]) -> None:
        self.source, self.path = source, path
        if not isinstance(data, Mapping):
            raise AgentConfigError(f"{source}: {path or 'top level'}: expected a JSON object; got {shown(data)}")
        self.data: Mapping[str, Any] = data
        unknown = sorted(str(k) for k in data if k not in keys)
        if unknown:
            raise AgentConfigError(f"{source}: {self.name(unknown[0])}: unknown key; expected one of "
                                   f"{', '.join(keys)}")

    def name(self, key: str) -> str:
        """The path of ``key`` in the file, e.g. ``link.encoding``."""
        return f"{self.path}.{key}" if self.path else key

    def bad(self, key: str, expected: str, value: Any) -> AgentConfigError:
        return AgentConfigError(f"{self.source}: {self.name(key)}: expected {expected}; got {shown(value)}")

    def field(self, key: str, convert: Callable[[Any], T], *, default: Any = ...) -> T:
        if key not in self.data:
            if default is ...:
                raise AgentConfigError(f"{self.source}: {self.name(key)}: missing")
            return default
        value = self.data[key]
        try:
            return convert(value)
        except _Expected as exc:
            raise self.bad(key, str(exc), value) from None

    def nested(self, key: str, keys: Collection[str]) -> _Reader:
        if key not in self.data:
            raise AgentConfigError(f"{self.source}: {self.name(key)}: missing")
        return _Reader(self.data[key], source=self.source, path=self.name(key), keys=keys)

    def items(self, key: str) -> list[tuple[str, Any]]:
        """A list field's items, each with its path (``inbound[0]``)."""
        value = self.field(key, _list)
        return [(f"{self.name(key)}[{i}]", item) for i, item in enumerate(value)]


def _object(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _Expected("a JSON object")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _Expected("a non-empty string")
    return value


def _integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or \
                (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = (f" >= {minimum}" if maximum is None else f" in {minimum}..{maximum}") \
                if minimum is not None else ""
            raise _Expected(f"an integer{bounds}")
        return value
    return convert


def _epoch_ns(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:   # a frame's u64 stamp
        raise _Expected("an integer in 0..2**64-1 (the orchestrator's time.time_ns() at the run's time zero)")
    return value


def _positive(value: Any) -> float:
    out = as_float(value)
    if out is None or not math.isfinite(out) or out <= 0:
        raise _Expected("a number > 0")
    return out


def _one_of(names: Sequence[str]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        if not isinstance(value, str) or value not in names:
            raise _Expected(f"one of {', '.join(names)}")
        return value
    return convert


def _optional(convert: Callable[[Any], T]) -> Callable[[Any], T | None]:
    def optional(value: Any) -> T | None:
        if value is None:
            return None
        try:
            return convert(value)
        except _Expected as exc:
            raise _Expected(f"{exc} or null") from None
    return optional


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Expected("a list")
    return value


def _int_list(*, minimum: int, non_empty: bool) -> Callable[[Any], tuple[int, ...]]:
    item = _integer(minimum)

    def convert(value: Any) -> tuple[int, ...]:
        if not isinstance(value, list) or (non_empty and not value):
            raise _Expected(f"a {'non-empty ' if non_empty else ''}list of integers >= {minimum}")
        try:
            return tuple(item(v) for v in value)
        except _Expected:
            raise _Expected(f"a list of integers >= {minimum}") from None
    return convert


_COMMON = ("format", "bench", "board", "role", "broker", "runtime", "telemetry_hz", "clock_probes", "energy")
_WEARABLE = ("shard", "shard_index", "samples", "link")
_EDGE = ("merge", "inbound")
_LINK = ("name", "transport", "profile", "encoding", "compression", "compression_level", "shaper")
_MERGE = ("shard", "parts", "student_part", "part_dim", "deadline_ms", "rule")


def _check_format(data: Any, source: str) -> None:
    """One line naming both versions when the file is not of this code's format."""
    if not isinstance(data, Mapping):
        raise AgentConfigError(f"{source}: top level: expected a JSON object; got {shown(data)}")
    advice = "deploy with the same hbc-testbed version on both ends"
    if "format" not in data:
        raise AgentConfigError(f"{source}: no format field (written before formats were numbered), not a format "
                               f"this agent reads (it reads format {FORMAT}); {advice}")
    version = data["format"]
    if isinstance(version, bool) or not isinstance(version, int) or version != FORMAT:   # 1.0 is not format 1
        seen = version if isinstance(version, int) and not isinstance(version, bool) else shown(version)
        raise AgentConfigError(f"{source}: format {seen} is not a format this agent reads (it reads format "
                               f"{FORMAT}); {advice}")


def _transport(r: _Reader, key: str) -> TransportEnd:
    value = r.field(key, lambda v: v)
    path = r.name(key)
    if not isinstance(value, Mapping):
        raise AgentConfigError(f"{r.source}: {path}: expected a JSON object with 'type'; got {shown(value)}")
    t = _Reader(value, source=r.source, path=path, keys=tuple(value))
    kind = t.field("type", _one_of(TRANSPORTS.names()))
    return TransportEnd(type=kind, settings={k: v for k, v in value.items() if k != "type"})


def _profile(r: _Reader, key: str) -> LinkProfile:
    value = r.field(key, lambda v: v)
    path = r.name(key)
    if not isinstance(value, Mapping):
        raise AgentConfigError(f"{r.source}: {path}: expected a JSON object (LinkProfile.as_dict); "
                               f"got {shown(value)}")
    try:
        return LinkProfile.from_dict(value)
    except ProfileError as exc:
        where = f"{path}.{exc.key}" if exc.key else path
        raise AgentConfigError(f"{r.source}: {where}: {exc.detail}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise AgentConfigError(f"{r.source}: {path}: not a link profile ({exc})") from None


def _energy(r: _Reader) -> EnergyConfig | None:
    if r.data.get("energy") is None:
        return None
    e = r.nested("energy", ("meter", "settings", "kind"))
    meter = e.field("meter", _one_of(METER_NAMES))
    raw = e.field("settings", _object, default={})
    try:
        settings = check_meter_settings(meter, raw)
    except MeterSettingError as exc:
        where = e.name("settings") + (f".{exc.key}" if exc.key else "")
        raise AgentConfigError(f"{r.source}: {where}: {exc.detail}") from None
    return EnergyConfig(meter=meter, settings=settings, kind=e.field("kind", _text))


def _broker(r: _Reader) -> Broker:
    b = r.nested("broker", ("host", "port", "username", "password_file", "tls"))
    opt = _optional(_text)
    tls: dict[str, Any] = {}
    if b.data.get("tls") is not None:
        t = b.nested("tls", ("ca_file", "cert_file", "key_file"))
        tls = {k: t.field(k, opt, default=None) for k in ("ca_file", "cert_file", "key_file")}
        if tls["key_file"] is not None and tls["cert_file"] is None:
            raise AgentConfigError(f"{r.source}: {t.name('cert_file')}: expected the client certificate its "
                                   f"key_file belongs to; got null")
    out = Broker(host=b.field("host", _text), port=b.field("port", _integer(1, 65535)),
                 username=b.field("username", opt, default=None),
                 password_file=b.field("password_file", opt, default=None), **tls)
    if out.password_file is not None and out.username is None:
        raise AgentConfigError(f"{r.source}: {b.name('username')}: expected the user name the password_file "
                               f"belongs to; got null")
    return out


def _link(r: _Reader) -> WearableLink:
    lk = r.nested("link", _LINK)
    return WearableLink(
        name=lk.field("name", _text), transport=_transport(lk, "transport"), profile=_profile(lk, "profile"),
        encoding=lk.field("encoding", _one_of(tuple(ENCODINGS)), default="f32"),
        compression=lk.field("compression", _one_of(tuple(COMPRESSIONS)), default="none"),
        compression_level=lk.field("compression_level", _optional(_integer()), default=None),
        shaper=lk.field("shaper", _text, default="user"))


def _merge(r: _Reader) -> MergeSpec:
    m = r.nested("merge", _MERGE)
    return MergeSpec(shard=m.field("shard", _text), parts=m.field("parts", _int_list(minimum=0, non_empty=True)),
                     part_dim=m.field("part_dim", _integer(1, MAX_PART_DIM)), deadline_ms=m.field("deadline_ms", _positive),
                     rule=m.field("rule", _one_of(MERGE_RULES), default="concat"),
                     student_part=m.field("student_part", _optional(_int_list(minimum=0, non_empty=True)),
                                          default=None))


def _inbound(r: _Reader) -> tuple[InboundLink, ...]:
    links = []
    for path, item in r.items("inbound"):
        lk = _Reader(item, source=r.source, path=path, keys=("name", "transport"))
        links.append(InboundLink(name=lk.field("name", _text), transport=_transport(lk, "transport")))
    return tuple(links)


def from_dict(data: Any, *, source: str = "agent.json", folder: Path | None = None) -> BoardConfig:
    """Parse and check a decoded agent.json. ``source`` names the file in errors; ``folder`` is
    where its relative file names resolve. Raises AgentConfigError naming the field."""
    _check_format(data, source)
    role = data.get("role")
    if role not in ROLES:
        raise AgentConfigError(f"{source}: role: expected one of {', '.join(ROLES)}; got {shown(role)}")
    r = _Reader(data, source=source, path="", keys=_COMMON + (_WEARABLE if role == "wearable" else _EDGE))
    common: dict[str, Any] = dict(
        bench=r.field("bench", _text), board=r.field("board", _text), broker=_broker(r),
        runtime=r.field("runtime", _one_of(RUNTIMES.names())),
        telemetry_hz=r.field("telemetry_hz", _positive, default=2.0),
        clock_probes=r.field("clock_probes", _integer(0), default=8), energy=_energy(r), folder=folder,
        source=source)
    if role == "wearable":
        return WearableConfig(**common, shard=r.field("shard", _text), shard_index=r.field("shard_index", _integer(0, 0xFFFF)),
                              samples=r.field("samples", _text), link=_link(r))
    return EdgeConfig(**common, merge=_merge(r), inbound=_inbound(r))


def load(path: Path) -> BoardConfig:
    """Read and check agent.json; its relative file names resolve against its folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise AgentConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise AgentConfigError(f"{path}: not valid JSON ({exc})") from None
    return from_dict(data, source=str(path), folder=path.resolve().parent)
