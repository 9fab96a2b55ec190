"""The on-disk cache of trained weights, keyed by a hash of the configuration.

Holds ``load_or_train``: one folder per key with ``weights.pt`` (a state dict, written
atomically) and ``record.json`` (what training reported, plus ``train_seconds``). Every model
the harness trains (the spine's students, a partition's teacher and students) goes through it.
It does not know how any model is built or trained; the caller passes both.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

M = TypeVar("M", bound=torch.nn.Module)


def load_or_train(entry: Path, *, build: Callable[[], M],
                  train: Callable[[], tuple[M, dict[str, Any]]]) -> tuple[M, dict[str, Any]]:
    """The model cached in ``entry`` (``build()`` then load), or ``train()`` and cache it.

    ``train`` returns the model and its record; the record comes back with ``cached`` set.
    """
    weights, record_path = entry / "weights.pt", entry / "record.json"
    if weights.exists() and record_path.exists():
        model = build()
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        model.eval()
        return model, {**json.loads(record_path.read_text()), "cached": True}
    t0 = time.monotonic()
    model, record = train()
    record = {**record, "train_seconds": round(time.monotonic() - t0, 2)}
    entry.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(weights)
    record_path.write_text(json.dumps(record, indent=2))
    return model, {**record, "cached": False}
