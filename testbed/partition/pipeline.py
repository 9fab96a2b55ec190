"""One partitioning run, from a dataset name to a bundle directory the agents deploy.

Holds ``PartitionConfig`` (frozen, nested: teacher, graph, students), ``run_partition`` (one
method: ``nonn`` or ``resilient``) and ``run_compare`` (both methods on the same teacher, seed
and teacher pass). A run: trains or loads the teacher (cached by config hash); computes the
teacher's logits and final feature maps on the training images once; builds NoNN's filter graph
on the first ``graph.images`` of them; partitions (nonn: Louvain into S parts, student i learns
part i, merge ``concat``; resilient: balanced eigen split into M parts, student i learns part
i mod M, merge ``average``); trains the students by distillation (cached by a hash of their
config, the teacher's key and the partition); evaluates resilience offline; and exports a bundle
in testbed/bundle.py's manifest format 1 (TorchScript shards, sha256 of every file) after
checking that the traced shards reproduce the torch modules on real test images (bundle.py's
``trace_shard`` and ``check_parity``; ``ExportParityError`` is re-exported here).

Graph density: NoNN keeps the strongest 1 % of the F·(F−1)/2 possible edges. For F = 64 that
is 20 edges, which touch at most 40 of the 64 filters (typically fewer), so most filters become
isolated and are dropped, and the eigen split has nothing to go on for them. The default here
is ``keep_fraction = 0.1`` (202 edges on F = 64) with ``top_k = F/4``; the partition report
states, for the same activations, how many filters the 1 % graph would have left connected.

Cache keys and records: the teacher's and the students' weights are cached under their config
key plus testbed/weightcache.py's tag (the process's numerics: torch version, threads,
deterministic flag; and the data's sha256), and every manifest records ``numerics`` (and its
evaluation the keyed part) and ``data``, so a figure says which thread count made it.

Progress: ``progress(phase, step, total, loss)`` hears every phase: ``teacher`` and
``students:<method>`` per training step (from step 0), ``teacher pass`` per batch of 1,000
images, ``partition:<method>``, ``evaluate:<method>`` and ``export:<method>`` at their start
(step 0) and end (step = total); ``loss`` is NaN outside training.

The layer split is not here. It must not wire the CLI or read experiment files (the caller
builds a PartitionConfig), nor set torch's thread count (the entry point does, once:
testbed.training.configure_numerics), and never downloads anything.
"""
from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed import weightcache
from testbed.bundle import (FORMAT, MANIFEST, PARITY_TOLERANCE, ExportParityError, check_parity, sha256_file,
                            trace_shard)
from testbed.data import Dataset, load_dataset
from testbed.errors import TestbedError
from testbed.hashing import plain
from testbed.partition.evaluate import ResilienceRow, merge_batch, resilience, unified_accuracy
from testbed.partition.graph import (Partition, eigen_parts, filter_graph, intra_share, louvain_parts,
                                     random_parts, student_parts)
from testbed.partition.students import PartitionedStudents, StudentsConfig, part_attention, train_students
from testbed.partition.teacher import Teacher, TeacherConfig, load_or_train_teacher, teacher_accuracy
from testbed.training import numerics, numerics_record

__all__ = ["METHODS", "PARITY_TOLERANCE", "CompareResult", "ExportParityError", "GraphSpec", "PartitionConfig",
           "PartitionError", "PartitionResult", "Progress", "StudentSpec", "TeacherSpec", "export_partitioned",
           "run_compare", "run_partition"]

METHODS = ("nonn", "resilient")
Progress = Callable[[str, int, int, float], None]   # (phase, step, total_steps, loss)


class PartitionError(TestbedError):
    """A partitioning run cannot go on (unknown method, unusable graph, ...)."""


@dataclass(frozen=True)
class TeacherSpec:
    """The teacher's architecture and training (F = widths[-1] filters get partitioned)."""

    widths: tuple[int, int, int] = (16, 32, 64)
    blocks: int = 1
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.004
    subset: int | None = None


