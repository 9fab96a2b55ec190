"""From an experiment's ``partition:`` section to a verified bundle directory.

Holds ``partition_config`` (the section, the dataset and the seed -> pipeline.PartitionConfig),
``bundle_inputs`` / ``bundle_key`` (everything that determines the bundle, and its hash),
``build_bundle`` (run the method into a directory: NoNN or resilient through
testbed.partition.pipeline, the layer split through testbed.partition.layersplit; then the LiteRT
shards the section asks for, each checked against torch and, for int8, with its accuracy
measured), ``cached_bundle`` (the one way to get an experiment's bundle: a folder ``testbed
partition`` wrote, when its key is this experiment's; else the cache's
``partition-<key>/bundle`` when it verifies; else built there), ``write_bundle`` (``testbed
partition``: the cached bundle written into an output folder) and ``compare`` (NoNN and
resilient on one teacher: both bundles and the comparison files in one folder).

One cache and one key: ``testbed partition`` and ``testbed run`` (and ``deploy``) both come
through ``cached_bundle``, so a run of an experiment that was partitioned deploys the very same
shards (the layer split's cut included, which rests on timings measured when it was built),
never a second build. The key holds the partition section, dataset and seed, the inventory's
link and board kinds for the layer split, the process's numerics (testbed.training: torch
version and threads) and the data's sha256; a folder built with another key is not used, and
``cached_bundle`` says so in one line of ``Built.notes`` naming what differs.

Third-party output: a build in the cache runs inside ``third_party_output``, so what litert-torch,
ai-edge-litert, TensorFlow's and absl's C++ logging, torch's and torchao's log handlers write
to fd 1 and 2 goes to ``partition-<key>/build.log`` (``testbed partition`` copies it into the
output folder; ``testbed run`` into the run's testbed.log), not to the terminal.

Signing (``--sign``): ``write_bundle`` and ``compare`` sign the bundles they write into the
user's folder (``manifest.sig``, testbed.signing), inside the same folder write; the manifest
records the experiment copy's sha256 so the signature covers it. The cache's bundle is never
signed, and a signature changes no key: a signed ``bundles/<name>`` is still this experiment's.

Every output folder is written by testbed.outdir's rule: created fresh, or our earlier output
replaced with ``force`` (never a file we did not write), built in a temporary folder beside it
and moved in only when complete and verified. It never deletes anything itself, never sets
torch's thread count (the entry point does) and never downloads anything.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed import weightcache
from testbed.bundle import EXPERIMENT_COPY, MANIFEST, BundleError, load_manifest, shard_for
from testbed.config import Experiment, Inventory, PartitionSpec
from testbed.data import Dataset, load_dataset
from testbed.errors import ConfigError, TestbedError
from testbed.hashing import sha256_file
from testbed.outdir import MARKER, output_dir
from testbed.partition.evaluate import merge_batch
from testbed.partition.pipeline import (GraphSpec, PartitionConfig, Progress, StudentSpec,
                                        TeacherSpec, mark, run_compare, run_partition)
from testbed.signing import SIGNATURE, LabKey, sign_bundle
from testbed.training import numerics

PARITY_SAMPLES = 64
LITERT_EVAL_IMAGES = 2000
BUILD_LOG = "build.log"   # third-party output of a build: beside the cache's bundle, and in an output folder


@dataclass(frozen=True)
class Built:
    """A bundle ready to deploy, and what building it reported."""

    bundle_dir: Path
    manifest: dict[str, Any]
    dataset: Dataset
    cached: bool
    seconds: float
    notes: tuple[str, ...] = ()     # which bundle was used and why; what writing the folder kept or replaced
    build_log: Path | None = None   # third-party output of the build, when it was built now


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


def default_out_dir(exp: Experiment, *, compare: bool = False) -> Path:
    """Where ``testbed partition`` writes ``exp``'s bundle unless told (``--out``), relative to the
    working directory: ``bundles/<name>``; with ``--compare`` ``bundles/<name>-compare``, so single
    runs and comparisons never share a folder (testbed.outdir refuses what is not ours)."""
    return Path("bundles") / (f"{exp.name}-compare" if compare else exp.name)


def _data(exp: Experiment) -> Dataset:
    return load_dataset(exp.dataset.name, path=exp.dataset.path, seed=exp.seed)


def bundle_inputs(exp: Experiment, *, inventory: Inventory | None = None,
                  data: Dataset | None = None) -> dict[str, Any]:
    """Everything that determines the bundle of ``exp``'s partition section, JSON-able: the
    pipeline's config, method, runtimes and quantisation, the layer split's link and boards, this
    process's numerics and the data's identity (``data``: the dataset when loaded already)."""
    spec = exp.partition
    if spec is None:
        raise TestbedError(f"{exp.path}: no partition section; expected one for a partition bundle")
    blob: dict[str, Any] = {"config": asdict(_config(exp)), "method": spec.method,
                            "runtimes": list(spec.runtimes), "quantize": spec.quantize, "v": 2,
                            "numerics": numerics(), "data": weightcache.data_identity(data or _data(exp))}
    if spec.method == "layer":
        blob["layer"] = _layer_inputs(exp, inventory)
    return json.loads(json.dumps(blob, sort_keys=True, default=str))


def _hash(inputs: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bundle_key(exp: Experiment, *, inventory: Inventory | None = None, data: Dataset | None = None) -> str:
    """A hash of ``bundle_inputs``: the one key of ``exp``'s bundle, in the cache and in the
    manifest of every folder ``testbed partition`` writes."""
    return _hash(bundle_inputs(exp, inventory=inventory, data=data))


def differences(old: Any, new: Any, *, limit: int = 3) -> str:
    """What differs between two ``bundle_inputs``, as ``key: old -> new`` (dotted keys, at most
    ``limit`` of them, then how many more)."""
    found: list[str] = []

    def walk(a: Any, b: Any, at: str) -> None:
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, "(none)"), b.get(k, "(none)"), f"{at}.{k}" if at else str(k))
        elif a != b:
            found.append(f"{at}: {_short(a)} -> {_short(b)}")

    walk(old, new, "")
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return "; ".join(found[:limit]) + more


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:12] + "…"


def build_bundle(exp: Experiment, *, out_dir: Path, cache_dir: Path, inventory: Inventory | None = None,
                 progress: Progress | None = None, force: bool = False, _adopt: bool = False,
                 data: Dataset | None = None, sign: LabKey | None = None) -> Built:
    """Run ``exp``'s partition section into ``out_dir`` and return the verified bundle (its
    manifest carries ``bundle_key`` and ``bundle_inputs``), signed by ``sign`` when given
    (``manifest.sig``, written in the staging folder so the output marker lists it).

    ``out_dir`` must be new or empty, or (with ``force``) hold only an earlier output of ours plus
    files we keep; else ConfigError before any work (testbed.outdir). An exception while building
    leaves ``out_dir`` as it was."""
    spec = exp.partition
    if spec is None:
        raise TestbedError(f"{exp.path}: no partition section; expected one for `testbed partition`")
    _key_outside(sign, Path(out_dir))
    t0 = time.monotonic()
    with output_dir(Path(out_dir), force=force, writer="testbed partition", adopt=_adopt) as out:
        stage = out.staging
        data = data or _data(exp)
        inputs = bundle_inputs(exp, inventory=inventory, data=data)
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
        manifest["bundle_key"] = _hash(inputs)
        manifest["bundle_inputs"] = inputs
        _set_experiment(manifest, exp, stage)
        if "tflite" in spec.runtimes:
            _add_litert(manifest, modules, out_dir=stage, data=data, quantize=spec.quantize, progress=progress)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
        verified = load_manifest(stage)      # before it replaces anything
        if sign is not None:
            sign_bundle(stage, sign)
    return Built(bundle_dir=out.dest, manifest=verified, dataset=data, cached=cached,
                 seconds=round(time.monotonic() - t0, 2), notes=tuple(out.notes()))


def _set_experiment(manifest: dict[str, Any], exp: Experiment, folder: Path) -> None:
    """The bundle carries the experiment file it was asked for: a copy in ``folder``, its name
    and its sha256 (so a signature over the manifest covers the copy too, testbed.signing)."""
    shutil.copyfile(exp.path, folder / EXPERIMENT_COPY)
    manifest["experiment"] = {"name": exp.name, "file": str(exp.path), "copy": EXPERIMENT_COPY,
                              "sha256": sha256_file(folder / EXPERIMENT_COPY)}


def _key_outside(sign: LabKey | None, out_dir: Path) -> None:
    """Refuse, before any work, a signing key inside the folder the bundle is written to (with
    ``--force`` a file there is kept, and would travel with the bundle)."""
    if sign is None:
        return
    try:
        Path(sign.path).resolve().relative_to(Path(out_dir).resolve())
    except ValueError:
        return
    raise ConfigError(f"is inside the output folder {out_dir}; expected a private key kept outside every folder "
                      f"that is passed on", file=str(sign.path))


def cached_bundle(exp: Experiment, *, cache_dir: Path, inventory: Inventory | None = None,
                  progress: Progress | None = None, written: Path | None = None,
                  say: Callable[[str], None] | None = None) -> Built:
    """``exp``'s bundle, found by its one key (``bundle_key``):

    1. ``written`` (a folder ``testbed partition`` wrote, e.g. ``default_out_dir(exp)``) when it
       holds a verified bundle of this key;
    2. else ``cache_dir/partition-<key>/bundle`` when it verifies;
    3. else built there (the cache's own folder: what is in it counts as ours, marker or not, and
       is replaced), inside ``third_party_output`` into ``partition-<key>/build.log``.

    A ``written`` folder that holds another bundle (another configuration, or files changed since)
    is not used: ``notes`` says so in one line, naming what differs, and ``say`` hears that line
    as soon as it is known (before a build that may take minutes)."""
    data = _data(exp)
    inputs = bundle_inputs(exp, inventory=inventory, data=data)
    key = _hash(inputs)
    folder = Path(cache_dir) / f"partition-{key}"
    bundle_dir = folder / "bundle"
    note = None
    if written is not None:
        found = _written_bundle(Path(written), key=key, inputs=inputs)
        if isinstance(found, dict):
            line = f"bundle: {written}, as testbed partition wrote it (key {key})"
            if say:
                say(line)
            return Built(bundle_dir=Path(written), manifest=found, dataset=data, cached=True, seconds=0.0,
                         notes=(line,))
        note = found
    try:
        manifest = load_manifest(bundle_dir)
        if manifest.get("bundle_key") != key:
            raise BundleError("stale")
    except BundleError:
        notes = (f"{note}; building this configuration's bundle in the cache ({bundle_dir})",) if note else ()
        if say and notes:
            say(notes[0])
        log = folder / BUILD_LOG
        folder.mkdir(parents=True, exist_ok=True)
        log.write_text(f"# third-party output while building {bundle_dir} (key {key}), "
                       f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        with third_party_output(log):
            built = build_bundle(exp, out_dir=bundle_dir, cache_dir=cache_dir, inventory=inventory,
                                 progress=progress, force=True, _adopt=True, data=data)
        return Built(bundle_dir=built.bundle_dir, manifest=built.manifest, dataset=data, cached=built.cached,
                     seconds=built.seconds, notes=notes + built.notes, build_log=log)
    notes = (f"{note}; using the cache's bundle of this configuration ({bundle_dir})",) if note else ()
    if say and notes:
        say(notes[0])
    return Built(bundle_dir=bundle_dir, manifest=manifest, dataset=data, cached=True, seconds=0.0, notes=notes)


def _written_bundle(folder: Path, *, key: str, inputs: Mapping[str, Any]) -> dict[str, Any] | str | None:
    """The manifest of ``folder`` when it holds a verified bundle of ``key``; else the one line
    why it is not used; None when there is no bundle there."""
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = load_manifest(folder)
    except BundleError as exc:
        return f"{folder}: not used ({exc})"
    if manifest.get("bundle_key") == key:
        return manifest
    old = manifest.get("bundle_inputs")
    why = differences(old, inputs) if isinstance(old, Mapping) else \
        f"its bundle key {manifest.get('bundle_key')}, this experiment's {key}"
    return f"{folder}: built from another configuration ({why}), not used"


def write_bundle(exp: Experiment, *, out_dir: Path, cache_dir: Path, inventory: Inventory | None = None,
                 progress: Progress | None = None, force: bool = False, sign: LabKey | None = None) -> Built:
    """``testbed partition``: ``exp``'s bundle (``cached_bundle``: the cache's, or built there)
    written into ``out_dir`` by testbed.outdir's rule (refused before any work, as for
    ``build_bundle``), with the experiment file it was asked for (its copy, its name and sha256
    in ``manifest.experiment``) and the build's ``build.log``. The shards are the cache's, byte
    for byte, so ``testbed run`` finds the same bundle either way. With ``sign`` (``--sign``)
    this copy is signed (``manifest.sig``, in the same folder write, so the marker lists it and
    ``--force`` replaces it); the cache's bundle never is, and a signature does not change the
    bundle's key, so ``testbed run`` still uses a signed ``out_dir``."""
    _key_outside(sign, Path(out_dir))
    t0 = time.monotonic()
    with output_dir(Path(out_dir), force=force, writer="testbed partition") as out:
        built = cached_bundle(exp, cache_dir=Path(cache_dir), inventory=inventory, progress=progress)
        stage = out.staging
        for f in sorted(built.bundle_dir.iterdir()):
            if f.is_file() and not f.is_symlink() and f.name not in (MARKER, MANIFEST, EXPERIMENT_COPY, SIGNATURE):
                shutil.copyfile(f, stage / f.name)
        log = built.bundle_dir.parent / BUILD_LOG
        if log.is_file():
            shutil.copyfile(log, stage / BUILD_LOG)
        manifest = dict(built.manifest)
        _set_experiment(manifest, exp, stage)
        (stage / MANIFEST).write_text(json.dumps(manifest, indent=2))
        verified = load_manifest(stage)
        if sign is not None:
            sign_bundle(stage, sign)
    how = (f"built in {built.seconds:.0f} s into the cache ({built.bundle_dir})" if built.build_log is not None else
           f"the cache's bundle of this configuration ({built.bundle_dir}), built earlier with the same key")
    return Built(bundle_dir=out.dest, manifest=verified, dataset=built.dataset, cached=built.cached,
                 seconds=round(time.monotonic() - t0, 2), notes=(f"bundle: {how}", *built.notes, *out.notes()),
                 build_log=built.build_log)


