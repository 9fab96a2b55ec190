"""Offline resilience: accuracy of a partitioned model when k of its S students fail.

Holds the numpy twin of the edge's merge (``merge_batch``: many failure patterns at once, the
same arithmetic as nodes.merge.Merger: per slot, the sum of the arrived students' vectors divided
by their count, zeros where none arrived), the enumeration of failure subsets, and
``resilience``: for k = 0..S−1 failed students, the mean and the worst accuracy over all
subsets of size k, or over a seeded random sample of ``max_subsets`` subsets when C(S, k) is
larger (the row says so). Each student's vectors on the test set are computed once; every
subset only re-merges them and applies the merge FC.

It must not train, partition or export anything.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from testbed.partition.students import PartitionedStudents
from testbed.training import accuracy


@dataclass(frozen=True)
class ResilienceRow:
    """Accuracy with ``k`` failed students, over ``subsets`` failure patterns."""

    k: int
    mean: float
    worst: float
    best: float
    subsets: int
    sampled: bool               # True: a random sample of the C(S, k) subsets, not all of them
    worst_failed: tuple[int, ...]

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["worst_failed"] = list(self.worst_failed)
        return d


def slot_of(*, rule: str, student_part: Sequence[int]) -> list[int]:
    """The merge slot of each student: its part for ``average``, its own index for ``concat``."""
    return list(student_part) if rule == "average" else list(range(len(student_part)))


def merge_batch(v: np.ndarray, present: np.ndarray, *, rule: str, student_part: Sequence[int]) -> np.ndarray:
    """``v``: N x S x D vectors; ``present``: U x S booleans (U failure patterns).

    Returns U x N x (slots * D) merged inputs of the merge FC, float32.
    """
    n, s, d = v.shape
    slots_of = slot_of(rule=rule, student_part=student_part)
    slots = max(slots_of) + 1
    assign = np.zeros((s, slots), dtype=np.float32)
    assign[np.arange(s), slots_of] = 1.0
    m = np.asarray(present, dtype=np.float32).reshape(-1, s)
    sums = np.einsum("us,nsd,sp->unpd", m, v.astype(np.float32), assign, optimize=True)
    counts = np.maximum(m @ assign, 1.0)                                  # U x slots
    return (sums / counts[:, None, :, None]).reshape(len(m), n, slots * d).astype(np.float32)


def failure_subsets(students: int, k: int, *, max_subsets: int = 200,
                    seed: int = 0) -> tuple[list[tuple[int, ...]], bool]:
    """All k-subsets of range(students), or a seeded sample of ``max_subsets`` distinct ones.

    The second value is True when sampled.
    """
    total = math.comb(students, k)
    if total <= max_subsets:
        return list(itertools.combinations(range(students), k)), False
    rng = np.random.default_rng(seed + 1000 * k)
    seen: set[tuple[int, ...]] = set()
    while len(seen) < max_subsets:
        seen.add(tuple(sorted(int(i) for i in rng.choice(students, size=k, replace=False))))
    return sorted(seen), True


@torch.no_grad()
def student_vectors(model: PartitionedStudents, x: np.ndarray, *, batch: int = 1000) -> np.ndarray:
    """Each student's output on ``x``: N x S x part_dim float32."""
    model.eval()
    return np.concatenate([model.vectors(torch.from_numpy(x[i:i + batch])).numpy()
                           for i in range(0, len(x), batch)])


def subset_accuracies(v: np.ndarray, y: np.ndarray, failed: Sequence[Sequence[int]], *, weight: np.ndarray,
                      bias: np.ndarray, rule: str, student_part: Sequence[int], chunk: int = 16) -> np.ndarray:
    """Accuracy for each failure pattern in ``failed`` (lists of failed student indices)."""
    s = v.shape[1]
    present = np.ones((len(failed), s), dtype=bool)
    for u, f in enumerate(failed):
        present[u, list(f)] = False
    out = np.empty(len(failed))
    for i in range(0, len(failed), chunk):
        z = merge_batch(v, present[i:i + chunk], rule=rule, student_part=student_part)
        logits = z @ weight.T + bias
        out[i:i + chunk] = (logits.argmax(axis=2) == y[None, :]).mean(axis=1)
    return out


def resilience(model: PartitionedStudents, x: np.ndarray, y: np.ndarray, *, max_subsets: int = 200,
               seed: int = 0) -> list[ResilienceRow]:
    """Rows for k = 0..S−1 failed students (mean, worst, best over the failure subsets)."""
    v = student_vectors(model, x)
    weight = model.merge.fc.weight.detach().numpy().astype(np.float32)
    bias = model.merge.fc.bias.detach().numpy().astype(np.float32)
    s = v.shape[1]
    rows = []
    for k in range(s):
        failed, sampled = failure_subsets(s, k, max_subsets=max_subsets, seed=seed)
        acc = subset_accuracies(v, y, failed, weight=weight, bias=bias, rule=model.rule,
                                student_part=model.student_part)
        worst = int(np.argmin(acc))
        rows.append(ResilienceRow(k=k, mean=float(acc.mean()), worst=float(acc[worst]), best=float(acc.max()),
                                  subsets=len(failed), sampled=sampled, worst_failed=tuple(failed[worst])))
    return rows


def unified_accuracy(model: PartitionedStudents, x: np.ndarray, y: np.ndarray, *, batch: int = 1000) -> float:
    """Top-1 accuracy of the whole model run as one torch module (all students present)."""
    return accuracy(model, x, y, batch=batch)
