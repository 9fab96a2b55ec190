"""Filter graphs and partitions on synthetic activations with planted communities."""
from __future__ import annotations

import numpy as np
import pytest

from testbed.partition.graph import (eigen_parts, filter_graph, intra_share, louvain_parts, random_parts,
                                     student_parts)


def planted(*, groups: int, size: int, n: int = 3000, seed: int = 0) -> tuple[np.ndarray, list[set[int]]]:
    """Each image excites one group strongly (filters of a group co-activate), plus noise."""
    rng = np.random.default_rng(seed)
    f = groups * size
    perm = rng.permutation(f)                       # hide the planted order
    truth = [set(int(x) for x in perm[g * size:(g + 1) * size]) for g in range(groups)]
    acts = rng.random((n, f)) * 0.3
    for i, g in enumerate(rng.integers(0, groups, size=n)):
        members = perm[g * size:(g + 1) * size]
        acts[i, members] = 0.8 + 0.2 * rng.random(size)
    return acts, truth


def test_graph_weights_follow_the_nonn_formula_on_a_tiny_case() -> None:
    acts = np.array([[2.0, 1.0, 0.0, -5.0]])       # normalised: 1, 0.5, 0, 0 (clipped)
    w = filter_graph(acts, top_k=2, keep_fraction=1.0)
    assert w[0, 1] == pytest.approx(1.0 * 0.5 / (0.5 + 1.0)) and w[1, 0] == w[0, 1]
    assert w.sum() == pytest.approx(2 * w[0, 1])    # only the top-2 pair got weight
    assert np.allclose(w, w.T) and not np.diag(w).any()


def test_threshold_keeps_the_strongest_fraction_of_edges() -> None:
    acts, _ = planted(groups=4, size=8)
    w = filter_graph(acts, top_k=8, keep_fraction=0.1)
    f = w.shape[0]
    kept = np.count_nonzero(np.triu(w, k=1))
    assert kept == pytest.approx(0.1 * f * (f - 1) / 2, abs=2)


@pytest.mark.parametrize("method", ["louvain", "eigen"])
def test_planted_communities_are_recovered(method: str) -> None:
    acts, truth = planted(groups=4, size=8)
    w = filter_graph(acts, top_k=8, keep_fraction=0.2)
    part = louvain_parts(w, parts=4, seed=0) if method == "louvain" else eigen_parts(w, parts=4)
    assert sorted(map(frozenset, part.parts), key=min) == sorted(map(frozenset, truth), key=min)
    assert part.dropped == ()


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_eigen_split_is_balanced_and_beats_random(m: int) -> None:
    acts, _ = planted(groups=m, size=6, seed=m)
    w = filter_graph(acts, top_k=6, keep_fraction=0.3)
    part = eigen_parts(w, parts=m)
    assert max(part.sizes) - min(part.sizes) <= 1 and sum(part.sizes) == w.shape[0]
    assert sorted(i for p in part.parts for i in p) == list(range(w.shape[0]))
    rand = np.mean([intra_share(w, random_parts(w.shape[0], m, seed=s)) for s in range(20)])
    assert intra_share(w, part.parts) > rand


def test_eigen_split_balances_sizes_that_do_not_divide() -> None:
    acts, _ = planted(groups=3, size=7)
    w = filter_graph(acts, top_k=7, keep_fraction=0.3)
    assert sorted(eigen_parts(w, parts=4).sizes) == [5, 5, 5, 6]


def test_louvain_drops_isolated_filters_and_says_why() -> None:
    acts, _ = planted(groups=2, size=6)
    acts = np.hstack([acts, np.zeros((acts.shape[0], 2))])   # two dead filters
    w = filter_graph(acts, top_k=6, keep_fraction=0.3)
    part = louvain_parts(w, parts=2)
    assert set(part.dropped) == {12, 13} and "isolated" in part.dropped_reason
    assert sum(part.sizes) == 12


def test_student_to_part_assignment() -> None:
    assert student_parts(students=4, parts=2) == [0, 1, 0, 1]
    assert student_parts(students=6, parts=3) == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError):
        student_parts(students=2, parts=3)


def test_louvain_bisects_the_largest_community_when_too_few_are_found() -> None:
    acts, truth = planted(groups=3, size=8)
    w = filter_graph(acts, top_k=8, keep_fraction=0.2)
    part = louvain_parts(w, parts=5, seed=0)
    assert len(part.parts) == 5 and all(part.sizes) and sum(part.sizes) + len(part.dropped) == 24
    assert part.notes["communities"] == 3 and part.notes["bisected"] == 2
    # every part stays inside one planted community: bisection never mixes communities
    assert all(any(set(p) <= t for t in truth) for p in part.parts)
