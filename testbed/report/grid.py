"""A sweep file (``sweep.yaml``) and its grid: which runs a sweep is made of, each with its key.

Holds ``load_sweep`` (the file checked completely, every problem a ConfigError naming file,
line and key), ``SweepSpec``, ``Point`` (one run of the grid: its label, its axis values, the
experiment and inventory overrides it sets, the benches it can run on and its key), ``expand``
(the points, each validated by loading the base experiment and a bench inventory with its
overrides, exactly as ``testbed run --set`` would) and ``AXES``, the shorthand axis names.

The file:

    name: failure-rate            # the sweep's folder: sweeps/<name>
    experiment: base.yaml         # the base experiment (relative to this file)
    benches: [inventory.yaml]     # inventories that can run points (--bench replaces them)
    set: {run.samples: 400}       # overrides for every point
    configs:                      # optional; each crossed with the grid
      - {label: fmnist-s4m2, set: {dataset.name: fashion-mnist, partition.students: 4}}
    grid:                         # axes, crossed in this order (the last varies fastest)
      method: [nonn, resilient]
      availability: [1.0, 0.9, 0.6]
      seed: [0, 1, 2]
    outage: {mean_outage_s: 1.0}  # what an availability means (an on/off process on every link)

A key under ``set`` or ``grid`` is a shorthand from AXES or a dotted key: ``links.<link>|*.<key>``
sets the inventory, anything else the experiment. Later settings win: the sweep's ``set``, then
the config's, then the axes in order.

A point's key is the hash of its effective configuration: the experiment after its overrides
(without its output folder) and the bench as a run sees it (boards' roles, kinds and runtimes;
links' transports, encodings and profiles after overrides). Benches that can run the same point
must agree on that, so a point has one key whichever bench runs it.

It runs nothing and writes nothing; ``testbed.report.sweep`` runs the points.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from testbed.config import Experiment, Inventory, check_compatible, load_experiment, load_inventory
from testbed.config.checks import _got, _number, _Reader, _string
from testbed.config.yamlfile import nearest_line, read_yaml
from testbed.errors import ConfigError
from testbed.hashing import plain

__all__ = ["AXES", "DISTRIBUTIONS", "OutageSpec", "Point", "SweepSpec", "bench_signature", "canonical_experiment",
           "describe", "expand", "load_sweep", "point_key"]

_SWEEP_WHAT = "a sweep YAML file (keys: name, experiment, benches, set, configs, grid, outage)"
DISTRIBUTIONS = ("exponential", "lognormal")
MAX_POINTS = 10_000


@dataclass(frozen=True)
class OutageSpec:
    """What an availability means: an on/off process on ``links`` (``*`` = every link) whose
    outages last ``mean_outage_s`` on average; up times follow from the availability."""

    mean_outage_s: float = 1.0
    distribution: str = "exponential"
    links: str = "*"

    def process(self, availability: float) -> dict[str, Any] | None:
        """The profile's ``outage_process`` for an availability (None: never down)."""
        if availability >= 1.0:
            return None
        up = self.mean_outage_s * availability / (1.0 - availability)
        return {"distribution": self.distribution, "mean_up_s": round(up, 9), "mean_down_s": self.mean_outage_s}


def _axis_availability(v: Any, outage: OutageSpec) -> dict[str, Any]:
    return {f"links.{outage.links}.profile.outage_process": outage.process(float(v))}


def _axis_method(v: Any, outage: OutageSpec) -> dict[str, Any]:
    # NoNN and the layer split have no parts of their own (NoNN: one per student): drop the base's M
    return {"partition.method": v} if v == "resilient" else {"partition.method": v, "partition.parts": None}


def _links_key(sub: str) -> Callable[[Any, OutageSpec], dict[str, Any]]:
    return lambda v, outage: {f"links.{outage.links}.{sub}": v}


# Shorthand axes: name -> (what its values must be, the overrides a value sets)
AXES: Mapping[str, tuple[str, Callable[[Any, OutageSpec], dict[str, Any]]]] = MappingProxyType({
    "method": ("a partition method: nonn, resilient or layer", _axis_method),
    "availability": ("a link availability from 0 (exclusive) to 1: the fraction of time each link is up",
                     _axis_availability),
    "seed": ("an integer >= 0 (data, training and the fault processes)", lambda v, o: {"seed": v}),
    "deadline_ms": ("the edge's deadline in ms", lambda v, o: {"run.deadline_ms": v}),
    "samples": ("samples per run", lambda v, o: {"run.samples": v}),
    "profile": ("a link profile preset name (or an inline profile mapping)", _links_key("profile")),
    "rate_bps": ("a link rate in bit/s", _links_key("profile.rate_bps")),
    "encoding": ("an activation encoding (f32, f16, int8)", _links_key("encoding")),
    "compression": ("a payload compression (none, zstd, lz4)", _links_key("compression")),
})


