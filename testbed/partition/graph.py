"""Filter co-activation graphs and the two ways of cutting them into parts.

Holds, as pure numpy (networkx only for Louvain):
- ``filter_graph``: NoNN's graph over the final conv layer's filters, built from per-image
  global-average activations (clipped at 0, normalised by the image's maximum, top-k filters per
  image, pair weight a_i·a_j / (|a_i − a_j| + 1)), thresholded to the strongest edges;
- ``louvain_parts``: NoNN's partition: Louvain communities by modularity, merged into S parts,
  with isolated filters dropped (as NoNN does) and reported;
- ``eigen_parts``: the resilient method's balanced split into M equal parts by recursive
  bisection on the leading eigenvector of the (generalised) modularity matrix, cut at the rank
  that keeps sizes equal, M split as ⌊M/2⌋ + rest;
- ``intra_share`` and ``random_parts`` to judge a partition.
No training and no I/O here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Partition:
    """Filters per part (sorted), plus the filters no part got and why."""

    parts: tuple[tuple[int, ...], ...]
    dropped: tuple[int, ...] = ()
    dropped_reason: str = ""
    method: str = ""
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def sizes(self) -> list[int]:
        return [len(p) for p in self.parts]

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, "parts": [list(p) for p in self.parts], "sizes": self.sizes,
                "dropped": list(self.dropped), "dropped_reason": self.dropped_reason, **self.notes}


def filter_graph(acts: np.ndarray, *, top_k: int, keep_fraction: float = 0.01) -> np.ndarray:
    """Symmetric F x F weights from N x F activations; only the strongest ``keep_fraction`` of
    the possible edges (F·(F−1)/2) are kept, the rest set to 0."""
    a = np.clip(np.asarray(acts, dtype=np.float64), 0.0, None)
    n, f = a.shape
    if not 1 <= top_k <= f:
        raise ValueError(f"top_k must be in 1..{f}, got {top_k}")
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    peak = a.max(axis=1, keepdims=True)
    a = np.divide(a, peak, out=np.zeros_like(a), where=peak > 0)
    idx = np.argpartition(-a, top_k - 1, axis=1)[:, :top_k]          # N x k filter ids
    val = np.take_along_axis(a, idx, axis=1)                          # N x k normalised values
    iu, ju = np.triu_indices(top_k, k=1)
    w_pairs = val[:, iu] * val[:, ju] / (np.abs(val[:, iu] - val[:, ju]) + 1.0)
    w = np.zeros((f, f), dtype=np.float64)
    np.add.at(w, (idx[:, iu].ravel(), idx[:, ju].ravel()), w_pairs.ravel())
    w = w + w.T
    np.fill_diagonal(w, 0.0)
    keep = max(1, int(round(keep_fraction * f * (f - 1) / 2)))
    upper = w[np.triu_indices(f, k=1)]
    if keep < upper.size:
        threshold = np.partition(upper, upper.size - keep)[upper.size - keep]
        w[w < threshold] = 0.0
    return w


def intra_share(w: np.ndarray, parts: tuple[tuple[int, ...], ...] | list[list[int]]) -> float:
    """Share of the total edge weight that lies inside parts (1.0 = no edge is cut)."""
    total = float(np.triu(w, k=1).sum())
    if total == 0:
        return 0.0
    inside = sum(float(np.triu(w[np.ix_(p, p)], k=1).sum()) for p in parts if len(p) > 1)
    return inside / total


def random_parts(f: int, m: int, *, seed: int) -> tuple[tuple[int, ...], ...]:
    """A random balanced split of ``f`` filters into ``m`` parts (the baseline)."""
    order = np.random.default_rng(seed).permutation(f)
    return tuple(tuple(sorted(int(i) for i in chunk)) for chunk in np.array_split(order, m))


# -- NoNN: Louvain ---------------------------------------------------------------------------

def louvain_parts(w: np.ndarray, *, parts: int, seed: int = 0, resolution: float = 1.0) -> Partition:
    """Louvain communities of the thresholded graph, merged into ``parts`` groups.

    Filters with no edge left after thresholding are dropped (NoNN drops them too: they carry
    no co-activation evidence); communities are merged greedily, largest first, into the part
    with the fewest filters so far (NoNN's public code only handles 2 parts; this generalises).
    When Louvain finds fewer communities than ``parts``, the largest community is bisected by
    its leading modularity eigenvector until there are enough (``notes["bisected"]`` counts them).
    """
    import networkx as nx

    f = w.shape[0]
    g = nx.Graph()
    rows, cols = np.nonzero(np.triu(w, k=1))
    g.add_weighted_edges_from((int(i), int(j), float(w[i, j])) for i, j in zip(rows, cols))
    isolated = tuple(sorted(set(range(f)) - set(g.nodes)))
    if g.number_of_nodes() < parts:
        raise ValueError(f"only {g.number_of_nodes()} connected filters for {parts} parts; "
                         f"raise keep_fraction or top_k")
    comms = nx.community.louvain_communities(g, weight="weight", seed=seed, resolution=resolution)
    comms = [sorted(c) for c in comms]
    found = len(comms)
    while len(comms) < parts:   # fewer communities than students: bisect the largest one
        comms.sort(key=len)
        comms.extend(_bisect(w, np.asarray(comms.pop(), dtype=int)))
    comms = sorted(comms, key=lambda c: (-len(c), c[0]))
    groups: list[list[int]] = [[] for _ in range(parts)]
    for c in comms:
        min(groups, key=len).extend(c)
    return Partition(parts=tuple(tuple(sorted(g_)) for g_ in groups), dropped=isolated,
                     dropped_reason="no edge left after keeping the strongest edges (isolated filter)"
                     if isolated else "", method="nonn",
                     notes={"communities": found, "bisected": len(comms) - found,
                            "community_sizes": [len(c) for c in comms]})


def _bisect(w: np.ndarray, nodes: np.ndarray) -> list[list[int]]:
    """Split one community in two by the sign of its modularity matrix's leading eigenvector
    (Newman 2006); at the median rank when the signs do not split it."""
    v = _leading_vector(w, nodes)
    left = nodes[v > 0]
    if not 0 < len(left) < len(nodes):
        left = nodes[np.argsort(-v, kind="stable")[: len(nodes) // 2]]
    right = np.setdiff1d(nodes, left)
    return [sorted(int(i) for i in left), sorted(int(i) for i in right)]


# -- resilient: balanced eigen split ---------------------------------------------------------

def _leading_vector(w: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """Leading eigenvector of the generalised modularity matrix of ``nodes`` (Newman 2006)."""
    k = w.sum(axis=1)
    two_m = k.sum()
    sub = w[np.ix_(nodes, nodes)]
    if two_m <= 0:
        return np.zeros(len(nodes))
    b = sub - np.outer(k[nodes], k[nodes]) / two_m
    b = b - np.diag(b.sum(axis=1))
    vals, vecs = np.linalg.eigh(b)
    v = vecs[:, -1]
    return v if v[np.argmax(np.abs(v))] >= 0 else -v   # deterministic sign


def _split(w: np.ndarray, nodes: np.ndarray, m: int) -> list[np.ndarray]:
    if m == 1:
        return [np.sort(nodes)]
    left_m = m // 2
    n_left = int(round(len(nodes) * left_m / m))
    order = np.argsort(-_leading_vector(w, nodes), kind="stable")
    left, right = nodes[order[:n_left]], nodes[order[n_left:]]
    return _split(w, left, left_m) + _split(w, right, m - left_m)


def eigen_parts(w: np.ndarray, *, parts: int) -> Partition:
    """``parts`` parts of equal size (±1) keeping strongly co-activated filters together."""
    f = w.shape[0]
    if not 1 <= parts <= f:
        raise ValueError(f"parts must be in 1..{f}, got {parts}")
    out = _split(w, np.arange(f), parts)
    return Partition(parts=tuple(tuple(int(i) for i in p) for p in out), method="resilient")


def student_parts(*, students: int, parts: int) -> list[int]:
    """Resilient assignment: student i learns part i mod M (M <= S/2 gives every part >= 2)."""
    if not 1 <= parts <= students:
        raise ValueError(f"parts must be in 1..{students}, got {parts}")
    return [i % parts for i in range(students)]
