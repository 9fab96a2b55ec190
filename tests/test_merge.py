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


def test_average_rule_averages_students_of_a_part_and_survives_a_loss() -> None:
    # 4 students, 2 parts: students 0, 2 learn part 0; students 1, 3 learn part 1
    m = Merger(parts=[0, 1, 2, 3], part_dim=2, deadline_s=0.1, rule="average", student_part=[0, 1, 0, 1])
    assert m.slots == 2
    m.add(1, 0, vec(1, 2), now=0.0)
    m.add(1, 2, vec(3, 2), now=0.0)
    m.add(1, 1, vec(10, 2), now=0.0)
    out = m.add(1, 3, vec(20, 2), now=0.0)
    assert out is not None
    np.testing.assert_allclose(out.inputs[0], [2, 2, 15, 15])
    # student 3 lost: part 1 is student 1's vector alone, not halved
    m.add(2, 0, vec(1, 2), now=0.0)
    m.add(2, 2, vec(3, 2), now=0.0)
    m.add(2, 1, vec(10, 2), now=0.0)
    (out2,) = m.expire(now=1.0)
    np.testing.assert_allclose(out2.inputs[0], [2, 2, 10, 10])
    assert out2.missing == (3,)
    # both students of part 0 lost: part 0 zero-filled
    m.add(3, 1, vec(4, 2), now=2.0)
    (out3,) = m.expire(now=3.0)
    np.testing.assert_allclose(out3.inputs[0], [0, 0, 4, 4])


def test_average_rule_needs_a_student_part_map() -> None:
    with pytest.raises(ValueError, match="student_part"):
        Merger(parts=[0, 1], part_dim=1, deadline_s=0.1, rule="average")
    with pytest.raises(ValueError, match="every part"):
        Merger(parts=[0, 1], part_dim=1, deadline_s=0.1, rule="average", student_part=[0, 2])