def _check_axis_value(name: str, v: Any) -> str | None:
    """Why a shorthand axis value is refused before the files' readers see it (None: fine)."""
    if name == "availability":
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) <= 1.0:
            return AXES[name][0]
    if name == "method" and v not in ("nonn", "resilient", "layer"):
        return AXES[name][0]
    return None


@dataclass(frozen=True)
class Setting:
    """One override as written in the sweep file, with where it was written."""

    key: str          # a shorthand axis or a dotted key
    value: Any
    source: str       # "sweep.yaml:12"


@dataclass(frozen=True)
class ConfigSpec:
    label: str
    settings: tuple[Setting, ...]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file; paths resolved against the file's folder."""

    path: Path
    name: str
    experiment: Path
    benches: tuple[Path, ...]
    settings: tuple[Setting, ...]
    configs: tuple[ConfigSpec, ...]
    axes: tuple[tuple[str, tuple[Any, ...], str], ...]      # (name, values, source)
    outage: OutageSpec


@dataclass(frozen=True)
class Point:
    """One run of the grid. ``benches`` are indexes into the benches it was expanded against."""

    key: str
    label: str
    values: Mapping[str, Any]
    experiment_overrides: Mapping[str, Any]
    inventory_overrides: Mapping[str, Any]
    sources: Mapping[str, str]
    benches: tuple[int, ...]
    describe: Mapping[str, Any] = field(default_factory=dict)

    def set_args(self) -> list[str]:
        """``testbed run`` flags that make this point's configuration (values as JSON, which is YAML)."""
        out: list[str] = []
        for flag, overrides in (("--set", self.experiment_overrides), ("--set-inventory", self.inventory_overrides)):
            for k, v in overrides.items():
                out += [flag, f"{k}={json.dumps(v, separators=(',', ':'))}"]
        return out


# --------------------------------------------------------------------------- the file


def load_sweep(path: str | Path) -> SweepSpec:
    """Load and check a sweep file (the points are checked by :func:`expand`)."""
    path = Path(path)
    data, lines = read_yaml(path, _SWEEP_WHAT)
    r = _Reader(path, lines)
    top = r.mapping(data, "", what=_SWEEP_WHAT,
                    allowed=("name", "experiment", "benches", "set", "configs", "grid", "outage"),
                    required={"name": "a name for the sweep's folder", "experiment": "the base experiment file",
                              "grid": "a mapping of axis -> list of values"})
    from testbed.config.experiment import _EXP_NAME_DESC, _EXP_NAME_RE
    name = r.get(top, "", "name", _string(pattern=_EXP_NAME_RE, desc=_EXP_NAME_DESC))
    base = path.parent
    experiment = base / r.get(top, "", "experiment", _string(desc="a path to an experiment YAML file"))
    benches_raw = top.get("benches") or []
    if not isinstance(benches_raw, list) or not all(isinstance(b, str) and b.strip() for b in benches_raw):
        raise r.error("benches", f"expected a list of inventory files; got {_got(benches_raw)}")
    settings = _settings(r, top.get("set"), "set", path)
    configs = _configs(r, top.get("configs"), path)
    axes = _axes(r, top["grid"], path)
    outage = _outage(r, top.get("outage"))
    return SweepSpec(path=path, name=name, experiment=experiment, benches=tuple(base / b for b in benches_raw),
                     settings=settings, configs=configs, axes=axes, outage=outage)


def _where(path: Path, lines: Mapping[str, int], key: str) -> str:
    line = nearest_line(lines, key)
    return f"{path}:{line}" if line is not None else str(path)


