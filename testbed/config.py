"""The two files a user edits: ``inventory.yaml`` and ``experiment.yaml``.

This module holds their schemas as frozen dataclasses, the loaders that validate a file
completely before anything starts (``load_inventory``, ``load_experiment``), the
cross-check between the two (``check_compatible``) and a small override helper for the
CLI (``with_overrides``). Every problem is raised as a :class:`~testbed.errors.ConfigError`
naming the file, the 1-based line, the dotted key path (``boards.wrist.role``,
``links[1].profile.rate_bps``) and what was expected.

It must not touch a board, the network, a broker or a dataset: it only reads the YAML file
it is given (link profiles are resolved by ``linkemu.profile``, which is pure too).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml
from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from linkemu.profile import LinkProfile, ProfileError, resolve_profile
from nodes import vocab as _vocab
from nodes.codec import LZ4_HC_LEVELS, ZSTD_LEVELS
from testbed.errors import ConfigError

__all__ = [
    "ROLES", "KINDS", "CONNECTS", "RUNTIMES", "ENERGY_METERS", "BROKER_MODES", "TRANSPORTS", "ENCODINGS",
    "COMPRESSIONS",
    "DATASETS", "MODEL_FAMILIES", "FAULT_KINDS", "DEFAULT_FASHION_MNIST_PATH",
    "BrokerSpec", "BoardSpec", "TransportSpec", "LinkSpec", "Inventory",
    "DatasetSpec", "ModelSpec", "TrainSpec", "PartitionSpec", "RunSpec", "FaultSpec", "Experiment",
    "PARTITION_METHODS",
    "load_inventory", "load_experiment", "check_compatible", "with_overrides",
]

# --------------------------------------------------------------------------- vocabularies

ROLES = ("wearable", "edge")
KINDS = ("rpi3", "rpi4", "rpi5", "rpi-zero2w", "jetson-nano", "jetson-orin-nano",
         "jetson-xavier-nx", "sim")
CONNECTS = ("ssh", "local", "netns")
RUNTIMES = ("torch", "tflite")
ENERGY_METERS = ("none", "ina219", "ina260", "model")
BROKER_MODES = ("embedded", "external")
TRANSPORTS = ("mqtt", "serial", "ble")
ENCODINGS = tuple(_vocab.ENCODINGS)        # one vocabulary: nodes.vocab
COMPRESSIONS = tuple(_vocab.COMPRESSIONS)
DATASETS = ("fashion-mnist", "digits")
MODEL_FAMILIES = ("cnn-students",)
PARTITION_METHODS = ("nonn", "resilient", "layer")
SPLIT_OBJECTIVES = ("latency", "energy")
QUANTIZE = ("none", "int8", "int8-dynamic")   # LiteRT PTQ modes (testbed.litert uses this list)
FAULT_KINDS = ("outage", "kill")
MERGE = "merge"
DEFAULT_FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_WORKDIR = "~/hbc-testbed"

_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]*")
_NAME_DESC = "a name of lowercase letters, digits, '-' and '_' starting with a letter or digit"
_EXP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXP_NAME_DESC = "a name of letters, digits, '.', '-' and '_' starting with a letter or digit"

# --------------------------------------------------------------------------- inventory


@dataclass(frozen=True)
class BrokerSpec:
    """The control-plane MQTT broker.

    ``embedded``: the harness starts one; ``host``/``port`` are None unless given (None
    means loopback and a free port). ``external``: ``host`` is required, ``port`` defaults
    to 1883.
    """

    mode: str = "embedded"
    host: str | None = None
    port: int | None = None


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
    energy: str = "none"
    compute_scale: float | None = None   # compute time relative to the laptop's (layer split); None: per kind

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
        return _nearest_line(self._lines, key)


# --------------------------------------------------------------------------- experiment


@dataclass(frozen=True)
class DatasetSpec:
    """``path`` is the IDX directory for fashion-mnist; None for digits (bundled)."""

    name: str
    path: Path | None = None


@dataclass(frozen=True)
class ModelSpec:
    family: str
    students: int
    width: int
    out_dim: int


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch_size: int
    lr: float
    subset: int | None = None


@dataclass(frozen=True)
class PartitionSpec:
    """The ``partition:`` section: how ``testbed partition`` builds the bundle a run deploys.

    ``students`` is S (1 for ``layer``), ``parts`` is M (resilient; NoNN uses S). ``teacher``,
    ``graph``, ``student`` and ``layer`` hold only the keys the file set (validated here; the
    defaults live in testbed.partition.pipeline and testbed.partition.layersplit).
    ``runtimes`` are the shard formats to export (``torch``: TorchScript, ``tflite``: LiteRT);
    ``quantize: int8`` (static, calibrated on real images) or ``int8-dynamic`` adds int8 LiteRT
    shards, with their accuracy measured; ``tflite`` boards then get those.
    """

    method: str
    students: int
    parts: int
    teacher: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    graph: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    student: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    layer: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    runtimes: tuple[str, ...] = ("torch",)
    quantize: str = "none"
    max_subsets: int = 200
    test_subset: int | None = None


@dataclass(frozen=True)
class RunSpec:
    samples: int
    rate_hz: float
    deadline_ms: float
    timeout_ms: float
    output: Path = Path("runs")


@dataclass(frozen=True)
class FaultSpec:
    """``outage`` sets ``link`` and ``duration_s``; ``kill`` sets ``board``."""

    kind: str
    at_s: float
    link: str | None = None
    board: str | None = None
    duration_s: float | None = None


@dataclass(frozen=True)
class Experiment:
    """A validated ``experiment.yaml``. ``assignment`` maps board -> student index or 'merge'.

    Exactly one of ``model`` (+ ``train``: the spine's jointly trained students) and
    ``partition`` (a teacher partitioned by NoNN, the resilient method or a layer split) is set.
    """

    path: Path
    name: str
    seed: int
    dataset: DatasetSpec
    model: ModelSpec | None
    train: TrainSpec | None
    assignment: Mapping[str, int | str]
    run: RunSpec
    faults: tuple[FaultSpec, ...] = ()
    partition: PartitionSpec | None = None
    _lines: Mapping[str, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def students(self) -> int:
        """How many student shards the bundle has (= wearables assigned an index)."""
        if self.partition is not None:
            return self.partition.students
        assert self.model is not None
        return self.model.students

    def line_of(self, key: str) -> int | None:
        """1-based line of a dotted key in the file (or of its nearest present parent)."""
        return _nearest_line(self._lines, key)


# --------------------------------------------------------------------------- YAML with lines


def _fmt(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


_LAST_SEGMENT = re.compile(r"(\.[^.\[\]]*|\[\d+\])$")


def _parent_key(key: str) -> str:
    stripped = _LAST_SEGMENT.sub("", key)
    if stripped == key:  # a top-level key
        return ""
    return stripped


def _nearest_line(lines: Mapping[str, int], key: str) -> int | None:
    while True:
        if key in lines:
            return lines[key]
        if not key:
            return None
        key = _parent_key(key)


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


def _read_yaml(path: Path, what: str) -> tuple[Any, dict[str, int]]:
    """Parse ``path`` into plain Python data plus a map dotted key -> 1-based line."""
    file = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"file not found; expected {what}", file=file) from None
    except IsADirectoryError:
        raise ConfigError(f"is a directory; expected {what}", file=file) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason}); expected {what}", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror}); expected {what}", file=file) from None

    lines: dict[str, int] = {}
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError(f"file is empty; expected {what}", file=file, line=1)
        lines[""] = node.start_mark.line + 1
        data = _convert(loader, node, (), lines, file, set())
    except yaml.MarkedYAMLError as exc:
        raise _yaml_error(exc, file) from None
    except yaml.YAMLError as exc:  # unmarked (rare): reader errors on control characters
        raise ConfigError(f"invalid YAML: {exc}", file=file) from None
    finally:
        loader.dispose()
    return data, lines


def _yaml_error(exc: yaml.MarkedYAMLError, file: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "syntax error"
    message = f"invalid YAML syntax: {problem}"
    if exc.context:
        where = ""
        if exc.context_mark is not None and (mark is None or exc.context_mark.line != mark.line):
            where = f" at line {exc.context_mark.line + 1}"
        message += f" ({exc.context}{where})"
    if "'\\t'" in problem:
        message += "; expected indentation with spaces, not tabs"
    return ConfigError(message, file=file, line=None if mark is None else mark.line + 1)


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: tuple[str | int, ...],
             lines: dict[str, int], file: str, active: set[int]) -> Any:
    if isinstance(node, ScalarNode):
        return loader.construct_object(node, deep=True)
    if id(node) in active:
        raise ConfigError("recursive alias; expected plain data", file=file,
                          line=node.start_mark.line + 1, key=_fmt(path) or None)
    active.add(id(node))
    try:
        if isinstance(node, SequenceNode):
            if node.tag != _SEQ_TAG:
                raise ConfigError(f"unsupported tag {node.tag}; expected a plain list", file=file,
                                  line=node.start_mark.line + 1, key=_fmt(path) or None)
            items = []
            for i, item in enumerate(node.value):
                lines[_fmt(path + (i,))] = item.start_mark.line + 1
                items.append(_convert(loader, item, path + (i,), lines, file, active))
            return items
        if isinstance(node, MappingNode):
            if node.tag != _MAP_TAG:
                raise ConfigError(f"unsupported tag {node.tag}; expected a plain mapping",
                                  file=file, line=node.start_mark.line + 1, key=_fmt(path) or None)
            seen: dict[str, int] = {}
            for knode, _ in node.value:  # duplicates among the keys written here
                if isinstance(knode, ScalarNode) and knode.tag != "tag:yaml.org,2002:merge":
                    kline = knode.start_mark.line + 1
                    if knode.value in seen:
                        raise ConfigError(
                            f"duplicate key (first given at line {seen[knode.value]}); "
                            "expected each key once", file=file, line=kline,
                            key=_fmt(path + (knode.value,)))
                    seen[knode.value] = kline
            loader.flatten_mapping(node)  # resolves YAML merge keys (<<: *anchor)
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                if not isinstance(knode, ScalarNode):
                    raise ConfigError("expected a plain key; got a mapping or list as key",
                                      file=file, line=knode.start_mark.line + 1,
                                      key=_fmt(path) or None)
                key = knode.value  # the key's text as written: 'on', 'no', '1' stay strings
                kpath = path + (key,)
                lines[_fmt(kpath)] = knode.start_mark.line + 1
                out[key] = _convert(loader, vnode, kpath, lines, file, active)
            return out
        raise ConfigError("unsupported YAML node", file=file, line=node.start_mark.line + 1)
    finally:
        active.discard(id(node))


# --------------------------------------------------------------------------- validation kit

_MISSING: Any = object()


class _Invalid(Exception):
    """Raised by a converter: carries what was expected (the reader adds what it got)."""

    def __init__(self, expected: str, got: str | None = None) -> None:
        super().__init__(expected)
        self.expected = expected
        self.got = got


def _got(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (int, float)):
        return repr(value)
    return f"{value!r} ({type(value).__name__})"


class _Conv:
    """A converter with a description used in 'expected ...' messages."""

    def __init__(self, expected: str, fn: Callable[[Any], Any]) -> None:
        self.expected = expected
        self.fn = fn

    def __call__(self, value: Any) -> Any:
        return self.fn(value)


def _choice(options: Sequence[str]) -> _Conv:
    expected = "one of " + ", ".join(options)

    def fn(v: Any) -> str:
        if isinstance(v, str) and v in options:
            return v
        raise _Invalid(expected)
    return _Conv(expected, fn)


def _string(*, pattern: re.Pattern[str] | None = None, desc: str = "a non-empty string") -> _Conv:
    def fn(v: Any) -> str:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and pattern is None:
            v = str(v)  # host: 10.0.0.1 is a string anyway; python: 3 -> "3" is harmless
        if not isinstance(v, str) or not v.strip():
            raise _Invalid(desc)
        if pattern is not None and not pattern.fullmatch(v):
            raise _Invalid(desc)
        return v
    return _Conv(desc, fn)


def _integer(*, lo: int | None = None, hi: int | None = None) -> _Conv:
    if lo is not None and hi is not None:
        desc = f"an integer from {lo} to {hi}"
    elif lo is not None:
        desc = f"an integer >= {lo}"
    else:
        desc = "an integer"

    def fn(v: Any) -> int:
        if isinstance(v, float) and v.is_integer() and not isinstance(v, bool):
            v = int(v)
        if not isinstance(v, int) or isinstance(v, bool):
            raise _Invalid(desc)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _Invalid(desc)
        return v
    return _Conv(desc, fn)


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _number(*, gt: float | None = None, ge: float | None = None) -> _Conv:
    desc = "a number"
    if gt is not None:
        desc += f" > {gt:g}"
    elif ge is not None:
        desc += f" >= {ge:g}"

    def fn(v: Any) -> float:
        # PyYAML reads 3e-3 (no dot) as a string; accept it as the number it obviously is.
        if isinstance(v, str) and _FLOAT_TEXT.fullmatch(v.strip()):
            v = float(v)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise _Invalid(desc)
        if (gt is not None and not v > gt) or (ge is not None and not v >= ge):
            raise _Invalid(desc)
        return float(v)
    return _Conv(desc, fn)


def _local_path(desc: str = "a path") -> _Conv:
    def fn(v: Any) -> Path:
        if not isinstance(v, str) or not v.strip():
            raise _Invalid(desc)
        return Path(v).expanduser()
    return _Conv(desc, fn)


class _Reader:
    """Reads plain data from one file, raising ConfigError with file, line and key."""

    def __init__(self, file: Path, lines: Mapping[str, int]) -> None:
        self.file = str(file)
        self.lines = lines

    def error(self, key: str, message: str, *, line_key: str | None = None) -> ConfigError:
        line = _nearest_line(self.lines, key if line_key is None else line_key)
        return ConfigError(message, file=self.file, line=line, key=key or None)

    def mapping(self, value: Any, key: str, *, allowed: Collection[str],
                required: Mapping[str, str] | Collection[str] = (), what: str = "a mapping",
                ) -> dict[str, Any]:
        """Check ``value`` is a mapping with only ``allowed`` keys and every ``required`` key.

        ``required`` may map key -> description of what it should hold.
        """
        if not isinstance(value, dict):
            raise self.error(key, f"expected {what}; got {_got(value)}")
        for k in value:
            if k not in allowed:
                hint = difflib.get_close_matches(k, list(allowed), n=1)
                msg = "unknown key; expected one of " + ", ".join(allowed)
                if hint:
                    msg += f" (did you mean {hint[0]!r}?)"
                raise self.error(_join(key, k), msg)
        for k in required:
            if k not in value:
                desc = required[k] if isinstance(required, Mapping) else None
                msg = "required key missing" + (f"; expected {desc}" if desc else "")
                raise self.error(_join(key, k), msg, line_key=key)
        return value

    def get(self, m: Mapping[str, Any], key: str, name: str, conv: _Conv, *,
            default: Any = _MISSING) -> Any:
        """``m[name]`` converted; ``default`` when absent or null (required if no default)."""
        full = _join(key, name)
        value = m.get(name)
        if value is None:
            if default is not _MISSING:
                return default
            if name not in m:
                raise self.error(full, f"required key missing; expected {conv.expected}",
                                 line_key=key)
        try:
            return conv(value)
        except _Invalid as exc:
            got = exc.got if exc.got is not None else _got(value)
            raise self.error(full, f"expected {exc.expected}; got {got}") from None

    def list(self, value: Any, key: str, *, what: str = "a list") -> list[Any]:
        if not isinstance(value, list):
            raise self.error(key, f"expected {what}; got {_got(value)}")
        return value


def _join(key: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{key}[{name}]"
    return f"{key}.{name}" if key else name


# --------------------------------------------------------------------------- inventory loader

_INVENTORY_WHAT = "an inventory YAML file (keys: bench, broker, boards, links)"


def load_inventory(path: str | Path) -> Inventory:
    """Load and validate ``inventory.yaml``; raise ConfigError on the first problem."""
    path = Path(path)
    data, lines = _read_yaml(path, _INVENTORY_WHAT)
    r = _Reader(path, lines)
    top = r.mapping(data, "", allowed=("bench", "broker", "boards", "links"),
                    required={"bench": _NAME_DESC, "boards": "a mapping of board name -> board",
                              "links": "a list of links from each wearable to the edge"},
                    what=_INVENTORY_WHAT)
    bench = r.get(top, "", "bench", _string(pattern=_NAME_RE, desc=_NAME_DESC))
    broker = _broker(r, top.get("broker"))
    boards = _boards(r, top["boards"])
    links = _links(r, top["links"], boards)
    return Inventory(path=path, bench=bench, broker=broker, boards=MappingProxyType(boards),
                     links=tuple(links), _lines=MappingProxyType(dict(lines)))


def _broker(r: _Reader, value: Any) -> BrokerSpec:
    if value is None:
        return BrokerSpec()
    if isinstance(value, str):  # shorthand: broker: embedded
        value = {"mode": value}
    m = r.mapping(value, "broker", allowed=("mode", "host", "port"))
    mode = r.get(m, "broker", "mode", _choice(BROKER_MODES), default="embedded")
    if mode == "external":
        host = r.get(m, "broker", "host", _string(desc="the broker's host name or address"))
        port = r.get(m, "broker", "port", _integer(lo=1, hi=65535), default=1883)
    else:
        host = r.get(m, "broker", "host", _string(desc="an address to bind"), default=None)
        port = r.get(m, "broker", "port", _integer(lo=1, hi=65535), default=None)
    return BrokerSpec(mode=mode, host=host, port=port)


_BOARD_KEYS = ("role", "kind", "connect", "host", "user", "port", "runtime", "python",
               "workdir", "energy", "compute_scale")
_SSH_ONLY = ("host", "user", "port")


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
            workdir_default: str | None = DEFAULT_WORKDIR
        else:
            for k in _SSH_ONLY:
                if m.get(k) is not None:
                    raise r.error(f"{key}.{k}", f"only used with connect: ssh; expected no {k} "
                                                f"for connect: {connect}")
            host = user = port = None
            workdir_default = None
        default_runtime = "tflite" if kind.startswith("rpi") else "torch"
        runtime = r.get(m, key, "runtime", _choice(RUNTIMES), default=default_runtime)
        python = r.get(m, key, "python", _string(desc="an interpreter name or path"),
                       default="python3")
        workdir = r.get(m, key, "workdir", _string(desc="a directory on the board"),
                        default=workdir_default)
        energy = r.get(m, key, "energy", _choice(ENERGY_METERS), default="none")
        if kind == "sim" and energy in ("ina219", "ina260"):
            raise r.error(f"{key}.energy", f"a sim board has no power meter; expected none or "
                                           f"model; got {energy!r}")
        compute_scale = r.get(m, key, "compute_scale", _number(gt=0), default=None)
        boards[name] = BoardSpec(name=name, role=role, kind=kind, connect=connect,
                                 runtime=runtime, host=host, user=user, port=port,
                                 python=python, workdir=workdir, energy=energy,
                                 compute_scale=compute_scale)

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


def _transport(r: _Reader, value: Any, key: str) -> TransportSpec:
    if value is None:
        return TransportSpec()
    if isinstance(value, str):  # shorthand: transport: mqtt
        value = {"type": value}
        if value["type"] not in TRANSPORTS:
            raise r.error(key, f"expected one of {', '.join(TRANSPORTS)}; got {value['type']!r}")
    if not isinstance(value, dict):
        raise r.error(key, f"expected a mapping with type and its settings; got {_got(value)}")
    ttype = r.get(value, key, "type", _choice(TRANSPORTS))
    settings = {k: v for k, v in value.items() if k != "type"}
    if ttype == "serial":
        r.get(value, key, "port", _string(desc="a serial device path such as /dev/ttyAMA0"))
        settings["baud"] = r.get(value, key, "baud", _integer(lo=1))
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


# --------------------------------------------------------------------------- experiment loader

_EXPERIMENT_WHAT = ("an experiment YAML file (keys: name, seed, dataset, model, train, partition, "
                    "assignment, run, faults)")


def load_experiment(path: str | Path) -> Experiment:
    """Load and validate ``experiment.yaml`` on its own (see :func:`check_compatible`)."""
    path = Path(path)
    data, lines = _read_yaml(path, _EXPERIMENT_WHAT)
    r = _Reader(path, lines)
    top = r.mapping(
        data, "", what=_EXPERIMENT_WHAT,
        allowed=("name", "seed", "dataset", "model", "train", "partition", "assignment", "run", "faults"),
        required={"name": _EXP_NAME_DESC, "dataset": "a mapping with name (and path)",
                  "assignment": "a mapping of board name -> student index or 'merge'",
                  "run": "a mapping with samples, rate_hz, deadline_ms, timeout_ms, output"})
    name = r.get(top, "", "name", _string(pattern=_EXP_NAME_RE, desc=_EXP_NAME_DESC))
    seed = r.get(top, "", "seed", _integer(lo=0), default=0)

    d = r.mapping(top["dataset"], "dataset", allowed=("name", "path"),
                  required={"name": "one of " + ", ".join(DATASETS)})
    ds_name = r.get(d, "dataset", "name", _choice(DATASETS))
    if ds_name == "fashion-mnist":
        ds_path = r.get(d, "dataset", "path", _local_path("a directory with the IDX files"),
                        default=DEFAULT_FASHION_MNIST_PATH)
    else:
        if d.get("path") is not None:
            raise r.error("dataset.path", f"expected no path for {ds_name} (it ships with "
                                          "scikit-learn); path applies to fashion-mnist")
        ds_path = None
    dataset = DatasetSpec(name=ds_name, path=ds_path)

    model: ModelSpec | None = None
    train: TrainSpec | None = None
    partition: PartitionSpec | None = None
    if top.get("partition") is not None:
        for k in ("model", "train"):
            if k in top:
                raise r.error(k, "expected either model + train (jointly trained students) or partition "
                                 "(a partitioned teacher), not both; the partition section defines the model")
        partition = _partition(r, top["partition"])
        students = partition.students
    else:
        for k, desc in (("model", "a mapping with family, students, width, out_dim"),
                        ("train", "a mapping with epochs, batch_size, lr (and subset)")):
            if k not in top:
                raise r.error(k, f"required key missing; expected {desc} (or a partition section instead)",
                              line_key="")
        model, train = _model(r, top["model"]), _train(r, top["train"])
        students = model.students

    assignment = _assignment(r, top["assignment"], students)

    u = r.mapping(top["run"], "run",
                  allowed=("samples", "rate_hz", "deadline_ms", "timeout_ms", "output"))
    run = RunSpec(
        samples=r.get(u, "run", "samples", _integer(lo=1)),
        rate_hz=r.get(u, "run", "rate_hz", _number(gt=0)),
        deadline_ms=r.get(u, "run", "deadline_ms", _number(gt=0)),
        timeout_ms=r.get(u, "run", "timeout_ms", _number(gt=0)),
        output=r.get(u, "run", "output", _local_path("a directory"), default=Path("runs")),
    )
    if not run.timeout_ms > run.deadline_ms:
        raise r.error("run.timeout_ms", f"expected a number > deadline_ms ({run.deadline_ms:g}); "
                                        f"got {run.timeout_ms:g}")

    faults: list[FaultSpec] = []
    if top.get("faults") is not None:
        for i, item in enumerate(r.list(top["faults"], "faults", what="a list of faults")):
            faults.append(_fault(r, item, f"faults[{i}]"))

    return Experiment(path=path, name=name, seed=seed, dataset=dataset, model=model,
                      train=train, assignment=MappingProxyType(assignment), run=run,
                      faults=tuple(faults), partition=partition, _lines=MappingProxyType(dict(lines)))


def _model(r: _Reader, value: Any) -> ModelSpec:
    mm = r.mapping(value, "model", allowed=("family", "students", "width", "out_dim"))
    return ModelSpec(
        family=r.get(mm, "model", "family", _choice(MODEL_FAMILIES), default="cnn-students"),
        students=r.get(mm, "model", "students", _integer(lo=1)),
        width=r.get(mm, "model", "width", _integer(lo=1)),
        out_dim=r.get(mm, "model", "out_dim", _integer(lo=1)),
    )


def _train(r: _Reader, value: Any) -> TrainSpec:
    t = r.mapping(value, "train", allowed=("epochs", "batch_size", "lr", "subset"))
    return TrainSpec(
        epochs=r.get(t, "train", "epochs", _integer(lo=1)),
        batch_size=r.get(t, "train", "batch_size", _integer(lo=1)),
        lr=r.get(t, "train", "lr", _number(gt=0)),
        subset=r.get(t, "train", "subset", _integer(lo=1), default=None),
    )


def _widths(v: Any) -> tuple[int, ...]:
    if not isinstance(v, list) or not v or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in v):
        raise _Invalid("a list of positive integers (channels per stage, e.g. [16, 32, 64])")
    return tuple(v)


def _fraction(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
        raise _Invalid("a number in (0, 1]")
    return float(v)


def _probability(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
        raise _Invalid("a number in [0, 1)")
    return float(v)


# Keys of the partition sub-sections and how each value is checked; defaults live with the code
# that uses them (testbed.partition.pipeline / layersplit), so only keys the file sets are kept.
_PARTITION_SUBSECTIONS: dict[str, dict[str, _Conv]] = {
    "teacher": {"widths": _Conv("a list of positive integers", _widths), "blocks": _integer(lo=1),
                "epochs": _integer(lo=1), "batch_size": _integer(lo=1), "lr": _number(gt=0),
                "subset": _integer(lo=1)},
    "graph": {"top_k": _integer(lo=2), "keep_fraction": _Conv("a number in (0, 1]", _fraction),
              "images": _integer(lo=10)},
    "student": {"width": _integer(lo=1), "part_dim": _integer(lo=1), "epochs": _integer(lo=1),
                "batch_size": _integer(lo=1), "lr": _number(gt=0), "temperature": _number(gt=0),
                "alpha": _Conv("a number in [0, 1)", _probability), "beta": _number(ge=0),
                "dropout": _Conv("a number in [0, 1)", _probability), "subset": _integer(lo=1),
                "seed": _integer(lo=0)},
    "layer": {"objective": _choice(SPLIT_OBJECTIVES), "encoding": _choice(ENCODINGS),
              "link": _string(desc="a link name of the inventory or a profile preset (e.g. hbc-164k)"),
              "repeats": _integer(lo=1)},
}


def _partition(r: _Reader, value: Any) -> PartitionSpec:
    key = "partition"
    p = r.mapping(value, key, allowed=("method", "students", "parts", *_PARTITION_SUBSECTIONS, "runtimes",
                                       "quantize", "max_subsets", "test_subset"),
                  required={"method": "one of " + ", ".join(PARTITION_METHODS)},
                  what="a mapping with method (nonn | resilient | layer), students, parts, teacher, graph, student")
    method = r.get(p, key, "method", _choice(PARTITION_METHODS))
    if method == "layer":
        students = r.get(p, key, "students", _integer(lo=1, hi=1), default=1)
        parts = r.get(p, key, "parts", _integer(lo=1, hi=1), default=1)
    else:
        students = r.get(p, key, "students", _integer(lo=2))
        parts = r.get(p, key, "parts", _integer(lo=1), default=students if method == "nonn" else 2)
        if method == "nonn" and parts != students:
            raise r.error(f"{key}.parts", f"expected {students} (NoNN has one part per student) or no parts "
                                          f"key; got {parts}")
        if method == "resilient" and students < 2 * parts:
            raise r.error(f"{key}.parts", f"expected M <= S/2 = {students // 2} so every part has >= 2 "
                                          f"students; got M = {parts}")
    subs: dict[str, Mapping[str, Any]] = {}
    for sub, convs in _PARTITION_SUBSECTIONS.items():
        skey = f"{key}.{sub}"
        m = r.mapping(p.get(sub) or {}, skey, allowed=tuple(convs))
        subs[sub] = MappingProxyType({k: r.get(m, skey, k, convs[k]) for k in m if m[k] is not None})
    runtimes: tuple[str, ...] = ("torch",)
    if p.get("runtimes") is not None:
        items = r.list(p["runtimes"], f"{key}.runtimes", what="a list of runtimes (torch, tflite)")
        conv = _choice(RUNTIMES)
        checked = []
        for i, v in enumerate(items):
            try:
                checked.append(conv(v))
            except _Invalid as exc:
                raise r.error(f"{key}.runtimes[{i}]", f"expected {exc.expected}; got {_got(v)}") from None
        runtimes = tuple(dict.fromkeys(checked))
        if not runtimes:
            raise r.error(f"{key}.runtimes", "expected at least one runtime (torch, tflite)")
    quantize = r.get(p, key, "quantize", _choice(QUANTIZE), default="none")
    if quantize != "none" and "tflite" not in runtimes:
        raise r.error(f"{key}.quantize", "int8 quantisation applies to LiteRT shards; expected runtimes to "
                                         "include tflite")
    return PartitionSpec(method=method, students=students, parts=parts, runtimes=runtimes, quantize=quantize,
                         max_subsets=r.get(p, key, "max_subsets", _integer(lo=1), default=200),
                         test_subset=r.get(p, key, "test_subset", _integer(lo=1), default=None), **subs)


def _assignment(r: _Reader, value: Any, students: int) -> dict[str, int | str]:
    what = f"a student index 0..{students - 1} or 'merge'"
    if not isinstance(value, dict) or not value:
        raise r.error("assignment", "expected a mapping of board name -> "
                                    f"{what}; got {_got(value) if value != {} else 'nothing'}")
    out: dict[str, int | str] = {}
    by_index: dict[int, str] = {}
    merges: list[str] = []
    for board, v in value.items():
        key = f"assignment.{board}"
        if not _NAME_RE.fullmatch(board):
            raise r.error(key, f"bad board name; expected {_NAME_DESC}; got {board!r}")
        if v == MERGE:
            if merges:
                raise r.error(key, f"expected exactly one board assigned 'merge' (the edge); "
                                   f"{merges[0]!r} already is")
            merges.append(board)
            out[board] = MERGE
            continue
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < students:
            raise r.error(key, f"expected {what}; got {_got(v)}")
        if v in by_index:
            raise r.error(key, f"expected a distinct student index per board; {v} is already "
                               f"assigned to {by_index[v]!r}")
        by_index[v] = board
        out[board] = v
    unassigned = [i for i in range(students) if i not in by_index]
    if unassigned:
        raise r.error("assignment", f"expected every student 0..{students - 1} assigned to a "
                                    f"board (model.students = {students}); unassigned: "
                                    f"{', '.join(map(str, unassigned))}")
    if not merges:
        raise r.error("assignment", "expected the edge board assigned 'merge'; got no 'merge'")
    return out


def _fault(r: _Reader, item: Any, key: str) -> FaultSpec:
    if not isinstance(item, dict):
        raise r.error(key, f"expected a mapping with kind and at_s; got {_got(item)}")
    kind = r.get(item, key, "kind", _choice(FAULT_KINDS))
    if kind == "outage":
        m = r.mapping(item, key, allowed=("kind", "link", "at_s", "duration_s"))
        return FaultSpec(kind=kind, at_s=r.get(m, key, "at_s", _number(ge=0)),
                         link=r.get(m, key, "link", _string(desc="a link name")),
                         duration_s=r.get(m, key, "duration_s", _number(gt=0)))
    m = r.mapping(item, key, allowed=("kind", "board", "at_s"))
    return FaultSpec(kind=kind, at_s=r.get(m, key, "at_s", _number(ge=0)),
                     board=r.get(m, key, "board", _string(desc="a board name")))


# --------------------------------------------------------------------------- cross-checks


def check_compatible(experiment: Experiment, inventory: Inventory) -> None:
    """Check ``experiment`` can run on ``inventory``; ConfigError citing the experiment file.

    Every assignment key is an inventory board; every wearable has a (distinct) student and
    the edge - and only the edge - is 'merge'; every student index is used (checked at
    load); fault links and boards exist.
    """
    r = _Reader(experiment.path, experiment._lines)
    inv = f"{inventory.path}"
    for board, v in experiment.assignment.items():
        key = f"assignment.{board}"
        spec = inventory.boards.get(board)
        if spec is None:
            raise r.error(key, f"unknown board; expected one of {', '.join(inventory.boards)} "
                               f"(boards of {inv})")
        if spec.role == "edge" and v != MERGE:
            raise r.error(key, f"expected 'merge' for the edge board; got {_got(v)}")
        if spec.role != "edge" and v == MERGE:
            raise r.error(key, f"expected a student index for wearable {board!r}; got 'merge' "
                               f"(only the edge {inventory.edge.name!r} merges)")
    for b in inventory.wearables:
        if b.name not in experiment.assignment:
            raise r.error("assignment", f"expected every wearable of {inv} assigned a student "
                                        f"index; {b.name!r} is not")
    if inventory.edge.name not in experiment.assignment:
        raise r.error("assignment", f"expected the edge {inventory.edge.name!r} assigned "
                                    "'merge'; it is not assigned")
    exported = experiment.partition.runtimes if experiment.partition is not None else ("torch",)
    for board in inventory.boards.values():
        if board.name in experiment.assignment and board.runtime not in exported:
            key = "partition.runtimes" if experiment.partition is not None else "model"
            how = ("add it to partition.runtimes" if experiment.partition is not None
                   else "jointly trained students export TorchScript only; use a partition section with "
                        "runtimes: [torch, tflite]")
            raise r.error(key, f"board {board.name!r} of {inv} has runtime {board.runtime!r} but the bundle "
                               f"would only hold {', '.join(exported)} shards; {how}")
    links = [l.name for l in inventory.links]
    for i, f in enumerate(experiment.faults):
        if f.kind == "outage" and f.link not in links:
            raise r.error(f"faults[{i}].link", f"unknown link; expected one of "
                                               f"{', '.join(links)} (links of {inv}); "
                                               f"got {f.link!r}")
        if f.kind == "kill" and f.board not in inventory.boards:
            raise r.error(f"faults[{i}].board", f"unknown board; expected one of "
                                                f"{', '.join(inventory.boards)} (boards of "
                                                f"{inv}); got {f.board!r}")


_OVERRIDE = "<override>"


def with_overrides(experiment: Experiment, *, samples: int | None = None,
                   rate_hz: float | None = None, output: str | Path | None = None,
                   faults: Sequence[FaultSpec] | None = None,
                   dataset: DatasetSpec | str | None = None,
                   train: TrainSpec | Mapping[str, Any] | None = None) -> Experiment:
    """A copy of ``experiment`` with the given values replaced (None = keep), validated.

    ``dataset`` may be a name (its default path is used); ``train`` may be a mapping of
    TrainSpec fields to replace (e.g. ``{"epochs": 1, "subset": 2000}``). Invalid values
    raise ConfigError with file ``<override>`` and the dotted key.
    """
    def bad(key: str, conv: _Conv, value: Any) -> Any:
        try:
            return conv(value)
        except _Invalid as exc:
            raise ConfigError(f"expected {exc.expected}; got {_got(value)}", file=_OVERRIDE,
                              key=key) from None

    run = experiment.run
    changes: dict[str, Any] = {}
    if samples is not None:
        changes["samples"] = bad("run.samples", _integer(lo=1), samples)
    if rate_hz is not None:
        changes["rate_hz"] = bad("run.rate_hz", _number(gt=0), rate_hz)
    if output is not None:
        changes["output"] = Path(output).expanduser()
    if changes:
        run = dataclasses.replace(run, **changes)
    new: dict[str, Any] = {"run": run}
    if faults is not None:
        checked = []
        for i, f in enumerate(faults):
            if not isinstance(f, FaultSpec):
                raise ConfigError(f"expected a FaultSpec; got {_got(f)}", file=_OVERRIDE,
                                  key=f"faults[{i}]")
            bad(f"faults[{i}].kind", _choice(FAULT_KINDS), f.kind)
            bad(f"faults[{i}].at_s", _number(ge=0), f.at_s)
            if f.kind == "outage":
                bad(f"faults[{i}].link", _string(desc="a link name"), f.link)
                bad(f"faults[{i}].duration_s", _number(gt=0), f.duration_s)
            else:
                bad(f"faults[{i}].board", _string(desc="a board name"), f.board)
            checked.append(f)
        new["faults"] = tuple(checked)
    if dataset is not None:
        if isinstance(dataset, str):
            bad("dataset.name", _choice(DATASETS), dataset)
            dataset = DatasetSpec(name=dataset, path=DEFAULT_FASHION_MNIST_PATH
                                  if dataset == "fashion-mnist" else None)
        new["dataset"] = dataset
    if train is not None:
        if experiment.train is None:
            raise ConfigError("expected no train override: this experiment has a partition section "
                              "(set partition.student / partition.teacher instead)", file=_OVERRIDE, key="train")
        if isinstance(train, TrainSpec):
            new["train"] = train
        else:
            convs = {"epochs": _integer(lo=1), "batch_size": _integer(lo=1),
                     "lr": _number(gt=0), "subset": _integer(lo=1)}
            fields: dict[str, Any] = {}
            for k, v in train.items():
                if k not in convs:
                    raise ConfigError("unknown key; expected one of " + ", ".join(convs),
                                      file=_OVERRIDE, key=f"train.{k}")
                fields[k] = None if (k == "subset" and v is None) else bad(f"train.{k}",
                                                                            convs[k], v)
            new["train"] = dataclasses.replace(experiment.train, **fields)
    return dataclasses.replace(experiment, **new)