@contextmanager
def third_party_output(log: Path) -> Iterator[None]:
    """While the block runs, everything written to file descriptors 1 and 2 is appended to
    ``log`` instead: absl's and TensorFlow's C++ logging, litert-torch's and the quantizer's
    prints, torch's and torchao's log handlers, Python warnings. Whoever must still reach the
    terminal meanwhile writes to a duplicate of its descriptor taken before (the CLI's progress
    does). Both descriptors are restored however the block ends."""
    log.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        _flush(stream)
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = [os.dup(1), os.dup(2)]
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            _flush(stream)
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, target):
            os.close(fd)


def _flush(stream: Any) -> None:
    try:
        stream.flush()
    except (OSError, ValueError, AttributeError):
        pass


# -- LiteRT shards -----------------------------------------------------------------------------

def _add_litert(manifest: dict[str, Any], modules: dict[str, torch.nn.Module], *, out_dir: Path, data: Dataset,
                quantize: str, progress: Progress | None = None) -> None:
    """Export every shard as .tflite (and int8 when asked), parity-checked on real test images;
    record each file as an alternate of its shard and the int8 accuracy in the evaluation."""
    from testbed.litert import export_tflite, litert_versions

    samples = np.ascontiguousarray(data.x_test[:PARITY_SAMPLES], dtype=np.float32)
    inputs = _shard_inputs(manifest, modules, samples)
    variants = ["none"] + ([quantize] if quantize != "none" else [])
    total = len(manifest["shards"])
    mark(progress, "litert export", 0, total)
    for done, shard in enumerate(manifest["shards"], start=1):
        module, x = modules[shard["name"]], inputs[shard["name"]]
        example = torch.from_numpy(x[:1])
        shard["alternates"] = []
        for q in variants:
            suffix = "" if q == "none" else f".{q}"
            entry = export_tflite(module, example, out_dir / f"{shard['name']}{suffix}.tflite", samples=x,
                                  quantize=q)
            entry["file"] = Path(entry["file"]).name
            shard["alternates"].append(entry)
        mark(progress, "litert export", done, total)
    manifest.setdefault("versions", {}).update({k: v for k, v in litert_versions().items() if v})
    x = np.ascontiguousarray(data.x_test[:LITERT_EVAL_IMAGES], dtype=np.float32)
    y = data.y_test[:LITERT_EVAL_IMAGES]
    mark(progress, "litert accuracy", 0, len(variants) + 1)
    ref = _bundle_accuracy(manifest, out_dir=out_dir, x=x, y=y, runtime="torch")
    mark(progress, "litert accuracy", 1, len(variants) + 1)
    ev = manifest.setdefault("evaluation", {})
    ev["litert"] = {}
    for i, v in enumerate(variants, start=2):
        acc = _bundle_accuracy(manifest, out_dir=out_dir, x=x, y=y, runtime="tflite", quantize=v)
        mark(progress, "litert accuracy", i, len(variants) + 1)
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
            force: bool = False, sign: LabKey | None = None) -> dict[str, Any]:
    """NoNN and the resilient method on ``exp``'s teacher and seed: bundles in ``out_dir/<method>``
    and ``comparison.{json,md,png}`` (report.write_compare), all in one output folder by
    testbed.outdir's rule (``force`` as for ``build_bundle``); with ``sign`` each method's bundle
    is signed in the same write. Returns write_compare's summary with ``notes`` (lines on what
    the folder write kept or replaced).
    ``partition.method`` is ignored (a ``layer`` section compares with its students/parts)."""
    spec = exp.partition
    if spec is None:
        raise TestbedError(f"{exp.path}: no partition section; expected one for `testbed partition --compare`")
    _key_outside(sign, Path(out_dir))
    cfg = _config(exp)
    if cfg.parts > cfg.students // 2:
        raise TestbedError(f"{exp.path}: --compare needs the resilient method's M <= S/2; got S = {cfg.students}, "
                           f"M = {cfg.parts}")
    from testbed.partition.report import write_compare
    with output_dir(Path(out_dir), force=force, writer="testbed partition --compare") as out:
        result = run_compare(cfg, cache_dir=Path(cache_dir), out_dir=out.staging, progress=progress)
        for method in result.results:
            load_manifest(out.staging / method)      # both bundles verify before anything is replaced
            if sign is not None:
                sign_bundle(out.staging / method, sign)
        doc = write_compare((result, cfg), out_dir=out.staging, final_dir=out.dest)
    return {**doc, "notes": out.notes()}
