"""Students that each learn one part of a teacher's final-layer filters, and their training.

Holds:
- ``merge_vectors``: the edge's merge arithmetic in torch, the same as nodes.merge.Merger:
  ``concat`` puts student i in slot i and zero-fills a missing student's slot; ``average`` puts
  student i in slot ``student_part[i]``, averages the students of a slot that arrived and
  zero-fills a slot none of whose students arrived; slots are concatenated in order;
- ``PartitionedStudents``: S students (each ``Student`` sees the whole input and emits a vector
  of ``part_dim`` values, the only thing its wearable sends) + the merge FC (``MergeFC``, one
  linear layer over the merged vector);
- ``train_students``: joint knowledge distillation from precomputed teacher targets, through
  testbed/training.py's minibatch loop (Adam, one-cycle schedule):

      loss = α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE(s, y) + β·AT

  with AT = ½ Σ_i mean_{batch, positions} (q_i − p_{part(i)})², where q_i is student i's
  attention map and p_j the teacher's attention map over the filters of part j. An attention map
  is Zagoruyko & Komodakis' (2017): the sum over channels of squared activations, flattened,
  L2-normalised; the larger of the two maps is first average-pooled to the smaller's size.
  Defaults T = 4, α = 0.9 (Hinton et al.'s usual pair; NoNN uses the same form) and β = 1000
  (Zagoruyko & Komodakis' value, with their ½ and per-position mean); ``dropout`` p > 0 drops
  each student's vector with probability p per training sample (merged exactly as a failure
  would be), which teaches the merge FC to work from survivors. Default 0 (off).

The two networks, ``Student`` and ``MergeFC``, are testbed/zoo.py's, shared with the spine's
model (testbed/model.py). It must not build graphs, partition filters, export shards or touch the teacher's weights:
the teacher's logits and part attention maps come in as arrays (pipeline.py computes them).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nodes.merge import MERGE_RULES   # one list: the rules the edge applies
from testbed.training import ProgressFn, fit
from testbed.zoo import MergeFC, Student



@dataclass(frozen=True)
class StudentsConfig:
    """What determines the students' trained weights (given the teacher targets).

    ``student_part[i]`` is the part student i learns (NoNN: i; resilient: i mod M);
    ``merge_rule`` is ``concat`` (NoNN) or ``average`` (resilient).
    """

    input_shape: tuple[int, ...]
    num_classes: int
    student_part: tuple[int, ...]
    merge_rule: str
    width: int = 12
    part_dim: int = 16
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.005
    temperature: float = 4.0
    alpha: float = 0.9
    beta: float = 1000.0
    dropout: float = 0.0
    subset: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.merge_rule not in MERGE_RULES:
            raise ValueError(f"unknown merge rule {self.merge_rule!r}; expected one of {', '.join(MERGE_RULES)}")
        if not self.student_part:
            raise ValueError("student_part must list one part per student")
        slots = sorted(set(self.student_part))
        if slots != list(range(len(slots))):
            raise ValueError(f"student_part must use every part 0..{len(slots) - 1}, got {list(self.student_part)}")
        if self.merge_rule == "concat" and list(self.student_part) != list(range(len(self.student_part))):
            raise ValueError("merge rule 'concat' needs student_part = 0..S-1 (one part per student)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def students(self) -> int:
        return len(self.student_part)

    @property
    def slots(self) -> int:
        return len(set(self.student_part))

    def key(self, *, extra: dict | None = None) -> str:
        """Cache key; ``extra`` adds what the targets depend on (teacher key, partition)."""
        blob = json.dumps({**asdict(self), "extra": extra or {}, "torch": torch.__version__.split("+")[0],
                           "v": 1}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def merge_vectors(v: torch.Tensor, present: torch.Tensor | None, *, rule: str,
                  student_part: Sequence[int]) -> torch.Tensor:
    """Merge student vectors as the edge does.

    ``v``: N x S x D; ``present``: N x S (or S) booleans/0-1, None = all arrived.
    Returns N x (slots * D): slot j is the sum of the present students of part j divided by
    their count (concat: one student per slot), zeros where no student of the slot arrived.
    """
    n, s, d = v.shape
    if len(student_part) != s:
        raise ValueError(f"student_part has {len(student_part)} entries for {s} students")
    if rule not in MERGE_RULES:
        raise ValueError(f"unknown merge rule {rule!r}; expected one of {', '.join(MERGE_RULES)}")
    slot_of = list(student_part) if rule == "average" else list(range(s))
    slots = max(slot_of) + 1
    assign = torch.zeros(s, slots, dtype=v.dtype, device=v.device)
    assign[torch.arange(s), torch.tensor(slot_of)] = 1.0
    m = torch.ones(n, s, dtype=v.dtype, device=v.device) if present is None else \
        torch.as_tensor(present, device=v.device).to(v.dtype).expand(n, s)
    sums = torch.einsum("ns,nsd,sp->npd", m, v, assign)
    counts = (m @ assign).clamp(min=1.0)
    return (sums / counts.unsqueeze(-1)).reshape(n, slots * d)


class PartitionedStudents(nn.Module):
    """S students + the merge FC; at inference the students run on different boards."""

    def __init__(self, cfg: StudentsConfig, *, mean: float, std: float) -> None:
        super().__init__()
        self.rule = cfg.merge_rule
        self.student_part = tuple(cfg.student_part)
        self.part_dim = cfg.part_dim
        self.students = nn.ModuleList(
            Student(in_channels=cfg.input_shape[0], width=cfg.width, part_dim=cfg.part_dim, mean=mean, std=std)
            for _ in cfg.student_part)
        self.merge = MergeFC(inputs=cfg.slots * cfg.part_dim, num_classes=cfg.num_classes)

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """N x S x part_dim, each student's output."""
        return torch.stack([s(x) for s in self.students], dim=1)

    def merged(self, v: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return merge_vectors(v, present, rule=self.rule, student_part=self.student_part)

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        return self.merge(self.merged(self.vectors(x), present))


# -- distillation ------------------------------------------------------------------------------

def attention_map(fmap: torch.Tensor, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Zagoruyko & Komodakis' attention: Σ_c a², average-pooled to ``size``, flattened, L2-normalised."""
    return normalize_attention(fmap.pow(2).sum(dim=1), size=size)


def normalize_attention(q: torch.Tensor, *, size: tuple[int, int] | None = None) -> torch.Tensor:
    """N x h x w (unnormalised Σ_c a²) -> N x (h'·w') unit vectors, pooled to ``size`` first."""
    if size is not None and tuple(q.shape[-2:]) != tuple(size):
        q = F.adaptive_avg_pool2d(q.unsqueeze(1), size).squeeze(1)
    return F.normalize(q.flatten(1), dim=1)


def part_attention(maps: np.ndarray | torch.Tensor, parts: Sequence[Sequence[int]], *,
                   batch: int = 4096) -> np.ndarray:
    """Unnormalised teacher attention per part: N x F x h x w maps -> N x P x h x w (Σ over the
    part's filters of squared activations)."""
    mt = torch.as_tensor(maps)
    out = []
    for i in range(0, len(mt), batch):
        sq = mt[i:i + batch].float().pow(2)
        out.append(torch.stack([sq[:, list(p)].sum(dim=1) for p in parts], dim=1))
    return torch.cat(out).numpy()


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, *,
            temperature: float, alpha: float) -> torch.Tensor:
    """α·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α)·CE."""
    t = temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                  reduction="batchmean", log_target=True)
    return alpha * t * t * kl + (1.0 - alpha) * F.cross_entropy(logits, y)


