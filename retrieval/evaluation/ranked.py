"""Text-to-video rank counts through a FAISS index (top-k search), with the metrics' tie rule.

Only the top of the ranking is seen, so these counts give R@K for K <= the search depth; MdR and
MnR need the full ranking and are not reported from them.

Ties (same rule as :mod:`data.metrics`): the search depth grows (doubling, per query) while
the last returned score equals the score at depth ``k_max``, so a tied block that reaches into the
top ``k_max`` is always seen whole; with an exact index the R@K equal those of the full matrix.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from data.metrics import RankCounts
from retrieval.index.faiss_index import search


def _counts_from_lists(scores: np.ndarray, rows: np.ndarray, truth: np.ndarray, missing: int):
    """(better, tied, found) of each query's true row within its returned list ``[b, k]``; a true
    row not returned gets ``better = missing`` (the gallery size: never a hit)."""
    valid = rows >= 0
    is_true = (rows == truth[:, None]) & valid
    found = is_true.any(axis=1)
    own = scores[np.arange(len(rows)), is_true.argmax(axis=1)][:, None]
    better = np.count_nonzero((scores > own) & valid, axis=1)
    tied = np.count_nonzero((scores == own) & valid, axis=1) - 1
    return np.where(found, better, missing), np.where(found, tied, 0), found


def counts_from_index(index, queries: np.ndarray, true_rows: np.ndarray, k_max: int) -> RankCounts:
    """Rank counts of ``queries [Q, E]`` whose true item is index row ``true_rows [Q]``.

    A query whose true row is not returned counts as ranked below the depth searched (no hit).
    """
    n = index.ntotal
    first = min(int(k_max), n)
    better = np.empty(len(queries), np.int64)
    tied = np.empty(len(queries), np.int64)
    pending, depth = np.arange(len(queries)), min(first + 1, n)   # one more: is the next one tied?
    while pending.size:
        scores, rows = search(index, queries[pending], depth)
        boundary_tie = (depth < n) & (rows[:, -1] >= 0) & (scores[:, -1] == scores[:, first - 1])
        done = pending[~boundary_tie]
        b, t, _ = _counts_from_lists(scores[~boundary_tie], rows[~boundary_tie], true_rows[done], n)
        better[done], tied[done] = b, t
        pending, depth = pending[boundary_tie], min(2 * depth, n)
    return RankCounts(better, tied, np.ones(len(queries), np.int64))


def counts_with_rerank(index, queries: np.ndarray, true_rows: np.ndarray,
                       score: Callable[[np.ndarray, np.ndarray], np.ndarray], depth: int,
                       chunk: int = 256) -> tuple[RankCounts, float]:
    """Two stages for fine-grained models: FAISS top-``depth`` on the coarse vectors, then exact
    re-ranking of those candidates with ``score(q_idx, v_idx) -> [len(q_idx), len(v_idx)]``.

    Returns the counts (within the candidates) and the first-stage recall (% of queries whose
    true video is among the candidates); a true video missed by the first stage is a miss, so
    only R@K with K <= ``depth`` mean anything.
    """
    _, candidates = search(index, queries, depth)
    depth = candidates.shape[1]
    better = np.empty(len(queries), np.int64)
    tied = np.empty(len(queries), np.int64)
    found = np.empty(len(queries), bool)
    for start in range(0, len(queries), chunk):
        rows = candidates[start:start + chunk]
        union = np.unique(rows[rows >= 0])
        exact = np.asarray(score(np.arange(start, start + len(rows)), union))      # [b, u]
        positions = np.searchsorted(union, np.where(rows >= 0, rows, union[0]))
        scores = np.take_along_axis(exact, positions, axis=1)
        b, t, f = _counts_from_lists(scores, rows, true_rows[start:start + len(rows)], index.ntotal)
        better[start:start + len(rows)], tied[start:start + len(rows)], found[start:start + len(rows)] = b, t, f
    return RankCounts(better, tied, np.ones(len(queries), np.int64)), float(100.0 * found.mean())
