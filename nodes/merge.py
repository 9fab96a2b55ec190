"""Edge-side merging of student outputs: collect parts per sample until all arrive or a deadline.

Pure logic with an injected clock (``now`` arguments, seconds): no I/O, no threads. Rules:

- ``concat`` (NoNN, the spine): each student's vector goes to its own slot; a missing student's
  slot is zero-filled;
- ``average`` (the resilient method): student i learns part ``student_part[i]``; the vectors of
  the students of one part that arrived are averaged, a part with no student left is zero-filled,
  and the parts are concatenated in part order.

The merge shard (FC over the concatenation) then gives the prediction.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MERGE_RULES = ("concat", "average")


@dataclass(frozen=True)
class Merged:
    """A sample ready for the merge shard."""

    sample_id: int
    inputs: np.ndarray          # 1 x (slots * part_dim), float32, zeros where a slot has no vector
    arrived: tuple[int, ...]
    missing: tuple[int, ...]
    waited_s: float             # from the first sign of the sample (trigger or frame) to merge

    @property
    def partial(self) -> bool:
        return bool(self.missing)


@dataclass
class _Pending:
    opened_at: float
    deadline: float
    parts: dict[int, np.ndarray] = field(default_factory=dict)


@dataclass
class MergeStats:
    """Counters of what the merger saw."""

    merged_complete: int = 0
    merged_partial: int = 0
    late_frames: int = 0        # frames for a sample already merged
    duplicate_frames: int = 0
    unknown_part: int = 0
    bad_shape: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class Merger:
    """Collects one vector per expected part for each sample."""

    def __init__(self, *, parts: Sequence[int], part_dim: int, deadline_s: float, rule: str = "concat",
                 student_part: Sequence[int] | None = None, remember: int = 100_000) -> None:
        """``parts`` are the shard ids of the students the edge expects (one frame each)."""
        if rule not in MERGE_RULES:
            raise ValueError(f"unknown merge rule {rule!r}; expected one of {', '.join(MERGE_RULES)}")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        if rule == "average":
            if student_part is None or len(student_part) != len(parts):
                raise ValueError("merge rule 'average' needs student_part: one part index per student")
            self._group = {p: int(g) for p, g in zip(parts, student_part)}
            self.slots = len(set(self._group.values()))
            if sorted(set(self._group.values())) != list(range(self.slots)):
                raise ValueError(f"student_part must use every part 0..{self.slots - 1}, got {list(student_part)}")
        else:
            self._group = {p: i for i, p in enumerate(parts)}
            self.slots = len(parts)
        self.rule = rule
        self.parts = tuple(parts)
        self.part_dim = part_dim
        self.deadline_s = deadline_s
        self.stats = MergeStats()
        self._pending: dict[int, _Pending] = {}
        self._done: OrderedDict[int, None] = OrderedDict()
        self._remember = remember

    def _open(self, sample_id: int, now: float) -> _Pending | None:
        if sample_id in self._done:
            return None
        pend = self._pending.get(sample_id)
        if pend is None:
            pend = self._pending[sample_id] = _Pending(opened_at=now, deadline=now + self.deadline_s)
        return pend

    def expect(self, sample_id: int, now: float) -> None:
        """The edge's trigger for ``sample_id`` arrived: its deadline starts now (if not started)."""
        self._open(sample_id, now)

    def add(self, sample_id: int, part: int, vector: np.ndarray, now: float) -> Merged | None:
        """Record one part; returns the merged sample when this completes it."""
        if part not in self._group:
            self.stats.unknown_part += 1
            return None
        flat = np.asarray(vector, dtype=np.float32).reshape(-1)
        if flat.size != self.part_dim:
            self.stats.bad_shape += 1
            return None
        pend = self._open(sample_id, now)
        if pend is None:
            self.stats.late_frames += 1
            return None
        if part in pend.parts:
            self.stats.duplicate_frames += 1
            return None
        pend.parts[part] = flat
        if len(pend.parts) == len(self.parts):
            return self._finish(sample_id, now)
        return None

    def expire(self, now: float) -> list[Merged]:
        """Merge (zero-filled) every sample whose deadline has passed, oldest first."""
        due = sorted((p.deadline, sid) for sid, p in self._pending.items() if p.deadline <= now)
        return [self._finish(sid, now) for _, sid in due]

    def next_deadline(self) -> float | None:
        return min((p.deadline for p in self._pending.values()), default=None)

    def pending(self) -> int:
        return len(self._pending)

    def _finish(self, sample_id: int, now: float) -> Merged:
        pend = self._pending.pop(sample_id)
        z = np.zeros((1, self.slots * self.part_dim), dtype=np.float32)
        counts = np.zeros(self.slots, dtype=np.int64)
        for part, vec in pend.parts.items():
            slot = self._group[part]
            z[0, slot * self.part_dim:(slot + 1) * self.part_dim] += vec
            counts[slot] += 1
        for slot in np.nonzero(counts > 1)[0]:
            z[0, slot * self.part_dim:(slot + 1) * self.part_dim] /= counts[slot]
        arrived = tuple(p for p in self.parts if p in pend.parts)
        missing = tuple(p for p in self.parts if p not in pend.parts)
        if missing:
            self.stats.merged_partial += 1
        else:
            self.stats.merged_complete += 1
        self._done[sample_id] = None
        while len(self._done) > self._remember:
            self._done.popitem(last=False)
        return Merged(sample_id=sample_id, inputs=z, arrived=arrived, missing=missing,
                      waited_s=now - pend.opened_at)