def at_loss(student_maps: Sequence[torch.Tensor], teacher_att: torch.Tensor,
            student_part: Sequence[int]) -> torch.Tensor:
    """½ Σ_i mean((q_i − p_part(i))²); ``teacher_att``: N x P x h x w unnormalised part maps."""
    total = student_maps[0].new_zeros(())
    th, tw = teacher_att.shape[-2:]
    for fmap, part in zip(student_maps, student_part):
        sh, sw = fmap.shape[-2:]
        size = (min(sh, th), min(sw, tw))
        q = attention_map(fmap, size=size)
        p = normalize_attention(teacher_att[:, part], size=size)
        total = total + (q - p).pow(2).mean()
    return 0.5 * total


def train_students(cfg: StudentsConfig, *, x: np.ndarray, y: np.ndarray, teacher_logits: np.ndarray,
                   teacher_att: np.ndarray, progress: ProgressFn | None = None) -> PartitionedStudents:
    """Train the students and the merge FC jointly by distillation (see the module docstring).

    ``teacher_logits``: N x classes; ``teacher_att``: N x P x h x w from ``part_attention``.
    """
    torch.manual_seed(cfg.seed)
    n = cfg.subset or len(x)
    xt, yt = torch.from_numpy(x[:n]), torch.from_numpy(y[:n])
    tl, ta = torch.from_numpy(teacher_logits[:n]).float(), torch.from_numpy(teacher_att[:n]).float()
    if ta.shape[1] != cfg.slots:
        raise ValueError(f"teacher attention has {ta.shape[1]} parts; the students learn {cfg.slots}")
    model = PartitionedStudents(cfg, mean=float(xt.mean()), std=float(xt.std()) or 1.0)
    gen = torch.Generator().manual_seed(cfg.seed)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = xt[idx]
        outs = [s.vector_and_map(xb) for s in model.students]
        v = torch.stack([o[0] for o in outs], dim=1)
        present = None
        if cfg.dropout > 0:
            present = torch.rand(len(idx), cfg.students, generator=gen) >= cfg.dropout
        logits = model.merge(model.merged(v, present))
        loss = kd_loss(logits, tl[idx], yt[idx], temperature=cfg.temperature, alpha=cfg.alpha)
        if cfg.beta:
            loss = loss + cfg.beta * at_loss([o[1] for o in outs], ta[idx], cfg.student_part)
        return loss

    fit(model, batch_loss, samples=n, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, generator=gen,
        progress=progress)
    return model