@dataclass(frozen=True)
class GraphSpec:
    """NoNN's filter graph: ``top_k`` filters per image (None = F/4), strongest
    ``keep_fraction`` of the edges kept, built on the first ``images`` training images."""

    top_k: int | None = None
    keep_fraction: float = 0.1
    images: int = 10_000


@dataclass(frozen=True)
class StudentSpec:
    """The students and their distillation (see testbed/partition/students.py for T, α, β)."""

    width: int = 12
    part_dim: int = 16
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.005
    temperature: float = 4.0
    alpha: float = 0.9
    beta: float = 1000.0
    dropout: float = 0.0
    subset: int | None = None
    seed: int | None = None         # the students' training seed; None: the run's seed


@dataclass(frozen=True)
class PartitionConfig:
    """Everything one partitioning run needs. ``parts`` is M (resilient); NoNN uses S parts."""

    dataset: str = "fashion-mnist"
    dataset_path: str | None = None
    method: str = "resilient"
    students: int = 4
    parts: int = 2
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    graph: GraphSpec = field(default_factory=GraphSpec)
    student: StudentSpec = field(default_factory=StudentSpec)
    seed: int = 0
    max_subsets: int = 200
    test_subset: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PartitionError(f"unknown partition method {self.method!r}; expected one of {', '.join(METHODS)}")
        if self.students < 2:
            raise PartitionError(f"students must be >= 2, got {self.students}")
        if self.method == "resilient" and not 1 <= self.parts <= self.students // 2:
            raise PartitionError(f"resilient needs 1 <= M <= S/2 so every part has >= 2 students; "
                                 f"got M = {self.parts}, S = {self.students}")

    def part_count(self) -> int:
        return self.students if self.method == "nonn" else self.parts


@dataclass(frozen=True)
class PartitionResult:
    """What one method's run produced."""

    method: str
    bundle_dir: Path
    manifest: dict[str, Any]
    teacher_accuracy: float
    accuracy: float                       # unified model, all students present
    rows: tuple[ResilienceRow, ...]
    partition: dict[str, Any]
    timings: dict[str, float]
    model: PartitionedStudents | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class CompareResult:
    """Both methods on one teacher: ``results[method]``."""

    teacher_accuracy: float
    teacher: dict[str, Any]
    results: dict[str, PartitionResult]
    timings: dict[str, float]


@dataclass
class _TeacherView:
    """The teacher and what every method needs from it, computed once per process."""

    model: Teacher
    config: TeacherConfig
    record: dict[str, Any]
    logits: np.ndarray       # N_train x classes
    maps: np.ndarray         # N_train x F x h x w, float16
    seconds: dict[str, float]
    data: dict[str, Any]     # weightcache.data_identity of the dataset


def phase_progress(progress: Progress | None, name: str) -> Callable[[int, int, float], None] | None:
    if progress is None:
        return None
    return lambda step, total, loss: progress(name, step, total, loss)


def mark(progress: Progress | None, name: str, step: int, total: int = 1) -> None:
    """Tell ``progress`` that phase ``name`` (no loss) is at ``step`` of ``total``."""
    if progress is not None:
        progress(name, step, total, float("nan"))


def _load(cfg: PartitionConfig) -> Dataset:
    return load_dataset(cfg.dataset, path=Path(cfg.dataset_path) if cfg.dataset_path else None, seed=cfg.seed)


def teacher_config(cfg: PartitionConfig, data: Dataset) -> TeacherConfig:
    """The teacher ``cfg`` asks for on ``data`` (its cache key is shared by every method)."""
    t = cfg.teacher
    return TeacherConfig(dataset=data.name, input_shape=data.input_shape, num_classes=len(data.classes),
                         widths=t.widths, blocks=t.blocks, epochs=t.epochs, batch_size=t.batch_size, lr=t.lr,
                         subset=t.subset, seed=cfg.seed)