def _settings(r: _Reader, value: Any, key: str, path: Path) -> tuple[Setting, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise r.error(key, f"expected a mapping of key -> value (a shorthand: {', '.join(AXES)}; or a dotted "
                           f"key); got {_got(value)}")
    out = []
    for k, v in value.items():
        if k in AXES and (why := _check_axis_value(k, v)):
            raise r.error(f"{key}.{k}", f"expected {why}; got {_got(v)}")
        out.append(Setting(key=k, value=v, source=_where(path, r.lines, f"{key}.{k}")))
    return tuple(out)


def _configs(r: _Reader, value: Any, path: Path) -> tuple[ConfigSpec, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        raise r.error("configs", f"expected a non-empty list of {{label, set}}; got {_got(value)}")
    out: list[ConfigSpec] = []
    for i, item in enumerate(value):
        key = f"configs[{i}]"
        m = r.mapping(item, key, allowed=("label", "set"), required={"label": "a name", "set": "overrides"},
                      what="a mapping with label and set")
        label = r.get(m, key, "label", _string(desc="a non-empty label"))
        if any(c.label == label for c in out):
            raise r.error(f"{key}.label", f"expected a label no other config has; {label!r} is used twice")
        out.append(ConfigSpec(label=label, settings=_settings(r, m["set"], f"{key}.set", path)))
    return tuple(out)


def _axes(r: _Reader, value: Any, path: Path) -> tuple[tuple[str, tuple[Any, ...], str], ...]:
    if not isinstance(value, dict) or not value:
        raise r.error("grid", f"expected a mapping of axis -> list of values; got {_got(value)}")
    out = []
    total = 1
    for k, vals in value.items():
        key = f"grid.{k}"
        if not isinstance(vals, list) or not vals:
            raise r.error(key, f"expected a non-empty list of values; got {_got(vals)}")
        for j, v in enumerate(vals):
            if k in AXES and (why := _check_axis_value(k, v)):
                raise r.error(f"{key}[{j}]", f"expected {why}; got {_got(v)}")
        if len({json.dumps(v, sort_keys=True) for v in vals}) != len(vals):
            raise r.error(key, "expected distinct values; a value is listed twice")
        total *= len(vals)
        out.append((k, tuple(vals), _where(path, r.lines, key)))
    if total > MAX_POINTS:
        raise r.error("grid", f"expected at most {MAX_POINTS:,} points; the grid has {total:,}")
    return tuple(out)


def _outage(r: _Reader, value: Any) -> OutageSpec:
    if value is None:
        return OutageSpec()
    m = r.mapping(value, "outage", allowed=("mean_outage_s", "distribution", "links"),
                  what="a mapping with mean_outage_s (and distribution, links)")
    from testbed.config.checks import _choice
    return OutageSpec(
        mean_outage_s=r.get(m, "outage", "mean_outage_s", _number(gt=0), default=1.0),
        distribution=r.get(m, "outage", "distribution", _choice(DISTRIBUTIONS), default="exponential"),
        links=r.get(m, "outage", "links", _string(desc="a link name or *"), default="*"))


# --------------------------------------------------------------------------- the points


def _expand_setting(s: Setting, outage: OutageSpec) -> dict[str, tuple[Any, str]]:
    """A setting as dotted overrides, each with its source."""
    if s.key in AXES:
        return {k: (v, s.source) for k, v in AXES[s.key][1](s.value, outage).items()}
    return {s.key: (s.value, s.source)}


def _fmt_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, separators=(",", ":"))


def expand(spec: SweepSpec, benches: Sequence[Path], *,
           load_bench: Callable[..., Inventory] = load_inventory) -> list[Point]:
    """Every point of the grid, checked against the benches it can run on (ConfigError naming the
    sweep file's line when a point's configuration is invalid or no bench can run it)."""
    if not benches:
        raise ConfigError("no bench; expected benches: in the sweep file or --bench INVENTORY",
                          file=str(spec.path), key="benches")
    configs = spec.configs or (ConfigSpec(label="", settings=()),)
    base = load_experiment(spec.experiment)
    base_parts = base.partition.parts if base.partition is not None and base.partition.method == "resilient" else None
    names = [a[0] for a in spec.axes]
    points: list[Point] = []
    seen: dict[str, str] = {}
    for config in configs:
        for combo in itertools.product(*(a[1] for a in spec.axes)):
            settings = [*spec.settings, *config.settings,
                        *(Setting(key=n, value=v, source=a[2]) for n, v, a in zip(names, combo, spec.axes))]
            merged: dict[str, tuple[Any, str]] = {}
            for s in settings:
                for k, v in _expand_setting(s, spec.outage).items():
                    merged.pop(k, None)   # re-inserted last: applied after the keys it overrides
                    merged[k] = v
            exp_over = {k: v for k, (v, _) in merged.items() if not k.startswith("links.")}
            inv_over = {k: v for k, (v, _) in merged.items() if k.startswith("links.")}
            sources = {k: src for k, (_, src) in merged.items()}
            values = {**({"config": config.label} if spec.configs else {}), **dict(zip(names, combo))}
            label = "/".join(f"{k}={_fmt_value(v)}" if k != "config" else str(v) for k, v in values.items())
            m = next((v for s in reversed(settings) if s.key != "method"
                      for k, (v, _) in _expand_setting(s, spec.outage).items() if k == "partition.parts"), base_parts)
            point = _check_point(spec, benches, label=label, values=values, exp_over=exp_over, inv_over=inv_over,
                                 sources=sources, load_bench=load_bench, config_parts=m)
            if point.key in seen:
                raise ConfigError(f"points {seen[point.key]!r} and {label!r} have the same effective configuration; "
                                  "expected every point of the grid to differ", file=str(spec.path), key="grid")
            seen[point.key] = label
            points.append(point)
    return points


def _check_point(spec: SweepSpec, benches: Sequence[Path], *, label: str, values: Mapping[str, Any],
                 exp_over: Mapping[str, Any], inv_over: Mapping[str, Any], sources: Mapping[str, str],
                 load_bench: Callable[..., Inventory], config_parts: int | None = None) -> Point:
    exp = load_experiment(spec.experiment, overrides=exp_over, sources=sources)
    fits: list[tuple[int, Inventory]] = []
    why: list[str] = []
    for i, bench in enumerate(benches):
        inv = load_bench(bench, overrides=inv_over, sources=sources)
        try:
            check_compatible(exp, inv)
        except ConfigError as exc:
            why.append(f"{bench}: {exc.detail}")
            continue
        fits.append((i, inv))
    if not fits:
        raise ConfigError(f"point {label!r} cannot run on any bench ({'; '.join(why)})", file=str(spec.path),
                          key="benches")
    signature = bench_signature(fits[0][1])
    for i, inv in fits[1:]:
        if bench_signature(inv) != signature:
            raise ConfigError(f"benches {benches[fits[0][0]]} and {benches[i]} can both run point {label!r} but "
                              "differ in boards or links (roles, runtimes, transports, encodings or profiles); "
                              "expected benches that share points to be the same bench", file=str(spec.path),
                              key="benches")
    key = point_key(exp, signature)
    return Point(key=key, label=label, values=MappingProxyType(dict(values)),
                 experiment_overrides=MappingProxyType(dict(exp_over)),
                 inventory_overrides=MappingProxyType(dict(inv_over)), sources=MappingProxyType(dict(sources)),
                 benches=tuple(i for i, _ in fits), describe=MappingProxyType(describe(exp, fits[0][1], config_parts=config_parts)))


# --------------------------------------------------------------------------- keys and descriptions


def canonical_experiment(exp: Experiment) -> dict[str, Any]:
    """The experiment as data, without where it was read from or where its runs go."""
    d = plain(exp)
    d.pop("path", None)
    d["run"].pop("output", None)
    return d


def bench_signature(inv: Inventory) -> dict[str, Any]:
    """What of a bench changes a run's figures: boards' roles, kinds and runtimes; the links."""
    return {"boards": {b.name: {"role": b.role, "kind": b.kind, "runtime": b.runtime,
                                "compute_scale": b.compute_scale} for b in inv.boards.values()},
            "links": [{"name": l.name, "from": l.src, "to": l.dst, "transport": l.transport.type,
                       "encoding": l.encoding, "compression": l.compression,
                       "compression_level": l.compression_level, "profile": plain(l.profile.as_dict())}
                      for l in inv.links]}


def point_key(exp: Experiment, signature: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of the canonical effective configuration."""
    doc = json.dumps({"experiment": canonical_experiment(exp), "bench": signature}, sort_keys=True,
                     separators=(",", ":"), default=str)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


def describe(exp: Experiment, inv: Inventory, *, config_parts: int | None = None) -> dict[str, Any]:
    """The descriptive columns of a point (points.csv): what it ran, whatever its axes were.

    ``parts`` is the configuration's M, so a NoNN point (one part per student) sits in the same
    configuration as the resilient points it is compared with: the resilient method's parts, or
    ``config_parts`` (what the configuration sets before ``method: nonn`` drops it), else S."""
    avail, mean_out = [], []
    for l in inv.links:
        proc = l.profile.outage_process
        if proc is None:
            avail.append(1.0)
        else:
            avail.append(1.0 - proc.down_fraction)
            mean_out.append(proc.mean_down_s)
    part = exp.partition
    return {
        "dataset": exp.dataset.name,
        "students": exp.students,
        "parts": (part.parts if part is not None and part.method == "resilient" else config_parts or exp.students),
        "method": part.method if part is not None else "joint",
        "seed": exp.seed,
        "availability": round(min(avail), 6) if avail else 1.0,
        "mean_outage_s": max(mean_out) if mean_out else None,
        "rate_bps": min(l.profile.rate_bps for l in inv.links) if inv.links else None,
        "deadline_ms": exp.run.deadline_ms,
        "encoding": "/".join(sorted({l.encoding for l in inv.links})),
    }
