"""The spine's model: S small CNN students (one per wearable) and the edge's merge layer.

Holds the torch definitions, joint training with cross-entropy, evaluation, and the weight
cache keyed by a hash of the configuration. Students each see the whole input and emit a
short vector; the merge shard concatenates the S vectors (zeros for a missing part) and
applies one fully connected layer. torch is imported here at module level: only laptop-side
code (training, partitioning) imports this module, never a board.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from testbed import weightcache
from testbed.data import Dataset


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
        blob = json.dumps({**asdict(self), "torch": torch.__version__.split("+")[0], "v": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Student(nn.Module):
    """Two conv blocks and a global-average head: input N x C x H x W -> N x out_dim (>= 0)."""

    def __init__(self, *, in_channels: int, width: int, out_dim: int, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False), nn.BatchNorm2d(4 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(4 * width, out_dim), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - self.mean) / self.std))


class Merge(nn.Module):
    """The edge shard: N x (S * out_dim) concatenated student vectors -> N x classes logits."""

    def __init__(self, *, students: int, out_dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(students * out_dim, num_classes)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(z)


class UnifiedStudents(nn.Module):
    """Students + merge trained jointly; at inference the parts run on different boards."""

    def __init__(self, cfg: StudentsConfig, *, mean: float, std: float) -> None:
        super().__init__()
        self.students = nn.ModuleList(
            Student(in_channels=cfg.input_shape[0], width=cfg.width, out_dim=cfg.out_dim, mean=mean, std=std)
            for _ in range(cfg.students))
        self.merge = Merge(students=cfg.students, out_dim=cfg.out_dim, num_classes=cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([s(x) for s in self.students], dim=1))


ProgressFn = Callable[[int, int, float], None]  # (step, total_steps, loss)


def train_students(cfg: StudentsConfig, data: Dataset, *, progress: ProgressFn | None = None,
                   threads: int | None = None) -> UnifiedStudents:
    """Train students and merge jointly with cross-entropy (Adam, one-cycle LR)."""
    torch.manual_seed(cfg.seed)
    if threads:
        torch.set_num_threads(threads)
    x = torch.from_numpy(data.x_train[: cfg.subset] if cfg.subset else data.x_train)
    y = torch.from_numpy(data.y_train[: cfg.subset] if cfg.subset else data.y_train)
    model = UnifiedStudents(cfg, mean=float(x.mean()), std=float(x.std()) or 1.0)
    steps_per_epoch = (len(x) + cfg.batch_size - 1) // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    step = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            loss = loss_fn(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if progress:
                progress(step, total, float(loss))
    model.eval()
    return model


@torch.no_grad()
def evaluate(model: UnifiedStudents, x: np.ndarray, y: np.ndarray, *, batch: int = 1000) -> float:
    """Top-1 accuracy of the whole unified model (all parts present)."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        logits = model(torch.from_numpy(x[i:i + batch]))
        correct += int((logits.argmax(1).numpy() == y[i:i + batch]).sum())
    return correct / max(1, len(x))


def load_or_train(cfg: StudentsConfig, data: Dataset, *, cache_dir: Path,
                  progress: ProgressFn | None = None) -> tuple[UnifiedStudents, dict]:
    """Return the trained model for ``cfg``, from ``cache_dir/<key>`` when present.

    The second value is the training record (cached flag, seconds, test accuracy).
    """
    def train() -> tuple[UnifiedStudents, dict]:
        model = train_students(cfg, data, progress=progress)
        return model, {"key": cfg.key(), "config": asdict(cfg), "torch": torch.__version__,
                       "test_accuracy": evaluate(model, data.x_test, data.y_test)}

    return weightcache.load_or_train(cache_dir / cfg.key(), build=lambda: UnifiedStudents(cfg, mean=0.0, std=1.0),
                                     train=train)
