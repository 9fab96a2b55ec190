"""Bundles: the directory a partitioned model travels in, from laptop to boards.

Holds the one way a shard becomes a TorchScript file (``trace_shard``: trace, save, reload;
``check_parity``: the reloaded shard against the torch module, else ``ExportParityError``),
used here and by the partition and layer-split exports; export of the spine's model (one
TorchScript shard per student, one for the merge); and ``manifest.json``: shards with roles,
input/output shapes and dtypes, merge rule, sha256 of every file, versions, the numerics the
weights were trained with (testbed.training: torch threads), offline evaluation. A shard entry
names its TorchScript file; the same shard in other formats (LiteRT ``.tflite``, f32 or int8)
are its ``alternates``, each with its own file and sha256. ``load_manifest`` verifies every
hash and refuses a tampered or missing file; ``shard_for`` picks the entry a board's runtime
loads.
"""
from __future__ import annotations

import json
import platform
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from testbed.errors import TestbedError
from testbed.hashing import sha256_file
from testbed.manifest import BundleError, bundle_file, check_manifest
from testbed.model import StudentsConfig, UnifiedStudents
from testbed.training import numerics, numerics_record

MANIFEST = "manifest.json"
EXPERIMENT_COPY = "experiment.yaml"   # the experiment a partition bundle was built from, copied into it
FORMAT = 1
PARITY_TOLERANCE = 1e-4   # max |traced shard - torch module| on real inputs


class ExportParityError(TestbedError):
    """A traced shard does not reproduce the torch module within the tolerance."""


def bundle_experiment(bundle_dir: Path) -> Path:
    """The experiment file ``bundle_dir`` carries (``testbed partition`` copies it in), so a bundle
    passed between people deploys without the file it was built from; a plain file inside the
    bundle, else ``BundleError`` in one line."""
    if not (Path(bundle_dir) / MANIFEST).is_file():
        raise BundleError(f"{bundle_dir}: not a bundle (no {MANIFEST})")
    path = bundle_file(Path(bundle_dir), EXPERIMENT_COPY)
    if not path.is_file():
        raise BundleError(f"{bundle_dir}: the bundle carries no {EXPERIMENT_COPY} (bundles from before it did); "
                          f"give the experiment file: testbed deploy EXPERIMENT.yaml --bundle {bundle_dir}")
    return path


