"""From an experiment's ``partition:`` section to a verified bundle directory.

Holds ``partition_config`` (the section, the dataset and the seed -> pipeline.PartitionConfig),
``bundle_key`` (a hash of everything that determines the bundle), ``build_bundle`` (run the
method into a directory: NoNN or resilient through testbed.partition.pipeline, the layer split
through testbed.partition.layersplit; then the LiteRT shards the section asks for, each checked
against torch and, for int8, with its accuracy measured) and ``cached_bundle`` (the same, reused
from the cache when a bundle with the same key verifies) and ``compare`` (NoNN and resilient on
one teacher: both bundles and the comparison files in one folder). ``testbed partition`` and
``testbed run`` for experiments with a partition section both come through here.

Every output folder is written by testbed.outdir's rule: created fresh, or our earlier output
replaced with ``force`` (never a file we did not write), built in a temporary folder beside it
and moved in only when complete and verified. It never deletes anything itself, never sets
torch's thread count (the CLI does) and never downloads anything.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed.bundle import EXPERIMENT_COPY, MANIFEST, BundleError, load_manifest, shard_for
from testbed.config import Experiment, Inventory, PartitionSpec
from testbed.data import Dataset, load_dataset
from testbed.errors import TestbedError
from testbed.outdir import output_dir
from testbed.partition.evaluate import merge_batch
from testbed.partition.pipeline import (CompareResult, GraphSpec, PartitionConfig, Progress, StudentSpec,
                                        TeacherSpec, run_compare, run_partition)

PARITY_SAMPLES = 64
LITERT_EVAL_IMAGES = 2000


@dataclass(frozen=True)
class Built:
    """A bundle ready to deploy, and what building it reported."""

    bundle_dir: Path
    manifest: dict[str, Any]
    dataset: Dataset
    cached: bool
    seconds: float
    notes: tuple[str, ...] = ()     # what writing the folder kept or replaced (testbed.outdir)


def partition_config(spec: PartitionSpec, *, dataset: str, dataset_path: Path | None, seed: int) -> PartitionConfig:
    """The pipeline's config for ``spec`` (keys the file left out take the pipeline's defaults)."""
    method = spec.method if spec.method != "layer" else "resilient"   # layer: only the teacher is used
    return PartitionConfig(dataset=dataset, dataset_path=str(dataset_path) if dataset_path else None,
                           method=method, students=max(spec.students, 2), parts=max(1, spec.parts),
                           teacher=TeacherSpec(**spec.teacher), graph=GraphSpec(**spec.graph),
                           student=StudentSpec(**spec.student), seed=seed, max_subsets=spec.max_subsets,
                           test_subset=spec.test_subset)


def _config(exp: Experiment) -> PartitionConfig:
    assert exp.partition is not None
    return partition_config(exp.partition, dataset=exp.dataset.name, dataset_path=exp.dataset.path, seed=exp.seed)


def _layer_inputs(exp: Experiment, inventory: Inventory | None) -> dict[str, Any]:
    """What the layer split's choice depends on besides the teacher: the link and the board kinds."""
    from testbed.partition.layersplit import resolve_layer_inputs
    return resolve_layer_inputs(exp, inventory)


