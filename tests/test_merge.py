"""Edge merge: parts per sample, deadline, zero-fill, late and duplicate frames (injected clock)."""
from __future__ import annotations

import numpy as np
import pytest

from nodes.merge import Merger


def vec(v: float, n: int = 4) -> np.ndarray:
    return np.full(n, v, dtype=np.float32)


def test_all_parts_merge_immediately_in_slot_order() -> None:
    m = Merger(parts=[0, 1, 2], part_dim=4, deadline_s=0.3)
    m.expect(7, now=0.0)
    assert m.add(7, 2, vec(3), now=0.01) is None
    assert m.add(7, 0, vec(1), now=0.02) is None
    out = m.add(7, 1, vec(2), now=0.03)
    assert out is not None and not out.partial
    assert out.arrived == (0, 1, 2) and out.missing == ()
    np.testing.assert_array_equal(out.inputs, np.concatenate([vec(1), vec(2), vec(3)])[None, :])
    assert out.waited_s == pytest.approx(0.03)
    assert m.stats.merged_complete == 1 and m.pending() == 0


def test_missing_part_is_zero_filled_at_the_deadline() -> None:
    m = Merger(parts=[0, 1, 2], part_dim=4, deadline_s=0.3)
    m.expect(1, now=1.0)
    m.add(1, 0, vec(5), now=1.1)
    m.add(1, 2, vec(6), now=1.1)
    assert m.expire(now=1.29) == []
    assert m.next_deadline() == pytest.approx(1.3)
    (out,) = m.expire(now=1.3)
    assert out.partial and out.missing == (1,) and out.arrived == (0, 2)
    np.testing.assert_array_equal(out.inputs[0, 4:8], np.zeros(4, dtype=np.float32))
    np.testing.assert_array_equal(out.inputs[0, :4], vec(5))
    assert m.stats.merged_partial == 1


def test_sample_with_no_part_at_all_still_merges_all_zero() -> None:
    m = Merger(parts=[0, 1], part_dim=2, deadline_s=0.1)
    m.expect(3, now=0.0)
    (out,) = m.expire(now=0.2)
    assert out.arrived == () and out.missing == (0, 1) and not out.inputs.any()


def test_frame_before_trigger_opens_the_sample_and_late_frames_are_counted() -> None:
    m = Merger(parts=[0, 1], part_dim=2, deadline_s=0.1)
    m.add(9, 0, vec(1, 2), now=0.0)          # frame raced ahead of the edge's trigger
    m.expect(9, now=0.05)                    # does not restart the deadline
    (out,) = m.expire(now=0.1)
    assert out.missing == (1,)
    assert m.add(9, 1, vec(2, 2), now=0.2) is None
    assert m.stats.late_frames == 1 and m.pending() == 0


def test_duplicates_unknown_parts_and_bad_shapes_are_dropped() -> None:
    m = Merger(parts=[0, 1], part_dim=2, deadline_s=0.1)
    m.add(1, 0, vec(1, 2), now=0.0)
    m.add(1, 0, vec(9, 2), now=0.0)
    m.add(1, 5, vec(1, 2), now=0.0)
    m.add(1, 1, vec(1, 3), now=0.0)
    assert m.stats.duplicate_frames == 1 and m.stats.unknown_part == 1 and m.stats.bad_shape == 1
    (out,) = m.expire(now=1.0)
    np.testing.assert_array_equal(out.inputs[0, :2], vec(1, 2))


def test_expire_returns_oldest_first_and_rejects_bad_options() -> None:
    m = Merger(parts=[0], part_dim=1, deadline_s=0.1)
    m.expect(2, now=0.05)
    m.expect(1, now=0.0)
    assert [o.sample_id for o in m.expire(now=1.0)] == [1, 2]
    with pytest.raises(ValueError, match="expected one of concat"):
        Merger(parts=[0], part_dim=1, deadline_s=0.1, rule="median")
    with pytest.raises(ValueError, match="deadline_s"):
        Merger(parts=[0], part_dim=1, deadline_s=0)
