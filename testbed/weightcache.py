"""The on-disk cache of trained weights, keyed by a hash of the configuration.

Holds ``load_or_train``: one folder per key with ``weights.pt`` (a state dict, written
atomically) and ``record.json`` (what training reported, plus ``train_seconds``, the numerics it
ran with and the identity of its data). Every model the harness trains (the spine's students, a
partition's teacher and students) goes through it. It does not know how any model is built or
trained; the caller passes both.

The one rule for what a key holds besides the caller's configuration: ``entry_dir`` turns the
caller's folder (named by its config key) into ``<folder>-n<tag>``, where the tag hashes the
process's numerics (testbed/training.py: torch version, torch threads, deterministic flag) and
the caller's ``identity`` (``data_identity``: a sha256 of the dataset's arrays, so a dataset
of the same name with other files trains into another folder). Weights trained with 2 threads
are never loaded by a process that asks for 1.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from testbed.training import numerics, numerics_record

if TYPE_CHECKING:
    from testbed.data import Dataset

M = TypeVar("M", bound=torch.nn.Module)


def data_identity(data: Dataset) -> dict[str, Any]:
    """What a dataset is, for keys and records: its name, sizes and a sha256 of its arrays
    (train and test images and labels as loaded; about 0.25 s for Fashion-MNIST)."""
    h = hashlib.sha256()
    for a in (data.x_train, data.y_train, data.x_test, data.y_test):
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(memoryview(a).cast("B") if a.flags.c_contiguous else a.tobytes())
    return {"name": data.name, "train": int(len(data.y_train)), "test": int(len(data.y_test)),
            "sha256": h.hexdigest()}


def key_inputs(identity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What ``entry_dir``'s tag hashes: this process's numerics and the caller's identity."""
    return {"numerics": numerics(), "identity": dict(identity or {})}


def entry_dir(entry: Path, *, identity: Mapping[str, Any] | None = None) -> Path:
    """The folder of ``entry`` (the caller's path, named by its config key) for this process's
    numerics and ``identity``: ``<entry>-n<tag>``."""
    blob = json.dumps(key_inputs(identity), sort_keys=True, default=str)
    return Path(entry).with_name(f"{Path(entry).name}-n{hashlib.sha256(blob.encode()).hexdigest()[:10]}")


def load_or_train(entry: Path, *, build: Callable[[], M], train: Callable[[], tuple[M, dict[str, Any]]],
                  identity: Mapping[str, Any] | None = None) -> tuple[M, dict[str, Any]]:
    """The model cached in ``entry_dir(entry, identity=identity)`` (``build()`` then load), or
    ``train()`` and cache it there.

    ``train`` returns the model and its record; the record comes back with ``cached`` set, and
    is stored with ``numerics`` and ``identity`` added.
    """
    folder = entry_dir(entry, identity=identity)
    weights, record_path = folder / "weights.pt", folder / "record.json"
    if weights.exists() and record_path.exists():
        model = build()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
        return model, {**json.loads(record_path.read_text()), "cached": True}
    t0 = time.monotonic()
    model, record = train()
    record = {**record, "train_seconds": round(time.monotonic() - t0, 2), "numerics": numerics_record(),
              "identity": dict(identity or {}), "entry": folder.name}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)
    record_path.write_text(json.dumps(record, indent=2))
    return model, {**record, "cached": False}
