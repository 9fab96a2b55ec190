"""The teacher whose final-layer filters NoNN and the resilient method partition.

Holds a small wide-residual network (WRN-style, pre-activation basic blocks) for 28x28 / 32x32
(and tiny 8x8) images sized for a 2-core CPU, its training (cross-entropy through
testbed/training.py's loop: AdamW, one-cycle schedule, progress callback), the weight cache
keyed by a hash of ``TeacherConfig`` (as testbed/model.py does for the spine; testbed/weightcache.py
adds the numerics and the data's identity), and the two
views of its last layer the partitioners need:

- ``final_maps``: the final conv layer's feature maps after its BN + ReLU, N x F x h x w
  (the attention-transfer targets);
- ``final_activations``: their global average, N x F (the NoNN filter-graph input).

It must not partition, train students or write bundles (pipeline.py does), and it never
downloads anything.
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


@dataclass(frozen=True)
class TeacherConfig:
    """Everything that determines the teacher's trained weights (and so its cache key).

    ``widths`` are the three stages' channel counts; the last one is F, the number of filters
    of the final conv layer that gets partitioned. Stages 2 and 3 halve the resolution, so a
    28x28 input ends in 7x7 maps (8x8 digits: 2x2).
    """

    dataset: str
    input_shape: tuple[int, ...]
    num_classes: int
    widths: tuple[int, int, int] = (16, 32, 64)
    blocks: int = 1
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.004
    weight_decay: float = 5e-4
    subset: int | None = None
    seed: int = 0

    @property
    def filters(self) -> int:
        return self.widths[-1]

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "torch": torch.__version__.split("+")[0], "v": 1, "kind": "wrn"},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Block(nn.Module):
    """Pre-activation basic block (BN-ReLU-conv x2) with a 1x1 projection when shapes change."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.short = (nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)
                      if stride != 1 or c_in != c_out else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        y = self.conv1(o)
        y = self.conv2(F.relu(self.bn2(y)))
        return y + (self.short(o) if self.short is not None else x)


class Teacher(nn.Module):
    """WRN-style CNN: stem conv, three stages, final BN-ReLU, global average pool, FC."""

    def __init__(self, cfg: TeacherConfig, *, mean: float, std: float) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))
        w1, w2, w3 = cfg.widths
        self.stem = nn.Conv2d(cfg.input_shape[0], w1, 3, padding=1, bias=False)
        layers: list[nn.Module] = []
        c = w1
        for width, stride in ((w1, 1), (w2, 2), (w3, 2)):
            for b in range(cfg.blocks):
                layers.append(_Block(c, width, stride if b == 0 else 1))
                c = width
        self.stages = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, cfg.num_classes)

    def final_maps(self, x: torch.Tensor) -> torch.Tensor:
        """The final conv layer's output after BN + ReLU: N x F x h x w, all >= 0."""
        return F.relu(self.bn(self.stages(self.stem((x - self.mean) / self.std))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.final_maps(x).mean(dim=(2, 3)))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, final maps) in one pass."""
        maps = self.final_maps(x)
        return self.fc(maps.mean(dim=(2, 3))), maps


def train_teacher(cfg: TeacherConfig, data: Dataset, *, progress: ProgressFn | None = None) -> Teacher:
    """Train with cross-entropy (AdamW, one-cycle LR, batches drawn by a seeded permutation,
    no augmentation: a few epochs on a CPU, not a state-of-the-art teacher)."""
    torch.manual_seed(cfg.seed)
    x = torch.from_numpy(data.x_train[: cfg.subset] if cfg.subset else data.x_train)
    y = torch.from_numpy(data.y_train[: cfg.subset] if cfg.subset else data.y_train)
    model = Teacher(cfg, mean=float(x.mean()), std=float(x.std()) or 1.0)
    fit(model, lambda idx: F.cross_entropy(model(x[idx]), y[idx]), samples=len(x), epochs=cfg.epochs,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
        generator=torch.Generator().manual_seed(cfg.seed), progress=progress)
    return model


@torch.no_grad()
def final_activations(model: Teacher, x: np.ndarray | torch.Tensor, *, batch: int = 1000) -> np.ndarray:
    """Global average of the final conv layer's maps (after BN + ReLU): N x F float32."""
    model.eval()
    xt = torch.as_tensor(x)
    return torch.cat([model.final_maps(xt[i:i + batch]).mean(dim=(2, 3))
                      for i in range(0, len(xt), batch)]).numpy()


@torch.no_grad()
def final_feature_maps(model: Teacher, x: np.ndarray | torch.Tensor, *, batch: int = 1000) -> np.ndarray:
    """The full final feature maps, N x F x h x w float32 (for attention transfer)."""
    model.eval()
    xt = torch.as_tensor(x)
    return torch.cat([model.final_maps(xt[i:i + batch]) for i in range(0, len(xt), batch)]).numpy()


def teacher_accuracy(model: Teacher, x: np.ndarray, y: np.ndarray, *, batch: int = 1000) -> float:
    """Top-1 accuracy on ``x``, ``y``."""
    return accuracy(model, x, y, batch=batch)


def load_or_train_teacher(cfg: TeacherConfig, data: Dataset, *, cache_dir: Path,
                          progress: ProgressFn | None = None,
                          identity: dict | None = None) -> tuple[Teacher, dict]:
    """The trained teacher for ``cfg``, from ``cache_dir/teacher-<key>-n<tag>`` when present (the
    tag: this process's numerics and the data's identity, testbed/weightcache.py; ``identity``
    when the caller computed ``weightcache.data_identity(data)`` already).

    The second value is the training record (cached flag, seconds, test accuracy, numerics).
    """
    def train() -> tuple[Teacher, dict]:
        model = train_teacher(cfg, data, progress=progress)
        return model, {"key": cfg.key(), "config": asdict(cfg), "torch": torch.__version__,
                       "test_accuracy": teacher_accuracy(model, data.x_test, data.y_test)}

    return weightcache.load_or_train(Path(cache_dir) / f"teacher-{cfg.key()}",
                                     build=lambda: Teacher(cfg, mean=0.0, std=1.0), train=train,
                                     identity={"data": identity or weightcache.data_identity(data)})
