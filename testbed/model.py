"""The spine's model: S small CNN students (one per wearable) and the edge's merge layer.

Holds ``StudentsConfig``, ``UnifiedStudents`` (S students + the merge layer, trained jointly),
joint training with cross-entropy (testbed/training.py's loop), evaluation, and the weight
cache keyed by a hash of the configuration. The student CNN and the merge layer are
testbed/zoo.py's ``Student`` and ``MergeFC`` (the partition students use the same two): each
student sees the whole input and emits a short vector; the merge shard concatenates the S
vectors (zeros for a missing part) and applies one fully connected layer. The cache folder is
``<key>-n<tag>`` (testbed/weightcache.py: the numerics and the data's sha256). It must not import
testbed/partition (which builds on the modules below it, bundle.py among them). torch is imported
here at module level: only laptop-side code (training, partitioning) imports this module,
never a board.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from testbed import weightcache
from testbed.data import Dataset
from testbed.training import ProgressFn, accuracy, fit
from testbed.zoo import MergeFC, Student


@dataclass(frozen=True)
class StudentsConfig:
    """Everything that determines trained weights (and so the cache key)."""

    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    students: int
    width: int
    out_dim: int
    epochs: int
    batch_size: int
    lr: float
    subset: int | None
    seed: int

    def key(self) -> str:
        # v2: the student is testbed.zoo.Student (state dict "body.*", was "features.*")
        blob = json.dumps({**asdict(self), "torch": torch.__version__.split("+")[0], "v": 2}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class UnifiedStudents(nn.Module):
    """Students + merge trained jointly; at inference the parts run on different boards."""

    def __init__(self, cfg: StudentsConfig, *, mean: float, std: float) -> None:
        super().__init__()
        self.students = nn.ModuleList(
            Student(in_channels=cfg.input_shape[0], width=cfg.width, part_dim=cfg.out_dim, mean=mean, std=std)
            for _ in range(cfg.students))
        self.merge = MergeFC(inputs=cfg.students * cfg.out_dim, num_classes=cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([s(x) for s in self.students], dim=1))


def train_students(cfg: StudentsConfig, data: Dataset, *, progress: ProgressFn | None = None) -> UnifiedStudents:
    """Train students and merge jointly with cross-entropy (Adam, one-cycle LR), on the process's
    torch threads (its entry point sizes them)."""
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(data.x_train[: cfg.subset] if cfg.subset else data.x_train)
    y = torch.from_numpy(data.y_train[: cfg.subset] if cfg.subset else data.y_train)
    model = UnifiedStudents(cfg, mean=float(x.mean()), std=float(x.std()) or 1.0)
    fit(model, lambda idx: F.cross_entropy(model(x[idx]), y[idx]), samples=len(x), epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, generator=torch.Generator().manual_seed(cfg.seed), progress=progress)
    return model


def evaluate(model: UnifiedStudents, x: np.ndarray, y: np.ndarray, *, batch: int = 1000) -> float:
    """Top-1 accuracy of the whole unified model (all parts present)."""
    return accuracy(model, x, y, batch=batch)


def load_or_train(cfg: StudentsConfig, data: Dataset, *, cache_dir: Path, progress: ProgressFn | None = None,
                  identity: dict | None = None) -> tuple[UnifiedStudents, dict]:
    """Return the trained model for ``cfg``, from ``cache_dir/<key>-n<tag>`` when present (the
    tag: this process's numerics and the data's identity, testbed/weightcache.py, so a dataset of
    the same name with other files trains into another folder; ``identity`` when the caller
    computed ``weightcache.data_identity(data)`` already).

    The second value is the training record (cached flag, seconds, test accuracy).
    """
    def train() -> tuple[UnifiedStudents, dict]:
        model = train_students(cfg, data, progress=progress)
        return model, {"key": cfg.key(), "config": asdict(cfg), "torch": torch.__version__,
                       "test_accuracy": evaluate(model, data.x_test, data.y_test)}

    return weightcache.load_or_train(cache_dir / cfg.key(), build=lambda: UnifiedStudents(cfg, mean=0.0, std=1.0),
                                     train=train, identity={"data": identity or weightcache.data_identity(data)})