def bundle_key(exp: Experiment, *, inventory: Inventory | None = None) -> str:
    """A hash of everything that determines the bundle of ``exp``'s partition section."""
    spec = exp.partition
    if spec is None:
        raise TestbedError(f"{exp.path}: no partition section; expected one for a partition bundle")
    blob: dict[str, Any] = {"config": asdict(_config(exp)), "method": spec.method,
                            "runtimes": list(spec.runtimes), "quantize": spec.quantize, "v": 1,
                            "torch": torch.__version__.split("+")[0]}
    if spec.method == "layer":
        blob["layer"] = _layer_inputs(exp, inventory)
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def build_bundle(exp: Experiment, *, out_dir: Path, cache_dir: Path, inventory: Inventory | None = None,
                 progress: Progress | None = None, force: bool = False, _adopt: bool = False) -> Built:
    """Run ``exp``'s partition section into ``out_dir`` and return the verified bundle.

    ``out_dir`` must be new or empty, or (with ``force``) hold only an earlier output of ours plus
    files we keep; else ConfigError before any work (testbed.outdir). An exception while building
    leaves ``out_dir`` as it was."""
    spec = exp.partition
    if spec is None:
        raise TestbedError(f"{exp.path}: no partition section; expected one for `testbed partition`")
    t0 = time.monotonic()
    with output_dir(Path(out_dir), force=force, writer="testbed partition", adopt=_adopt) as out:
        stage = out.staging
        data = load_dataset(exp.dataset.name, path=exp.dataset.path, seed=exp.seed)
        if spec.method == "layer":
            from testbed.partition.layersplit import build_layer_bundle
            manifest, modules = build_layer_bundle(exp, _config(exp), data, inventory=inventory, out_dir=stage,
                                                   cache_dir=Path(cache_dir), progress=progress)
            cached = False
        else:
            result = run_partition(_config(exp), cache_dir=Path(cache_dir), out_dir=stage, progress=progress,
                                   data=data)
            manifest = result.manifest
            assert result.model is not None
            modules = {f"student_{i}": s for i, s in enumerate(result.model.students)}
            modules["merge"] = result.model.merge
            cached = bool(manifest.get("students_cached"))
        manifest["bundle_key"] = bundle_key(exp, inventory=inventory)
        manifest["experiment"] = {"name": exp.name, "file": str(exp.path), "copy": EXPERIMENT_COPY}
        shutil.copyfile(exp.path, stage / EXPERIMENT_COPY)  # the bundle carries what it was built from
        if "tflite" in spec.runtimes:
            _add_litert(manifest, modules, out_dir=stage, data=data, quantize=spec.quantize)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
        verified = load_manifest(stage)      # before it replaces anything
    return Built(bundle_dir=out.dest, manifest=verified, dataset=data, cached=cached,
                 seconds=round(time.monotonic() - t0, 2), notes=tuple(out.notes()))


def cached_bundle(exp: Experiment, *, cache_dir: Path, inventory: Inventory | None = None,
                  progress: Progress | None = None) -> Built:
    """``exp``'s bundle from ``cache_dir/partition-<key>/bundle`` when it verifies, else built there
    (the cache's own folder: what is in it counts as ours, marker or not, and is replaced)."""
    key = bundle_key(exp, inventory=inventory)
    bundle_dir = Path(cache_dir) / f"partition-{key}" / "bundle"
    try:
        manifest = load_manifest(bundle_dir)
        if manifest.get("bundle_key") != key:
            raise BundleError("stale")
    except BundleError:
        return build_bundle(exp, out_dir=bundle_dir, cache_dir=cache_dir, inventory=inventory, progress=progress,
                            force=True, _adopt=True)
    data = load_dataset(exp.dataset.name, path=exp.dataset.path, seed=exp.seed)
    return Built(bundle_dir=bundle_dir, manifest=manifest, dataset=data, cached=True, seconds=0.0)


# -- LiteRT shards -----------------------------------------------------------------------------

def _add_litert(manifest: dict[str, Any], modules: dict[str, torch.nn.Module], *, out_dir: Path, data: Dataset,
                quantize: str) -> None:
    """Export every shard as .tflite (and int8 when asked), parity-checked on real test images;
    record each file as an alternate of its shard and the int8 accuracy in the evaluation."""
    from testbed.litert import export_tflite, litert_versions

    samples = np.ascontiguousarray(data.x_test[:PARITY_SAMPLES], dtype=np.float32)
    inputs = _shard_inputs(manifest, modules, samples)
    variants = ["none"] + ([quantize] if quantize != "none" else [])
    for shard in manifest["shards"]:
        module, x = modules[shard["name"]], inputs[shard["name"]]
        example = torch.from_numpy(x[:1])
        shard["alternates"] = []
        for q in variants:
            suffix = "" if q == "none" else f".{q}"
            entry = export_tflite(module, example, out_dir / f"{shard['name']}{suffix}.tflite", samples=x,
                                  quantize=q)
            entry["file"] = Path(entry["file"]).name
            shard["alternates"].append(entry)
    manifest.setdefault("versions", {}).update({k: v for k, v in litert_versions().items() if v})
    x = np.ascontiguousarray(data.x_test[:LITERT_EVAL_IMAGES], dtype=np.float32)
    y = data.y_test[:LITERT_EVAL_IMAGES]
    ref = _bundle_accuracy(manifest, out_dir=out_dir, x=x, y=y, runtime="torch")
    ev = manifest.setdefault("evaluation", {})
    ev["litert"] = {}
    for v in variants:
        acc = _bundle_accuracy(manifest, out_dir=out_dir, x=x, y=y, runtime="tflite", quantize=v)
        ev["litert"][v] = {"accuracy": round(acc, 4), "torch_accuracy": round(ref, 4),
                           "delta_pt": round(100 * (acc - ref), 2), "images": int(len(x)),
                           "how": "LiteRT shards end to end, all students present"}