def trace_shard(module: torch.nn.Module, example: torch.Tensor,
                path: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """Trace ``module`` (in eval mode) on ``example``, save it to ``path`` and load it back.

    Returns the reloaded shard (what a torch board will run) and its ``input``/``output``
    manifest entries: the shapes and dtypes of ``example`` and of the shard's output on it.
    """
    # TorchScript is deprecated upstream but is what JetPack's torch builds load reliably; the
    # deprecation warning is expected here, not news to the user.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(module.eval(), example).save(str(path))
        loaded = torch.jit.load(str(path))
        out = loaded(example)
    return loaded, {"input": {"shape": list(example.shape), "dtype": _dtype(example)},
                    "output": {"shape": list(out.shape), "dtype": _dtype(out)}}


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def check_parity(name: str, got: np.ndarray, want: np.ndarray, tolerance: float = PARITY_TOLERANCE) -> float:
    """The max absolute difference between shard ``name``'s traced output ``got`` and the torch
    module's ``want``; ExportParityError when the shapes differ or it exceeds ``tolerance``."""
    if got.shape != want.shape:
        raise ExportParityError(f"shard {name}: traced output has shape {list(got.shape)}, the torch module's "
                                f"{list(want.shape)}; expected the same")
    err = float(np.max(np.abs(got - want))) if got.size else 0.0
    if not err <= tolerance:
        raise ExportParityError(f"shard {name}: traced output differs from the torch module by {err:.3g} "
                                f"(shape {list(got.shape)}); expected <= {tolerance:g}")
    return err


def export_bundle(model: UnifiedStudents, cfg: StudentsConfig, *, out_dir: Path,
                  evaluation: dict[str, Any], classes: tuple[str, ...]) -> Path:
    """Write one TorchScript shard per student plus the merge shard and the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = []
    x = torch.zeros((1, *cfg.input_shape), dtype=torch.float32)
    for i, student in enumerate(model.students):
        name = f"student_{i}"
        _, io = trace_shard(student, x, out_dir / f"{name}.ts")
        shards.append({"name": name, "role": "student", "index": i, "part": i, "runtime": "torch",
                       "file": f"{name}.ts", **io})
    z = torch.zeros((1, cfg.students * cfg.out_dim), dtype=torch.float32)
    _, io = trace_shard(model.merge, z, out_dir / "merge.ts")
    shards.append({"name": "merge", "role": "merge", "runtime": "torch", "file": "merge.ts", **io})
    for shard in shards:
        shard["sha256"] = sha256_file(out_dir / shard["file"])
    manifest = {
        "format": FORMAT, "method": "joint", "students": cfg.students, "parts": cfg.students,
        "part_dim": cfg.out_dim, "merge_rule": "concat", "student_part": list(range(cfg.students)),
        "dataset": cfg.dataset, "classes": list(classes), "config": asdict(cfg), "config_key": cfg.key(),
        "shards": shards, "evaluation": {**evaluation, "numerics": numerics()}, "numerics": numerics_record(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return out_dir


MAX_MANIFEST_BYTES = 16 << 20


def load_manifest(bundle_dir: Path, *, verify: bool = True) -> dict[str, Any]:
    """Read the manifest and check it (``testbed.manifest``: types, bounds, every file a plain
    file of the bundle) before anything of the bundle is used; with ``verify`` check every
    shard's sha256."""
    path = Path(bundle_dir) / MANIFEST
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes; expected a manifest of at most "
                              f"{MAX_MANIFEST_BYTES >> 20} MiB")
        doc = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"{path}: cannot read bundle manifest ({exc})") from None
    manifest = check_manifest(doc, source=path, bundle_dir=Path(bundle_dir), fmt=FORMAT)
    if verify:
        for i, shard in enumerate(manifest["shards"]):
            for entry in (shard, *shard.get("alternates", ())):
                f = bundle_file(Path(bundle_dir), entry["file"])
                if not f.is_file():
                    raise BundleError(f"{path}: shards[{i}]: shard file {entry['file']} is missing")
                digest = sha256_file(f)
                if digest != entry["sha256"]:
                    raise BundleError(f"{f}: sha256 {digest[:12]}… does not match the manifest's "
                                      f"{entry['sha256'][:12]}…; the bundle was modified, rebuild it")
    return manifest


def shard_for(manifest: dict[str, Any], *, role: str, index: int | None = None, runtime: str | None = None,
              quantize: str = "none") -> dict[str, Any]:
    """The manifest entry of the merge shard, or of student ``index``, in the format ``runtime``
    loads (None: the primary TorchScript entry); for ``tflite``, ``quantize`` picks f32 or int8."""
    for shard in manifest["shards"]:
        if shard["role"] == role and (index is None or shard.get("index") == index):
            if runtime is None or runtime == shard["runtime"]:
                return shard
            for alt in shard.get("alternates", ()):
                if alt["runtime"] == runtime and alt.get("quantize", "none") == quantize:
                    return {**{k: v for k, v in shard.items() if k != "alternates"}, **alt}
            have = [f"{a['runtime']}/{a.get('quantize', 'none')}" for a in shard.get("alternates", ())]
            raise BundleError(f"bundle shard {shard['name']} has no {runtime} file"
                              + (f" quantised {quantize}" if quantize != "none" else "")
                              + f" (it has {', '.join([shard['runtime'], *have])}); rebuild the bundle with "
                                f"partition.runtimes including {runtime}")
    raise BundleError(f"bundle has no {role} shard" + (f" with index {index}" if index is not None else ""))
