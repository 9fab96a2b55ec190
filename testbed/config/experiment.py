"""The experiment: what one run does (``experiment.yaml``), and how it meets an inventory.

Holds the experiment's vocabularies, its schema as frozen dataclasses (``Experiment`` and its
sections), ``load_experiment`` (validates a file completely: every problem a ConfigError
naming file, line, dotted key and what was expected), ``check_compatible`` (the experiment
against an inventory) and ``with_overrides`` (command-line values put into the same sections
and read again by the same section readers, so an override obeys exactly the file's rules).

It must not touch a board, the network, a broker or a dataset, and must not train or build
anything: it only reads the YAML file it is given.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from testbed.config.checks import (_choice, _Conv, _got, _integer, _Invalid, _local_path, _number, _Reader,
                                   _string)
from testbed.config.overlay import apply_overrides
from testbed.config.inventory import _NAME_DESC, _NAME_RE, ENCODINGS, RUNTIMES, Inventory
from testbed.config.yamlfile import nearest_line, read_yaml

__all__ = [
    "DATASETS", "MODEL_FAMILIES", "PARTITION_METHODS", "SPLIT_OBJECTIVES", "QUANTIZE", "FAULT_KINDS", "MERGE",
    "DEFAULT_FASHION_MNIST_PATH",
    "DatasetSpec", "ModelSpec", "TrainSpec", "PartitionSpec", "RunSpec", "FaultSpec", "Experiment",
    "load_experiment", "check_compatible", "with_overrides",
]

DATASETS = ("fashion-mnist", "digits")
MODEL_FAMILIES = ("cnn-students",)
PARTITION_METHODS = ("nonn", "resilient", "layer")
SPLIT_OBJECTIVES = ("latency", "energy")
# Bounds of a run: every wearable holds a copy of its samples' inputs (100k Fashion-MNIST images are
# 314 MB), the orchestrator sends one trigger per board per sample, and an edge waits deadline_ms
# for parts and the orchestrator timeout_ms for a result.
MAX_SAMPLES = 100_000
MAX_RATE_HZ = 1000.0
MAX_DEADLINE_MS = 60_000.0
MAX_TIMEOUT_MS = 600_000.0
QUANTIZE = ("none", "int8", "int8-dynamic")   # LiteRT PTQ modes (testbed.litert uses this list)
FAULT_KINDS = ("outage", "kill")
MERGE = "merge"
DEFAULT_FASHION_MNIST_PATH = Path("/usr/share/datasets/fashion-mnist")

_EXP_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXP_NAME_DESC = "a name of letters, digits, '.', '-' and '_' starting with a letter or digit"

# --------------------------------------------------------------------------- schema


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
        return nearest_line(self._lines, key)


# --------------------------------------------------------------------------- loader

_EXPERIMENT_WHAT = ("an experiment YAML file (keys: name, seed, dataset, model, train, partition, "
                    "assignment, run, faults)")


def load_experiment(path: str | Path, *, overrides: Mapping[str, Any] | None = None,
                    sources: Mapping[str, str] | None = None) -> Experiment:
    """Load and validate ``experiment.yaml`` on its own (see :func:`check_compatible`).

    ``overrides`` (dotted key -> value, e.g. ``{"run.deadline_ms": 200}``) are set in the file's
    data before it is checked (testbed.config.overlay); an invalid one is reported with its
    source from ``sources`` (``--set``, ``sweep.yaml:12``) instead of a line of the file.
    """
    path = Path(path)
    data, lines = read_yaml(path, _EXPERIMENT_WHAT)
    touched: dict[str, str] = {}
    if overrides:
        data, touched = apply_overrides(data, overrides, sources=sources or {})
    r = _Reader(path, lines, sources=touched)
    top = r.mapping(
        data, "", what=_EXPERIMENT_WHAT,
        allowed=("name", "seed", "dataset", "model", "train", "partition", "assignment", "run", "faults"),
        required={"name": _EXP_NAME_DESC, "dataset": "a mapping with name (and path)",
                  "assignment": "a mapping of board name -> student index or 'merge'",
                  "run": "a mapping with samples, rate_hz, deadline_ms, timeout_ms, output"})
    name = r.get(top, "", "name", _string(pattern=_EXP_NAME_RE, desc=_EXP_NAME_DESC))
    seed = r.get(top, "", "seed", _integer(lo=0), default=0)
    dataset = _dataset(r, top["dataset"])

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
    return Experiment(path=path, name=name, seed=seed, dataset=dataset, model=model, train=train,
                      assignment=MappingProxyType(assignment), run=_run(r, top["run"]),
                      faults=_faults(r, top.get("faults")), partition=partition,
                      _lines=MappingProxyType(dict(lines)))


# --------------------------------------------------------------------------- section readers
# One reader per section: load_experiment reads the file's sections with them, and
# with_overrides reads an overridden section again with the same one.


def _dataset(r: _Reader, value: Any) -> DatasetSpec:
    d = r.mapping(value, "dataset", allowed=("name", "path"),
                  required={"name": "one of " + ", ".join(DATASETS)})
    name = r.get(d, "dataset", "name", _choice(DATASETS))
    if name == "fashion-mnist":
        path = r.get(d, "dataset", "path", _local_path("a directory with the IDX files"),
                     default=DEFAULT_FASHION_MNIST_PATH)
        return DatasetSpec(name=name, path=path)
    if d.get("path") is not None:
        raise r.error("dataset.path", f"expected no path for {name} (it ships with "
                                      "scikit-learn); path applies to fashion-mnist")
    return DatasetSpec(name=name, path=None)


def _run(r: _Reader, value: Any) -> RunSpec:
    u = r.mapping(value, "run", allowed=("samples", "rate_hz", "deadline_ms", "timeout_ms", "output"))
    run = RunSpec(
        samples=r.get(u, "run", "samples", _integer(lo=1, hi=MAX_SAMPLES)),
        rate_hz=r.get(u, "run", "rate_hz", _number(gt=0, le=MAX_RATE_HZ)),
        deadline_ms=r.get(u, "run", "deadline_ms", _number(gt=0, le=MAX_DEADLINE_MS)),
        timeout_ms=r.get(u, "run", "timeout_ms", _number(gt=0, le=MAX_TIMEOUT_MS)),
        output=r.get(u, "run", "output", _local_path("a directory"), default=Path("runs")),
    )
    if not run.timeout_ms > run.deadline_ms:
        raise r.error("run.timeout_ms", f"expected a number > deadline_ms ({run.deadline_ms:g}); "
                                        f"got {run.timeout_ms:g}")
    return run


def _faults(r: _Reader, value: Any) -> tuple[FaultSpec, ...]:
    if value is None:
        return ()
    return tuple(_fault(r, item, f"faults[{i}]")
                 for i, item in enumerate(r.list(value, "faults", what="a list of faults")))


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


# --------------------------------------------------------------------------- overrides

_OVERRIDE = "<override>"


def with_overrides(experiment: Experiment, *, samples: int | None = None,
                   rate_hz: float | None = None, output: str | Path | None = None,
                   faults: Sequence[FaultSpec | Mapping[str, Any]] | None = None,
                   dataset: DatasetSpec | str | None = None,
                   train: TrainSpec | Mapping[str, Any] | None = None,
                   sources: Mapping[str, str] | None = None) -> Experiment:
    """A copy of ``experiment`` with the given values replaced (None = keep), validated.

    Each overridden section is rebuilt as the mapping a file would hold, with the new values
    put in, and read again by the section reader ``load_experiment`` uses, so an override obeys
    the file's rules (``run.timeout_ms > deadline_ms`` included). ``dataset`` may be a name
    (its default path is used); ``train`` may be a mapping of TrainSpec fields to replace
    (e.g. ``{"epochs": 1, "subset": 2000}``; ``"subset": None`` drops the subset).

    An invalid value raises ConfigError with the dotted key, and as its file the source of the
    value: ``sources`` maps a dotted key (``run.samples``, ``train.epochs``) or a section
    (``faults``) to a name for where its value came from, such as the command-line flag
    (``{"run.samples": "--samples"}``); an overridden key not listed is named ``<override>``.
    """
    run = {k: v for k, v in (("samples", samples), ("rate_hz", rate_hz), ("output", output)) if v is not None}
    if isinstance(train, TrainSpec):
        train = _as_section(train)
    changed = [f"run.{k}" for k in run] + [k for k, v in (("train", train), ("faults", faults),
                                                         ("dataset", dataset)) if v is not None]
    r = _Reader(experiment.path, experiment._lines,
                sources={**{key: _OVERRIDE for key in changed}, **(sources or {})})
    new: dict[str, Any] = {}
    if run:
        new["run"] = _run(r, {**_as_section(experiment.run), **_as_section_values(run)})
    if faults is not None:
        new["faults"] = _faults(r, [_as_section(f) if isinstance(f, FaultSpec) else f for f in faults])
    if dataset is not None:
        new["dataset"] = _dataset(r, {"name": dataset} if isinstance(dataset, str) else _as_section(dataset))
    if train is not None:
        if experiment.train is None:
            key = f"train.{next(iter(train))}" if train else "train"   # the first value given names the source
            raise r.error(key, "expected no train override: this experiment has a partition section "
                               "(set partition.student / partition.teacher instead)")
        new["train"] = _train(r, {**_as_section(experiment.train), **train})
    return dataclasses.replace(experiment, **new)


def _as_section(spec: Any) -> dict[str, Any]:
    """A section dataclass as the mapping a file would hold: its fields that are set."""
    return _as_section_values({f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)
                               if getattr(spec, f.name) is not None})


def _as_section_values(values: Mapping[str, Any]) -> dict[str, Any]:
    """Values as a file holds them: paths as text (the readers expand ``~`` again)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in values.items()}
