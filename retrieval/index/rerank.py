"""Exact re-ranking of a first stage's candidates from the stored vectors, in bounded memory.

A compressed index (IVF-PQ, ...) returns approximate scores; :func:`rerank_exact` re-scores its
top candidates exactly against the build's vectors ``[N, D]`` (an array or the memory-mapped
``vectors.npy``) and keeps the best ``k``. The candidates' vectors are gathered block by block
(a range of queries times a range of candidates), so at most about ``2 x max_bytes`` of gathered
vectors are held at once, whatever the batch size or the re-ranking depth.
"""
from __future__ import annotations

import numpy as np

RERANK_MAX_BYTES = 64 * 2**20     # float32 candidate vectors gathered per block (held twice: as read, as laid out)


def block_shape(n_queries: int, n_candidates: int, dim: int, max_bytes: int = RERANK_MAX_BYTES) -> tuple[int, int]:
    """(queries, candidates) per block: at most ``max_bytes`` of ``dim``-d float32 vectors (at least
    one vector); whole candidate lists when one fits, else one query at a time, candidates split."""
    vectors = max(1, int(max_bytes) // (4 * max(int(dim), 1)))
    if n_candidates <= vectors:
        return max(1, min(n_queries, vectors // max(n_candidates, 1))), max(n_candidates, 1)
    return 1, vectors


def exact_scores(queries: np.ndarray, rows: np.ndarray, vectors: np.ndarray,
                 max_bytes: int = RERANK_MAX_BYTES) -> np.ndarray:
    """Inner products ``[Q, R]`` float32 of ``queries [Q, D]`` with the vectors ``[N, D]`` of the
    candidate ``rows [Q, R]`` (-1 = none: ``-inf``). Each block's vectors are read in row order
    (cheap from a memory map); memory beyond the result: at most ``2 x max_bytes``."""
    exact = np.empty(rows.shape, np.float32)                                   # every -1 is set to -inf below
    q_step, r_step = block_shape(*rows.shape, queries.shape[1], max_bytes)
    for q0 in range(0, rows.shape[0], q_step):
        for r0 in range(0, rows.shape[1], r_step):
            block = rows[q0:q0 + q_step, r0:r0 + r_step]
            if (block >= 0).any():
                exact[q0:q0 + q_step, r0:r0 + r_step] = _block_scores(queries[q0:q0 + q_step], block, vectors)
    exact[rows < 0] = -np.inf
    return exact


def _block_scores(queries: np.ndarray, block: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Inner products ``[q, r]`` of ``queries [q, D]`` with the vectors of the rows ``block [q, r]``
    (at least one >= 0; a -1 scores against an arbitrary row). The gathered vectors are freed on return."""
    wanted = np.unique(block[block >= 0])                                      # [U] sorted rows
    table = np.asarray(vectors[wanted], dtype=np.float32)                      # [U, D], read in row order
    gathered = table[np.searchsorted(wanted, block)]                           # [q, r, D]
    return np.einsum("qd,qrd->qr", queries, gathered)


def rerank_exact(queries: np.ndarray, rows: np.ndarray, vectors: np.ndarray, k: int,
                 max_bytes: int = RERANK_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """Re-score candidate ``rows [Q, R]`` (-1 = none) exactly against ``vectors [N, D]`` and keep
    the best ``k``: (scores ``[Q, k]`` float32, rows ``[Q, k]``, -1 where fewer candidates). Ties
    keep the candidates' order (stable sort). Memory: :func:`exact_scores` plus ``Q x R x 12``
    bytes (the negated scores and their int64 order)."""
    exact = exact_scores(np.asarray(queries, np.float32), rows, vectors, max_bytes)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    scores, best = np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)
    best[~np.isfinite(scores)] = -1
    return scores, best
