"""The inventory: which boards a bench has and the links between them (``inventory.yaml``).

Holds the inventory's vocabularies, its schema as frozen dataclasses (``Inventory``,
``BoardSpec``, ``LinkSpec``, ``TransportSpec``, ``BrokerSpec``) and ``load_inventory``, which
validates a file completely before anything starts: every problem is a ConfigError naming the
file, the 1-based line, the dotted key (``links[1].transport.mtu``) and what was expected. A
link's transport settings are checked by ``nodes.transport_settings``, the same rules the
transports apply on the boards; link profiles are resolved by ``linkemu.profile``.

It must not touch a board, the network or a broker, and must not know the experiment file.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from linkemu.profile import LinkProfile, ProfileError, resolve_profile
from nodes import agentconfig
from nodes import vocab as _vocab
from nodes.runtime import RUNTIMES as runtime_registry
from nodes.codec import LZ4_HC_LEVELS, ZSTD_LEVELS
from nodes.energy import METER_NAMES
from nodes.energy.settings import MeterSettingError, check_meter_settings
from nodes.transport_settings import TRANSPORT_NAMES, SettingError, check_file_settings
from testbed.config.checks import _choice, _Conv, _got, _integer, _Invalid, _join, _number, _Reader, _string
from testbed.config.yamlfile import nearest_line, read_yaml
from testbed.config.overlay import apply_overrides

__all__ = [
    "ROLES", "KINDS", "CONNECTS", "RUNTIMES", "ENERGY_METERS", "BROKER_MODES", "TRANSPORTS", "ENCODINGS",
    "COMPRESSIONS", "DEFAULT_WORKDIR", "BOARD_ENVS", "DEFAULT_KNOWN_HOSTS",
    "BrokerSpec", "SshSpec", "EnergySpec", "BoardSpec", "TransportSpec", "LinkSpec", "Inventory", "load_inventory",
]

ROLES = agentconfig.ROLES                   # one list: the roles an agent plays (nodes.agentconfig)
KINDS = ("rpi3", "rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-orin-nano",
         "jetson-xavier-nx", "sim")
CONNECTS = ("ssh", "local", "netns")
RUNTIMES = tuple(runtime_registry.names())  # one list: the runtimes a board can open (nodes.runtime)
ENERGY_METERS = ("none", *METER_NAMES)     # one list: nodes.energy's backends
BROKER_MODES = ("embedded", "external")
TRANSPORTS = TRANSPORT_NAMES               # one list: nodes.transport_settings
ENCODINGS = tuple(_vocab.ENCODINGS)        # one vocabulary: nodes.vocab
COMPRESSIONS = tuple(_vocab.COMPRESSIONS)
DEFAULT_WORKDIR = "~/hbc-testbed"
DEFAULT_KNOWN_HOSTS = "known_hosts"        # beside the inventory: the bench's pinned host keys
# How an ssh board's Python environment is made (testbed.remote.environment):
#   venv         a venv in the workdir, everything installed from the laptop's wheelhouse
#   venv-system  the same with --system-site-packages: a vendor's torch (NVIDIA's on a Jetson) stays
#   python       the interpreter as it is; only this project's wheel goes into the workdir
BOARD_ENVS = ("venv", "venv-system", "python")

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_NAME_DESC = "a name of lowercase letters, digits, '-' and '_' starting with a letter or digit"

# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class BrokerSpec:
    """The control-plane MQTT broker.

    ``embedded``: the harness starts one; ``host``/``port`` are None unless given (None
    means loopback and a free port); it makes its own per-run users and ACL. ``external``:
    ``host`` is required, ``port`` defaults to 1883; the harness and every board log in as
    ``username`` with the password in ``password_file`` (a file beside the inventory or
    anywhere, never the password itself) and/or a client certificate, TLS on with ``ca_file``.
    ``anonymous``: no login at all, only when the inventory asks for it by name.
    """

    mode: str = "embedded"
    host: str | None = None
    port: int | None = None
    anonymous: bool = False
    username: str | None = None
    password_file: Path | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None


@dataclass(frozen=True)
class SshSpec:
    """How the laptop reaches ``connect: ssh`` boards (the inventory's ``ssh:`` section).

    ``known_hosts``: the bench's own pinned host keys (OpenSSH format; never ~/.ssh/known_hosts);
    ``key``: the private key for every board without its own (None: the ssh agent);
    ``max_clock_offset_ms``: doctor refuses a board whose clock is further off than this.
    """

    known_hosts: Path
    key: Path | None = None
    connect_timeout_s: float = 10.0
    max_clock_offset_ms: float = 100.0


@dataclass(frozen=True)
class EnergySpec:
    """A board's power meter: the backend's name and its settings, checked and with defaults
    (``nodes.energy.settings``, the rule the agent applies again on the board)."""

    meter: str
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def modelled(self) -> bool:
        return self.meter == "model"


@dataclass(frozen=True)
class BoardSpec:
    """One board of the bench. ``host``/``user``/``port`` are only set for ``connect: ssh``."""

    name: str
    role: str
    kind: str
    connect: str
    runtime: str
    host: str | None = None
    user: str | None = None
    port: int | None = None
    python: str = "python3"
    workdir: str | None = None
    energy: EnergySpec | None = None     # None: no energy figures for this board
    compute_scale: float | None = None   # compute time relative to the laptop's (layer split); None: per kind
    key: Path | None = None              # ssh: this board's private key (None: the ssh section's, or the agent)
    env: str | None = None               # ssh: how its Python environment is made (BOARD_ENVS)

    @property
    def is_edge(self) -> bool:
        return self.role == "edge"

    @property
    def is_sim(self) -> bool:
        return self.kind == "sim"


@dataclass(frozen=True)
class TransportSpec:
    """Data-plane transport of a link; ``settings`` holds every key except ``type``."""

    type: str = "mqtt"
    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class LinkSpec:
    """A wearable -> edge link: its transport and its resolved emulation profile."""

    name: str
    src: str
    dst: str
    transport: TransportSpec
    profile: LinkProfile
    encoding: str = "f32"        # activation encoding on the wire: f32 | f16 | int8 (per-tensor affine)
    compression: str = "none"    # none | zstd | lz4, applied to the encoded payload
    compression_level: int | None = None   # zstd level (default 1) or LZ4-HC level (default: fast LZ4)


@dataclass(frozen=True)
class Inventory:
    """A validated ``inventory.yaml``. ``boards`` keeps the file's order."""

    path: Path
    bench: str
    broker: BrokerSpec
    boards: Mapping[str, BoardSpec]
    links: tuple[LinkSpec, ...]
    ssh: SshSpec | None = None
    _lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def edge(self) -> BoardSpec:
        """The one board with role ``edge``."""
        return next(b for b in self.boards.values() if b.role == "edge")

    @property
    def wearables(self) -> list[BoardSpec]:
        """Boards with role ``wearable``, in file order."""
        return [b for b in self.boards.values() if b.role == "wearable"]

    def link_from(self, board: str | BoardSpec) -> LinkSpec:
        """The link whose sender is ``board``; KeyError if it has none (e.g. the edge)."""
        name = board.name if isinstance(board, BoardSpec) else board
        for link in self.links:
            if link.src == name:
                return link
        raise KeyError(f"no link from board {name!r}; expected one of "
                       f"{', '.join(l.src for l in self.links)}")

    def link(self, name: str) -> LinkSpec:
        """The link called ``name``; KeyError listing the known names otherwise."""
        for link in self.links:
            if link.name == name:
                return link
        raise KeyError(f"no link named {name!r}; expected one of "
                       f"{', '.join(l.name for l in self.links)}")

    def line_of(self, key: str) -> int | None:
        """1-based line of a dotted key in the file (or of its nearest present parent)."""
        return nearest_line(self._lines, key)


# --------------------------------------------------------------------------- inventory loader

_INVENTORY_WHAT = "an inventory YAML file (keys: bench, broker, boards, links)"


def load_inventory(path: str | Path, *, overrides: Mapping[str, Any] | None = None,
                   sources: Mapping[str, str] | None = None) -> Inventory:
    """Load and validate ``inventory.yaml``; raise ConfigError on the first problem.

    ``overrides`` (dotted key -> value; ``links.<name>|*.<key>`` selects links by name, and a
    link's preset-name profile becomes ``{preset: name, ...}`` when a profile key is set) are set
    in the file's data first (testbed.config.overlay), and reported with their ``sources``.
    """
    path = Path(path)
    data, lines = read_yaml(path, _INVENTORY_WHAT)
    touched: dict[str, str] = {}
    if overrides:
        data, touched = apply_overrides(data, overrides, sources=sources or {}, lists={"links": "name"},
                                        promote={"links.*.profile": "preset"})
    r = _Reader(path, lines, sources=touched)
    top = r.mapping(data, "", allowed=("bench", "broker", "ssh", "boards", "links"),
                    required={"bench": _NAME_DESC, "boards": "a mapping of board name -> board",
                              "links": "a list of links from each wearable to the edge"},
                    what=_INVENTORY_WHAT)
    bench = r.get(top, "", "bench", _string(pattern=_NAME_RE, desc=_NAME_DESC))
    broker = _broker(r, top.get("broker"), path)
    ssh = _ssh(r, top.get("ssh"), path)
    boards = _boards(r, top["boards"])
    links = _links(r, top["links"], boards)
    return Inventory(path=path, bench=bench, broker=broker, boards=MappingProxyType(boards),
                     links=tuple(links), ssh=ssh, _lines=MappingProxyType(dict(lines)))


def _ssh(r: _Reader, value: Any, path: Path) -> SshSpec:
    """The ``ssh:`` section; paths relative to the inventory's folder (``~`` expanded)."""
    m = r.mapping({} if value is None else value, "ssh",
                  allowed=("known_hosts", "key", "connect_timeout_s", "max_clock_offset_ms"))
    known = r.get(m, "ssh", "known_hosts", _string(desc="a file path"), default=DEFAULT_KNOWN_HOSTS)
    key = r.get(m, "ssh", "key", _string(desc="a private key file path"), default=None)
    return SshSpec(known_hosts=_beside(path, known), key=_beside(path, key) if key else None,
                   connect_timeout_s=r.get(m, "ssh", "connect_timeout_s", _number(gt=0), default=10.0),
                   max_clock_offset_ms=r.get(m, "ssh", "max_clock_offset_ms", _number(gt=0), default=100.0))


def _beside(inventory: str | Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else Path(inventory).parent / p


def _flag() -> _Conv:
    def fn(v: Any) -> bool:
        if not isinstance(v, bool):
            raise _Invalid("true or false")
        return v
    return _Conv("true or false", fn)


_BROKER_KEYS = ("mode", "host", "port", "anonymous", "username", "password_file", "tls")
_TLS_KEYS = ("ca_file", "cert_file", "key_file")


def _broker(r: _Reader, value: Any, path: Path) -> BrokerSpec:
    if value is None:
        return BrokerSpec()
    if isinstance(value, str):  # shorthand: broker: embedded
        value = {"mode": value}
    if isinstance(value, dict) and "password" in value:
        raise r.error("broker.password", "a password is never written in the inventory (a file people share and "
                                         "commit); put it alone in a file only you can read (chmod 600) and name "
                                         "that file: password_file: <path>")
    m = r.mapping(value, "broker", allowed=_BROKER_KEYS)
    mode = r.get(m, "broker", "mode", _choice(BROKER_MODES), default="embedded")
    anonymous = r.get(m, "broker", "anonymous", _flag(), default=False)
    if mode == "external":
        host = r.get(m, "broker", "host", _string(desc="the broker's host name or address"))
        port = r.get(m, "broker", "port", _integer(lo=1, hi=65535), default=1883)
    else:
        host = r.get(m, "broker", "host", _string(desc="an address to bind"), default=None)
        port = r.get(m, "broker", "port", _integer(lo=1, hi=65535), default=None)
        for k in ("username", "password_file", "tls"):
            if m.get(k) is not None:
                raise r.error(f"broker.{k}", "not for an embedded broker: it makes its own users and passwords "
                                             "for every run; these keys are for mode: external")
        return BrokerSpec(mode=mode, host=host, port=port, anonymous=anonymous)
    username = r.get(m, "broker", "username", _string(desc="the broker user name"), default=None)
    pw = r.get(m, "broker", "password_file", _string(desc="a file path"), default=None)
    password_file = _secret_file(r, "broker.password_file", _beside(path, pw)) if pw else None
    tls: dict[str, Path | None] = dict.fromkeys(_TLS_KEYS)
    if m.get("tls") is not None:
        t = r.mapping(m["tls"], "broker.tls", allowed=_TLS_KEYS, what="a mapping (keys: ca_file, cert_file, key_file)")
        for k in _TLS_KEYS:
            v = r.get(t, "broker.tls", k, _string(desc="a file path"), default=None)
            tls[k] = _readable_file(r, f"broker.tls.{k}", _beside(path, v)) if v else None
        if tls["key_file"] is not None and tls["cert_file"] is None:
            raise r.error("broker.tls.key_file", "a client key needs its certificate: add cert_file")
        if tls["ca_file"] is None and tls["cert_file"] is None:
            raise r.error("broker.tls", "expected ca_file (the CA that signed the broker's certificate) and/or "
                                        "cert_file (a client certificate)")
    if anonymous:
        for k in ("username", "password_file"):
            if m.get(k) is not None:
                raise r.error(f"broker.{k}", "anonymous: true logs in as nobody; remove this key or anonymous")
    else:
        if pw is not None and username is None:
            raise r.error("broker.username", "required key missing with password_file; expected the broker user "
                                             "name the password belongs to", line_key="broker.password_file")
        if username is not None and pw is None:
            raise r.error("broker.password_file", "required key missing with username; expected a file holding "
                                                  "the password (its first line)", line_key="broker.username")
        if username is None and tls["cert_file"] is None:
            raise r.error("broker", "an external broker needs a login: username and password_file, and/or "
                                    "tls.cert_file; or anonymous: true to connect without one")
    return BrokerSpec(mode=mode, host=host, port=port, anonymous=anonymous, username=username,
                      password_file=password_file, **tls)


def _readable_file(r: _Reader, key: str, p: Path) -> Path:
    if not p.is_file():
        raise r.error(key, f"expected a file; {p} {'is not a file' if p.exists() else 'does not exist'}")
    try:
        with open(p, "rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise r.error(key, f"expected a readable file; {p}: {exc.strerror or exc}") from None
    return p


def _secret_file(r: _Reader, key: str, p: Path) -> Path:
    """A password file: readable, a non-empty first line (the content is never shown)."""
    _readable_file(r, key, p)
    lines = p.read_text(errors="replace").splitlines()
    if not lines or not lines[0]:
        raise r.error(key, f"expected the password on the first line of {p}; it is empty")
    return p


_BOARD_KEYS = ("role", "kind", "connect", "host", "user", "port", "runtime", "python",
               "workdir", "energy", "compute_scale", "key", "env")
_SSH_ONLY = ("host", "user", "port", "key", "env")


def _boards(r: _Reader, value: Any) -> dict[str, BoardSpec]:
    if not isinstance(value, dict) or not value:
        raise r.error("boards", "expected a mapping of board name -> board (at least 2 boards); "
                                f"got {_got(value) if value != {} else 'an empty mapping'}")
    boards: dict[str, BoardSpec] = {}
    for name, spec in value.items():
        key = f"boards.{name}"
        if not _NAME_RE.fullmatch(name):
            raise r.error(key, f"bad board name; expected {_NAME_DESC}; got {name!r}")
        m = r.mapping(spec, key, allowed=_BOARD_KEYS,
                      required={"role": "one of " + ", ".join(ROLES),
                                "kind": "one of " + ", ".join(KINDS)},
                      what="a mapping with role, kind, connect, ...")
        role = r.get(m, key, "role", _choice(ROLES))
        kind = r.get(m, key, "kind", _choice(KINDS))
        connect = r.get(m, key, "connect", _choice(CONNECTS),
                        default="local" if kind == "sim" else "ssh")
        if connect == "ssh":
            host = r.get(m, key, "host", _string(desc="a host name or address (connect: ssh)"))
            user = r.get(m, key, "user", _string(desc="a user name"), default=None)
            port = r.get(m, key, "port", _integer(lo=1, hi=65535), default=22)
            board_key = r.get(m, key, "key", _string(desc="a private key file path"), default=None)
            workdir_default: str | None = DEFAULT_WORKDIR
        else:
            for k in _SSH_ONLY:
                if m.get(k) is not None:
                    raise r.error(f"{key}.{k}", f"only used with connect: ssh; expected no {k} "
                                                f"for connect: {connect}")
            host = user = port = board_key = None
            workdir_default = None
        default_runtime = "tflite" if kind.startswith("rpi") else "torch"
        runtime = r.get(m, key, "runtime", _choice(RUNTIMES), default=default_runtime)
        python = r.get(m, key, "python", _string(desc="an interpreter name or path"),
                       default="python3")
        workdir = r.get(m, key, "workdir", _string(desc="a directory on the board"),
                        default=workdir_default)
        energy = _energy(r, m.get("energy"), f"{key}.energy")
        compute_scale = r.get(m, key, "compute_scale", _number(gt=0), default=None)
        env = None
        if connect == "ssh":  # a vendor's torch (a Jetson's) is kept: system site packages by default
            env = r.get(m, key, "env", _choice(BOARD_ENVS),
                        default="venv-system" if runtime == "torch" else "venv")
        boards[name] = BoardSpec(name=name, role=role, kind=kind, connect=connect,
                                 runtime=runtime, host=host, user=user, port=port,
                                 python=python, workdir=workdir, energy=energy,
                                 compute_scale=compute_scale,
                                 key=_beside(r.file, board_key) if board_key else None, env=env)

    edges = [b for b in boards.values() if b.role == "edge"]
    if len(edges) > 1:
        raise r.error(f"boards.{edges[1].name}.role",
                      f"expected exactly one board with role edge; {edges[0].name!r} "
                      f"(line {r.lines.get(f'boards.{edges[0].name}.role')}) already is")
    if not edges:
        raise r.error("boards", "expected exactly one board with role edge; got none")
    if not any(b.role == "wearable" for b in boards.values()):
        raise r.error("boards", "expected at least one board with role wearable; got none")
    return boards


def _compression_level(r: _Reader, m: Mapping[str, Any], key: str, compression: str) -> int | None:
    """A link's ``compression_level``: a zstd level (negative: zstd's fast mode) or an LZ4-HC
    level; only with a compression."""
    if m.get("compression_level") is None:
        return None
    if compression == "none":
        raise r.error(_join(key, "compression_level"),
                      "expected no compression_level on a link without compression (set "
                      "compression: zstd or lz4)")
    lo, hi = ZSTD_LEVELS if compression == "zstd" else LZ4_HC_LEVELS
    return r.get(m, key, "compression_level", _integer(lo=lo, hi=hi))


def _links(r: _Reader, value: Any, boards: Mapping[str, BoardSpec]) -> list[LinkSpec]:
    items = r.list(value, "links", what="a list of links, one from each wearable to the edge")
    edge = next(b for b in boards.values() if b.role == "edge")
    names: dict[str, str] = {}
    by_src: dict[str, str] = {}
    links: list[LinkSpec] = []
    board_names = ", ".join(boards)
    for i, item in enumerate(items):
        key = f"links[{i}]"
        m = r.mapping(item, key, allowed=("name", "from", "to", "transport", "profile", "encoding",
                                          "compression", "compression_level"),
                      required={"from": "a wearable board name", "to": "the edge board name",
                                "profile": "a profile preset name or an inline mapping"},
                      what="a mapping with from, to, transport, profile")
        src = r.get(m, key, "from", _string(desc="a board name"))
        dst = r.get(m, key, "to", _string(desc="a board name"))
        for k, b in (("from", src), ("to", dst)):
            if b not in boards:
                raise r.error(f"{key}.{k}", f"unknown board; expected one of {board_names}; "
                                            f"got {b!r}")
        if boards[src].role != "wearable":
            raise r.error(f"{key}.from", f"expected a wearable board; got {src!r} "
                                         f"(role {boards[src].role})")
        if dst != edge.name:
            raise r.error(f"{key}.to", f"expected the edge board {edge.name!r}; got {dst!r} "
                                       f"(role {boards[dst].role})")
        if src in by_src:
            raise r.error(f"{key}.from", f"expected exactly one link per wearable; {src!r} "
                                         f"already has link {by_src[src]!r}")
        name = r.get(m, key, "name", _string(pattern=_NAME_RE, desc=_NAME_DESC),
                     default=f"{src}-{dst}")
        if name in names:
            raise r.error(f"{key}.name" if "name" in m else key,
                          f"expected unique link names; {name!r} is also {names[name]}")
        names[name] = key
        by_src[src] = name
        transport = _transport(r, m.get("transport"), f"{key}.transport")
        profile = _profile(r, m["profile"], f"{key}.profile")
        encoding = r.get(m, key, "encoding", _choice(ENCODINGS), default="f32")
        compression = r.get(m, key, "compression", _choice(COMPRESSIONS), default="none")
        links.append(LinkSpec(name=name, src=src, dst=dst, transport=transport,
                              profile=profile, encoding=encoding, compression=compression,
                              compression_level=_compression_level(r, m, key, compression)))
    missing = [b.name for b in boards.values() if b.role == "wearable" and b.name not in by_src]
    if missing:
        raise r.error("links", "expected exactly one link from every wearable to the edge; "
                               f"none from {', '.join(repr(x) for x in missing)}")
    return links


_ENERGY_DESC = ("none, a meter name (" + ", ".join(METER_NAMES) + ") or a mapping with meter and its settings "
                "(e.g. {meter: ina226, address: 0x41, shunt_ohms: 0.1})")


def _energy(r: _Reader, value: Any, key: str) -> EnergySpec | None:
    """A board's ``energy:``: none, a meter's name (its default settings), or ``{meter: NAME, ...}``
    with the settings ``nodes.energy.settings`` checks (the same check the agent makes)."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        value = {"meter": value}
    if not isinstance(value, dict):
        raise r.error(key, f"expected {_ENERGY_DESC}; got {_got(value)}")
    meter = r.get(value, key, "meter", _choice(METER_NAMES))
    try:
        settings = check_meter_settings(meter, {k: v for k, v in value.items() if k != "meter"})
    except MeterSettingError as exc:
        raise r.error(_join(key, exc.key) if exc.key else key, exc.detail) from None
    return EnergySpec(meter=meter, settings=MappingProxyType(settings))


def _transport(r: _Reader, value: Any, key: str) -> TransportSpec:
    """A link's transport: its type and the settings a user may write for it, each checked by
    the rule the transport itself applies on the board (``nodes.transport_settings``).

    ``settings`` keeps what the file wrote, ``edge_<key>`` (the edge's own value of a per-end
    setting, e.g. ``edge_port``) included; ``nodes.transport_settings.end_settings`` gives each
    end's board its own."""
    if value is None:
        return TransportSpec()
    if isinstance(value, str):  # shorthand: transport: mqtt
        value = {"type": value}
        if value["type"] not in TRANSPORTS:
            raise r.error(key, f"expected one of {', '.join(TRANSPORTS)}; got {value['type']!r}")
    if not isinstance(value, dict):
        raise r.error(key, f"expected a mapping with type and its settings; got {_got(value)}")
    ttype = r.get(value, key, "type", _choice(TRANSPORTS))
    try:
        settings = check_file_settings(ttype, {k: v for k, v in value.items() if k != "type"})
    except SettingError as exc:
        full = _join(key, exc.key) if exc.key else key
        raise r.error(full, exc.detail, line_key=key if exc.missing else None) from None
    return TransportSpec(type=ttype, settings=MappingProxyType(settings))


def _profile(r: _Reader, value: Any, key: str) -> LinkProfile:
    if not isinstance(value, (str, dict)) or (isinstance(value, str) and not value.strip()):
        raise r.error(key, "expected a profile preset name or an inline mapping; "
                           f"got {_got(value)}")
    try:
        return resolve_profile(value, base_dir=Path(r.file).parent)  # trace files relative to the inventory
    except ProfileError as exc:
        sub = exc.key
        full = key if not sub else (f"{key}{sub}" if sub.startswith("[") else f"{key}.{sub}")
        # the line of that key when it is in the file, else of its nearest parent
        raise r.error(full, exc.detail) from None
