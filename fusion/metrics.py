"""Recall@K, median and mean rank from a score matrix (a minimal stand-in for retrieval.metrics).

Ties: a ground truth tied with m - 1 other items gets the expected value under uniform random
tie-breaking (R@K credit ``clip((K - above) / m, 0, 1)``; rank = above + (m + 1) / 2, 1-based),
so a tie never counts as a win. Text-to-video: every caption is a query. Video-to-text: protocol
(b), all captions ranked and the best correct caption counts.
"""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)
TIES = "ties: expected value under random tie-breaking"
V2T_PROTOCOL = "video-to-text protocol (b): all captions ranked, best correct caption"


def _from_counts(above: np.ndarray, tied: np.ndarray) -> dict[str, float]:
    out = {f"R@{k}": float(100 * np.mean(np.clip((k - above) / tied, 0, 1))) for k in KS}
    ranks = above + (tied + 1) / 2
    out["MdR"] = float(np.median(ranks))
    out["MnR"] = float(np.mean(ranks))
    return out


def retrieval_metrics(scores: np.ndarray, query_video: np.ndarray) -> dict[str, dict[str, float]]:
    """``scores`` ``[Q, V]`` (captions x videos), ``query_video`` ``[Q]`` the index of each caption's video."""
    scores = np.asarray(scores, np.float64)
    rows = np.arange(len(scores))
    gt = scores[rows, query_video][:, None]
    t2v = _from_counts((scores > gt).sum(1), (scores == gt).sum(1))
    above, tied = [], []
    for v in range(scores.shape[1]):
        col = scores[:, v]
        own = query_video == v
        if not own.any():
            continue
        best = col[own].max()
        above.append((col > best).sum())
        tied.append((col == best).sum())
    v2t = _from_counts(np.asarray(above), np.asarray(tied))
    return {"t2v": t2v, "v2t": v2t, "ties": TIES, "v2t_protocol": V2T_PROTOCOL}