def _teacher_view(cfg: PartitionConfig, data: Dataset, *, cache_dir: Path, progress: Progress | None) -> _TeacherView:
    tcfg = teacher_config(cfg, data)
    ident = weightcache.data_identity(data)
    t0 = time.monotonic()
    model, record = load_or_train_teacher(tcfg, data, cache_dir=cache_dir, progress=phase_progress(progress, "teacher"),
                                          identity=ident)
    t1 = time.monotonic()
    n = cfg.student.subset or len(data.x_train)
    logits, maps = [], []
    batches = (n + 999) // 1000
    mark(progress, "teacher pass", 0, batches)
    with torch.no_grad():
        for b, i in enumerate(range(0, n, 1000), start=1):
            lg, mp = model.forward_all(torch.from_numpy(data.x_train[i:min(n, i + 1000)]))
            logits.append(lg.numpy())
            maps.append(mp.numpy().astype(np.float16))
            mark(progress, "teacher pass", b, batches)
    return _TeacherView(model=model, config=tcfg, record=record, logits=np.concatenate(logits),
                        maps=np.concatenate(maps), data=ident,
                        seconds={"teacher": round(t1 - t0, 2), "teacher_pass": round(time.monotonic() - t1, 2)})


def _graph_stats(w: np.ndarray) -> dict[str, int]:
    upper = np.triu(w, k=1)
    return {"edges": int(np.count_nonzero(upper)), "connected_filters": int(np.count_nonzero(w.sum(axis=1)))}