def _shard_inputs(manifest: dict[str, Any], modules: dict[str, torch.nn.Module],
                  samples: np.ndarray) -> dict[str, np.ndarray]:
    """Real inputs for every shard: images for students, their merged vectors for the merge."""
    out: dict[str, np.ndarray] = {}
    vecs = []
    with torch.no_grad():
        for shard in manifest["shards"]:
            if shard["role"] == "student":
                out[shard["name"]] = samples
                vecs.append(modules[shard["name"]](torch.from_numpy(samples)).reshape(len(samples), -1).numpy())
    v = np.stack(vecs, axis=1)
    present = np.ones((1, v.shape[1]), dtype=bool)
    out["merge"] = np.ascontiguousarray(
        merge_batch(v, present, rule=manifest["merge_rule"], student_part=manifest["student_part"])[0],
        dtype=np.float32)
    return out


def _bundle_accuracy(manifest: dict[str, Any], *, out_dir: Path, x: np.ndarray, y: np.ndarray, runtime: str,
                     quantize: str = "none") -> float:
    """Top-1 accuracy of the bundle's shards in ``runtime`` (the files a board with that runtime
    gets, via ``shard_for``), every student present, merged by the bundle's rule."""
    from nodes.runtime import open_runtime

    def run(shard: dict[str, Any], inputs: np.ndarray) -> np.ndarray:
        with open_runtime(runtime, out_dir / shard["file"]) as rt:
            return rt.run(inputs).reshape(len(inputs), -1)

    s = int(manifest["students"])
    v = np.stack([run(shard_for(manifest, role="student", index=i, runtime=runtime, quantize=quantize), x)
                  for i in range(s)], axis=1)
    z = merge_batch(v, np.ones((1, s), dtype=bool), rule=manifest["merge_rule"],
                    student_part=manifest["student_part"])[0]
    logits = run(shard_for(manifest, role="merge", runtime=runtime, quantize=quantize),
                 np.ascontiguousarray(z, dtype=np.float32))
    return float(np.mean(np.argmax(logits, axis=1) == y))


def compare(exp: Experiment, *, out_dir: Path, cache_dir: Path, progress: Progress | None = None,
            force: bool = False) -> dict[str, Any]:
    """NoNN and the resilient method on ``exp``'s teacher and seed: bundles in ``out_dir/<method>``
    and ``comparison.{json,md,png}`` (report.write_compare), all in one output folder by
    testbed.outdir's rule (``force`` as for ``build_bundle``). Returns write_compare's summary
    with ``notes`` (lines on what the folder write kept or replaced).
    ``partition.method`` is ignored (a ``layer`` section compares with its students/parts)."""
    spec = exp.partition
    if spec is None:
        raise TestbedError(f"{exp.path}: no partition section; expected one for `testbed partition --compare`")
    cfg = _config(exp)
    if cfg.parts > cfg.students // 2:
        raise TestbedError(f"{exp.path}: --compare needs the resilient method's M <= S/2; got S = {cfg.students}, "
                           f"M = {cfg.parts}")
    from testbed.partition.report import write_compare
    with output_dir(Path(out_dir), force=force, writer="testbed partition --compare") as out:
        result = run_compare(cfg, cache_dir=Path(cache_dir), out_dir=out.staging, progress=progress)
        for method in result.results:
            load_manifest(out.staging / method)      # both bundles verify before anything is replaced
        doc = write_compare((result, cfg), out_dir=out.staging, final_dir=out.dest)
    return {**doc, "notes": out.notes()}