def _partition(cfg: PartitionConfig, view: _TeacherView) -> tuple[Partition, dict[str, Any]]:
    f = view.config.filters
    acts = view.maps[: cfg.graph.images].astype(np.float32).mean(axis=(2, 3))
    top_k = cfg.graph.top_k or max(2, f // 4)
    w = filter_graph(acts, top_k=top_k, keep_fraction=cfg.graph.keep_fraction)
    try:
        if cfg.method == "nonn":
            part = louvain_parts(w, parts=cfg.students, seed=cfg.seed)
        else:
            part = eigen_parts(w, parts=cfg.parts)
    except ValueError as exc:
        raise PartitionError(f"{cfg.method}: {exc}") from exc
    if any(len(p) == 0 for p in part.parts):
        raise PartitionError(f"{cfg.method}: a part got no filter ({part.sizes}); raise graph.keep_fraction or top_k")
    rand = [intra_share(w, random_parts(f, len(part.parts), seed=s)) for s in range(20)]
    nonn_1pct = _graph_stats(filter_graph(acts, top_k=top_k, keep_fraction=0.01))
    report = {
        **part.as_dict(), "filters": f, "top_k": top_k, "keep_fraction": cfg.graph.keep_fraction,
        "graph_images": len(acts), **_graph_stats(w),
        "intra_share": round(intra_share(w, part.parts), 4),
        "random_intra_share": {"mean": round(float(np.mean(rand)), 4), "std": round(float(np.std(rand)), 4),
                               "splits": len(rand), "what": "random balanced split into the same number of parts"},
        "at_1_percent": {**nonn_1pct, "keep_fraction": 0.01,
                         "what": "NoNN's own threshold on the same activations, for reference"},
    }
    return part, report


def _students_config(cfg: PartitionConfig, data: Dataset, student_part: list[int]) -> StudentsConfig:
    s = cfg.student
    return StudentsConfig(input_shape=data.input_shape, num_classes=len(data.classes),
                          student_part=tuple(student_part), merge_rule="concat" if cfg.method == "nonn" else "average",
                          width=s.width, part_dim=s.part_dim, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                          temperature=s.temperature, alpha=s.alpha, beta=s.beta, dropout=s.dropout, subset=s.subset,
                          seed=cfg.seed if s.seed is None else s.seed)


def _load_or_train_students(scfg: StudentsConfig, *, key: str, data: Dataset, view: _TeacherView,
                            parts: tuple[tuple[int, ...], ...], cache_dir: Path,
                            progress: Callable[[int, int, float], None] | None
                            ) -> tuple[PartitionedStudents, dict[str, Any]]:
    """The trained students and their record (cached flag, training seconds when trained)."""
    def train() -> tuple[PartitionedStudents, dict[str, Any]]:
        att = part_attention(view.maps, parts)
        model = train_students(scfg, x=data.x_train, y=data.y_train, teacher_logits=view.logits, teacher_att=att,
                               progress=progress)
        return model, {"key": key, "config": plain(asdict(scfg))}

    return weightcache.load_or_train(Path(cache_dir) / f"students-{key}",
                                     build=lambda: PartitionedStudents(scfg, mean=0.0, std=1.0), train=train,
                                     identity={"data": view.data})


# -- export ------------------------------------------------------------------------------------

@torch.no_grad()
def export_partitioned(model: PartitionedStudents, *, out_dir: Path, samples: np.ndarray,
                       tolerance: float = PARITY_TOLERANCE) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Trace one shard per student and the merge shard into ``out_dir``, reload them, and check
    them against the torch modules on ``samples`` (real images), all students present and with
    each single student missing. Returns the shard entries and the max errors; raises
    ExportParityError past ``tolerance``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    x = torch.from_numpy(np.ascontiguousarray(samples[:64], dtype=np.float32))
    shards, errors = [], {}
    traced_vecs = []
    for i, student in enumerate(model.students):
        name = f"student_{i}"
        traced, io = trace_shard(student, x[:1], out_dir / f"{name}.ts")
        got = traced(x).numpy()
        errors[name] = check_parity(name, got, student(x).numpy(), tolerance)
        traced_vecs.append(got)
        shards.append({"name": name, "role": "student", "index": i, "part": i,
                       "learns_part": int(model.student_part[i]), "runtime": "torch", "file": f"{name}.ts", **io})
    s = len(model.students)
    traced_merge, merge_io = trace_shard(model.merge, torch.zeros(1, model.merge.fc.in_features),
                                         out_dir / "merge.ts")
    v_traced = np.stack(traced_vecs, axis=1)
    present = np.vstack([np.ones((1, s), dtype=bool), ~np.eye(s, dtype=bool)])
    z = merge_batch(v_traced, present, rule=model.rule, student_part=model.student_part)
    for u, pres in enumerate(present):
        got = traced_merge(torch.from_numpy(z[u])).numpy()
        want = model(x, torch.from_numpy(pres)).numpy()
        errors[f"merge[{'all' if u == 0 else f'-{u - 1}'}]"] = check_parity("merge", got, want, tolerance)
    shards.append({"name": "merge", "role": "merge", "runtime": "torch", "file": "merge.ts", **merge_io})
    for shard in shards:
        shard["sha256"] = sha256_file(out_dir / shard["file"])
    return shards, errors


# -- runs --------------------------------------------------------------------------------------

def _run_method(cfg: PartitionConfig, data: Dataset, view: _TeacherView, *, cache_dir: Path, out_dir: Path,
                progress: Progress | None) -> PartitionResult:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    mark(progress, f"partition:{cfg.method}", 0)
    part, report = _partition(cfg, view)
    mark(progress, f"partition:{cfg.method}", 1)
    if cfg.method == "nonn":
        sp = list(range(cfg.students))
    else:
        sp = student_parts(students=cfg.students, parts=cfg.parts)
    timings["partition"] = round(time.monotonic() - t0, 2)
    scfg = _students_config(cfg, data, sp)
    key = scfg.key(extra={"teacher": view.config.key(), "parts": [list(p) for p in part.parts],
                          "method": cfg.method, "dataset": data.name})
    t0 = time.monotonic()
    model, srecord = _load_or_train_students(scfg, key=key, data=data, view=view, parts=part.parts,
                                             cache_dir=cache_dir, progress=phase_progress(progress, f"students:{cfg.method}"))
    cached = bool(srecord["cached"])
    timings["students"] = round(time.monotonic() - t0, 2)
    timings["students_train_seconds"] = srecord["train_seconds"]
    t0 = time.monotonic()
    mark(progress, f"evaluate:{cfg.method}", 0)
    n_test = cfg.test_subset or len(data.x_test)
    x_test, y_test = data.x_test[:n_test], data.y_test[:n_test]
    rows = tuple(resilience(model, x_test, y_test, max_subsets=cfg.max_subsets, seed=cfg.seed))
    accuracy = unified_accuracy(model, x_test, y_test)
    teacher_acc = float(view.record["test_accuracy"]) if n_test == len(data.x_test) else \
        teacher_accuracy(view.model, x_test, y_test)
    timings["evaluate"] = round(time.monotonic() - t0, 2)
    mark(progress, f"evaluate:{cfg.method}", 1)
    t0 = time.monotonic()
    mark(progress, f"export:{cfg.method}", 0)
    shards, errors = export_partitioned(model, out_dir=out_dir, samples=data.x_test)
    timings["export"] = round(time.monotonic() - t0, 2)
    mark(progress, f"export:{cfg.method}", 1)
    evaluation = {
        "test_accuracy": accuracy, "teacher_accuracy": teacher_acc, "test_samples": n_test,
        "resilience": [r.as_dict() for r in rows],
        "how": "k failed students: mean/worst accuracy over all C(S,k) subsets (or a seeded sample of "
               f"{cfg.max_subsets} when more), the bundle's merge rule applied to each student's vectors",
        "parity_max_abs_error": max(errors.values()), "parity_tolerance": PARITY_TOLERANCE,
        "numerics": numerics(),
    }
    manifest = {
        "format": FORMAT, "method": cfg.method, "students": cfg.students, "parts": scfg.slots,
        "S": cfg.students, "M": scfg.slots, "part_dim": scfg.part_dim, "merge_rule": scfg.merge_rule,
        "student_part": sp, "part_filters": {str(j): list(p) for j, p in enumerate(part.parts)},
        "partition": report, "dataset": data.name, "classes": list(data.classes),
        "config": plain(asdict(cfg)), "config_key": key, "teacher": {
            "key": view.config.key(), "config": plain(asdict(view.config)),
            "test_accuracy": view.record["test_accuracy"], "train_seconds": view.record.get("train_seconds")},
        "students_cached": cached, "shards": shards, "evaluation": evaluation,
        "numerics": numerics_record(), "data": view.data,
        "weights": {"teacher": view.record.get("entry"), "students": srecord.get("entry"),
                    "what": "the model cache's folders these weights are in"},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return PartitionResult(method=cfg.method, bundle_dir=out_dir, manifest=manifest, teacher_accuracy=teacher_acc,
                           accuracy=accuracy, rows=rows, partition=report, timings=timings, model=model)


def run_partition(cfg: PartitionConfig, *, cache_dir: Path, out_dir: Path,
                  progress: Progress | None = None, data: Dataset | None = None) -> PartitionResult:
    """Partition with ``cfg.method`` and write the bundle into ``out_dir`` (``data``: the
    dataset when the caller has it loaded already)."""
    data = data or _load(cfg)
    view = _teacher_view(cfg, data, cache_dir=Path(cache_dir), progress=progress)
    result = _run_method(cfg, data, view, cache_dir=Path(cache_dir), out_dir=Path(out_dir), progress=progress)
    return PartitionResult(**{**result.__dict__, "timings": {**view.seconds, **result.timings}})


def run_compare(cfg: PartitionConfig, *, cache_dir: Path, out_dir: Path, progress: Progress | None = None,
                methods: tuple[str, ...] = METHODS) -> CompareResult:
    """Every method in ``methods`` on the same teacher, seed and teacher pass; bundles go to
    ``out_dir/<method>``. ``cfg.method`` is ignored."""
    t0 = time.monotonic()
    data = _load(cfg)
    view = _teacher_view(cfg, data, cache_dir=Path(cache_dir), progress=progress)
    results = {}
    for method in methods:
        mcfg = PartitionConfig(**{**cfg.__dict__, "method": method})
        results[method] = _run_method(mcfg, data, view, cache_dir=Path(cache_dir), out_dir=Path(out_dir) / method,
                                      progress=progress)
    teacher_acc = next(iter(results.values())).teacher_accuracy
    return CompareResult(teacher_accuracy=teacher_acc, teacher=view.record, results=results,
                         timings={**view.seconds, "total": round(time.monotonic() - t0, 2)})
