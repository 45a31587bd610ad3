"""Retrieval metrics from a similarity matrix ``S [Q, V]`` (rows: captions, columns: videos).

Queries are captions; ``query_videos[q]`` names the video caption ``q`` describes (several
captions per video allowed, uneven counts allowed); ``video_ids[v]`` names column ``v``. Videos
with no caption are gallery distractors for text-to-video and take no part in video-to-text.

Definitions (the evaluation contract, docs/methods.md §5; every output says ``ties: averaged``):

- For one query let ``g`` = number of gallery items scored strictly higher than the best correct
  item, ``w`` = number of *wrong* items tied with it, ``c`` = number of *correct* items tied with
  it (``c >= 1``; ``c = 1`` whenever there is a single correct item).
- Rank (1-based, averaged over ties) = ``1 + g + w / (c + 1)``: the expected position of the
  first correct item when the tied block is ordered uniformly at random. With one correct item
  this is ``1 + g + w / 2``. MdR is the median (the mean of the two middle values for an even
  number of queries), MnR the mean of these ranks.
- R@K (%) = 100 x mean over queries of the probability that the first correct item lands in the
  top K under uniformly random tie-breaking. With one correct item that is
  ``min(1, max(0, (K - g) / (w + 1)))``; with ``c`` tied correct items it is
  ``1 - C(w, K-g) / C(c+w, K-g)`` (0 when ``K <= g``, 1 when ``K - g > w``). So a tie with the
  ground truth is never a full win, and a constant-score model scores exactly chance.

Protocols:
- ``t2v``: each caption is a query; the gallery is every video column.
- ``v2t`` ``group-best``: each captioned video is a query; the gallery is the caption groups (one
  per captioned video), each scored by its best caption; one correct group.
- ``v2t`` ``all-captions``: each captioned video is a query; the gallery is every caption; the
  rank is that of the best correct caption (its other captions tied with it are counted in ``c``).
  The two protocols are not comparable; the one used is named in every output.

Agreement with collaborative-experts (CE) conventions: t2v ranks each caption (same), MdR uses
``np.median`` of 1-based ranks (same), MnR is the mean 1-based rank (same), CE's "averaging" tie
mode averages ranks (same). CE's v2t takes the best rank over a video's captions (our
``all-captions``). They differ on R@K under ties: CE counts an averaged rank below K as a hit
(a 2-way tie at the top gives R@1 = 100), ours gives the expected hit rate (50).

Scale: scores come from a :class:`ScoreSource` in chunks (rows for t2v, columns for v2t) sized by
``chunk_bytes``; a ``[Q, V]`` matrix is never needed in memory when scores come from vectors.
Every count is taken inside one chunk, so ties are compared between bit-identical numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

TIES = "averaged"
KS = (1, 5, 10, 50)
RSUM_KS = (1, 5, 10)   # RSum = R@1 + R@5 + R@10 of one direction (computed whatever ``ks`` asks for)
RECALL_COLUMNS = tuple(f"R@{k}" for k in KS)          # ("R@1", "R@5", "R@10", "R@50")
RANK_COLUMNS = ("MdR", "MnR")                          # median / mean rank (lower is better)
METRIC_COLUMNS = RECALL_COLUMNS + ("RSum",) + RANK_COLUMNS   # one direction's metrics, in table order
V2T_PROTOCOLS = ("group-best", "all-captions")
CHUNK_BYTES = 256 * 2**20
TIE_RULE = ("rank = 1 + #strictly better + #wrong tied / (#correct tied + 1); "
            "R@K = expected hit rate under uniformly random tie-breaking")


class ScoreError(ValueError):
    """Scores or ids that cannot be evaluated (NaN/inf, unknown ids, wrong shapes)."""


# ---------------------------------------------------------------------------------------------
# Score sources: where the numbers of S [Q, V] come from, chunk by chunk
# ---------------------------------------------------------------------------------------------
class ScoreSource(Protocol):
    n_rows: int
    n_cols: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Scores of rows ``start:stop`` against every column: ``[stop - start, n_cols]``."""

    def cols(self, index: np.ndarray) -> np.ndarray:
        """Scores of the columns ``index`` against every row, transposed: ``[len(index), n_rows]``."""


class MatrixScores:
    """A similarity matrix in memory or memory-mapped (``np.load(path, mmap_mode="r")``)."""

    def __init__(self, matrix: np.ndarray):
        if matrix.ndim != 2:
            raise ScoreError(f"similarity matrix must be 2-D [queries, videos], got shape {matrix.shape}")
        self.matrix = matrix
        self.n_rows, self.n_cols = matrix.shape

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.matrix[start:stop])

    def cols(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index)
        contiguous = len(index) and index[-1] - index[0] + 1 == len(index)
        picked = slice(index[0], index[-1] + 1) if contiguous else index
        out = np.empty((len(index), self.n_rows), dtype=self.matrix.dtype)
        for start in range(0, self.n_rows, 256):          # tiled transpose: cache-friendly, 4x faster
            out[:, start:start + 256] = self.matrix[start:start + 256, picked].T
        return out


class VectorScores:
    """Inner products of text vectors ``[Q, E]`` with video vectors ``[V, E]`` (single-vector model)."""

    def __init__(self, text: np.ndarray, video: np.ndarray):
        if text.ndim != 2 or video.ndim != 2 or text.shape[1] != video.shape[1]:
            raise ScoreError(f"text vectors {text.shape} and video vectors {video.shape} must be "
                             "[Q, E] and [V, E] with the same E")
        self.text = np.ascontiguousarray(text, dtype=np.float32)
        self.video = np.ascontiguousarray(video, dtype=np.float32)
        self.n_rows, self.n_cols = len(text), len(video)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.text[start:stop] @ self.video.T

    def cols(self, index: np.ndarray) -> np.ndarray:
        return self.video[index] @ self.text.T


class FunctionScores:
    """Scores from ``fn(q_idx, v_idx) -> [len(q_idx), len(v_idx)]``, e.g. ``EncodedSplit.score``."""

    def __init__(self, fn: Callable[[np.ndarray, np.ndarray], np.ndarray], n_rows: int, n_cols: int):
        self.fn, self.n_rows, self.n_cols = fn, n_rows, n_cols

    def rows(self, start: int, stop: int) -> np.ndarray:
        return np.asarray(self.fn(np.arange(start, stop), np.arange(self.n_cols)))

    def cols(self, index: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(np.arange(self.n_rows), np.asarray(index))).T


class DualSoftmaxScores:
    """Dual softmax post-processing: ``S * softmax(temperature * S, axis=queries)``.

    The default temperature 100 is CLIP's logit scale (scores are cosines; at 1 the softmax is
    nearly flat and the post-processing nearly a no-op).

    Transductive (each score depends on every query), so it is only ever a separate, labelled row.
    The per-column log-normaliser is computed once, streaming over row chunks.
    """

    def __init__(self, base: ScoreSource, temperature: float = 100.0, chunk_bytes: int = CHUNK_BYTES):
        self.base, self.temperature = base, float(temperature)
        self.n_rows, self.n_cols = base.n_rows, base.n_cols
        peak = np.full(self.n_cols, -np.inf)
        total = np.zeros(self.n_cols)
        step = _chunk_len(self.n_cols, chunk_bytes)
        for start in range(0, self.n_rows, step):
            block = _checked(base.rows(start, min(start + step, self.n_rows)), start, 0)
            logits = block.astype(np.float64) * self.temperature
            new_peak = np.maximum(peak, logits.max(axis=0))
            total = total * np.exp(peak - new_peak) + np.exp(logits - new_peak).sum(axis=0)
            peak = new_peak
        self.log_norm = peak + np.log(total)            # [V]

    def rows(self, start: int, stop: int) -> np.ndarray:
        block = self.base.rows(start, stop).astype(np.float64)
        return block * np.exp(block * self.temperature - self.log_norm)

    def cols(self, index: np.ndarray) -> np.ndarray:
        block = self.base.cols(index).astype(np.float64)
        return block * np.exp(block * self.temperature - self.log_norm[np.asarray(index)][:, None])


def as_source(scores) -> ScoreSource:
    """Accept a 2-D array or anything with ``rows``/``cols`` (a :class:`ScoreSource`)."""
    if isinstance(scores, np.ndarray):
        return MatrixScores(scores)
    if hasattr(scores, "rows") and hasattr(scores, "cols"):
        return scores
    raise ScoreError(f"cannot evaluate scores of type {type(scores).__name__}; "
                     "give a 2-D numpy array or a ScoreSource")


def _chunk_len(other_dim: int, chunk_bytes: int) -> int:
    """Rows (or columns) per chunk so that one float32 chunk plus its temporaries fit the budget."""
    return max(1, int(chunk_bytes // (max(other_dim, 1) * 4 * 4)))


def _checked(block: np.ndarray, rows: np.ndarray | int, cols: np.ndarray | int,
             transposed: bool = False) -> np.ndarray:
    """Refuse NaN / inf, naming the (row, column) of S of the first bad score.

    ``rows`` / ``cols`` are the block's first index (int) or its index array; ``transposed``
    means the block is ``[columns, rows]`` (a :meth:`ScoreSource.cols` chunk).
    """
    finite = np.isfinite(block)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        r, c = (j, i) if transposed else (i, j)
        row = int(rows[r]) if isinstance(rows, np.ndarray) else int(rows + r)
        col = int(cols[c]) if isinstance(cols, np.ndarray) else int(cols + c)
        raise ScoreError(f"similarity is {block[i, j]} (not finite) at row {row} (query), "
                         f"column {col} (video); NaN and infinite scores cannot be ranked")
    return block


# ---------------------------------------------------------------------------------------------
# Ranks from per-query counts
# ---------------------------------------------------------------------------------------------
@dataclass
class RankCounts:
    """Per query: ``better`` (g), wrong items ``tied`` with the best correct one (w), correct
    items at that score (``correct``, c >= 1). All ``[n_queries]`` int64."""

    better: np.ndarray
    tied: np.ndarray
    correct: np.ndarray

    def ranks(self) -> np.ndarray:
        """Averaged 1-based rank of the first correct item, ``[n]`` float64."""
        return 1.0 + self.better + self.tied / (self.correct + 1.0)

    def hit_rate(self, k: int) -> np.ndarray:
        """P(first correct item in the top ``k``) under random tie-breaking, ``[n]`` in [0, 1]."""
        slots = k - self.better                      # places left in the top k for the tied block
        miss = np.ones(len(slots))
        w, c = self.tied.astype(np.float64), self.correct.astype(np.float64)
        for i in range(max(0, int(slots.max(initial=0)))):
            factor = np.where(w - i > 0, (w - i) / np.maximum(c + w - i, 1.0), 0.0)
            miss = np.where(i < slots, miss * factor, miss)
        return np.where(slots <= 0, 0.0, 1.0 - miss)

    def summary(self, ks: Sequence[int] = KS) -> dict[str, float]:
        ranks = self.ranks()
        out = {f"R@{k}": float(100.0 * self.hit_rate(k).mean()) for k in ks}
        out["RSum"] = float(sum(100.0 * self.hit_rate(k).mean() for k in RSUM_KS))
        out["MdR"] = float(np.median(ranks))
        out["MnR"] = float(ranks.mean())
        return out


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------
@dataclass
class GroundTruth:
    """Which column each query row belongs to, and the caption groups for video-to-text."""

    query_col: np.ndarray      # [Q] column of each query's video
    order: np.ndarray          # [Q] rows sorted by group (stable)
    starts: np.ndarray         # [G] first position in ``order`` of each group
    group_cols: np.ndarray     # [G] column of each group's video (ascending)
    n_cols: int

    @classmethod
    def from_ids(cls, query_videos: Sequence[str], video_ids: Sequence[str]) -> "GroundTruth":
        column = {}
        for j, vid in enumerate(video_ids):
            if vid in column:
                raise ScoreError(f"video id {vid!r} appears twice in the column ids "
                                 f"(columns {column[vid]} and {j})")
            column[vid] = j
        query_col = np.empty(len(query_videos), dtype=np.int64)
        for i, vid in enumerate(query_videos):
            if vid not in column:
                raise ScoreError(f"query row {i} describes video {vid!r}, which is not among the "
                                 f"{len(column)} column (video) ids")
            query_col[i] = column[vid]
        if len(query_col) == 0:
            raise ScoreError("no queries to evaluate")
        order = np.argsort(query_col, kind="stable")
        sorted_cols = query_col[order]
        starts = np.flatnonzero(np.r_[True, sorted_cols[1:] != sorted_cols[:-1]])
        return cls(query_col, order, starts, sorted_cols[starts], len(video_ids))


def text_to_video_counts(source: ScoreSource, truth: GroundTruth,
                         chunk_bytes: int = CHUNK_BYTES) -> RankCounts:
    """Counts for every caption query against every video, in row chunks."""
    n = source.n_rows
    better, tied = np.empty(n, np.int64), np.empty(n, np.int64)
    step = _chunk_len(source.n_cols, chunk_bytes)
    for start in range(0, n, step):
        stop = min(start + step, n)
        block = _checked(source.rows(start, stop), start, 0)
        own = block[np.arange(stop - start), truth.query_col[start:stop]][:, None]
        better[start:stop] = np.count_nonzero(block > own, axis=1)
        tied[start:stop] = np.count_nonzero(block == own, axis=1) - 1
    return RankCounts(better, tied, np.ones(n, np.int64))


def video_to_text_counts(source: ScoreSource, truth: GroundTruth, protocols: Sequence[str],
                         chunk_bytes: int = CHUNK_BYTES) -> dict[str, RankCounts]:
    """Counts for every captioned video query under each protocol, in column chunks."""
    for p in protocols:
        if p not in V2T_PROTOCOLS:
            raise ScoreError(f"unknown video-to-text protocol {p!r}; choose from {V2T_PROTOCOLS}")
    n_groups = len(truth.group_cols)
    group_of_col = np.full(truth.n_cols, -1, np.int64)
    group_of_col[truth.group_cols] = np.arange(n_groups)
    sorted_rows = bool(np.all(truth.order == np.arange(len(truth.order))))
    singletons = n_groups == len(truth.order)
    counts = {p: [np.empty(n_groups, np.int64) for _ in range(3)] for p in protocols}
    step = _chunk_len(source.n_rows, chunk_bytes)
    for g0 in range(0, n_groups, step):
        g1 = min(g0 + step, n_groups)
        cols, local = truth.group_cols[g0:g1], np.arange(g1 - g0)
        block = _checked(source.cols(cols), 0, cols, transposed=True)            # [b, Q]
        by_group = block if sorted_rows else block[:, truth.order]
        group_max = by_group if singletons else np.maximum.reduceat(by_group, truth.starts, axis=1)
        own = group_max[local, group_of_col[cols]][:, None]                      # [b, 1]
        if "group-best" in counts:                                               # group_max: [b, G]
            g, w, c = counts["group-best"]
            g[g0:g1] = np.count_nonzero(group_max > own, axis=1)
            w[g0:g1] = np.count_nonzero(group_max == own, axis=1) - 1
            c[g0:g1] = 1
        if "all-captions" in counts:
            g, w, c = counts["all-captions"]
            equal = block == own
            rows_in = np.flatnonzero((truth.query_col >= cols[0]) & (truth.query_col <= cols[-1]))
            row_local = group_of_col[truth.query_col[rows_in]] - g0
            c[g0:g1] = np.bincount(row_local, weights=equal[row_local, rows_in], minlength=g1 - g0)
            g[g0:g1] = np.count_nonzero(block > own, axis=1)
            w[g0:g1] = np.count_nonzero(equal, axis=1) - c[g0:g1]
    return {p: RankCounts(*arrays) for p, arrays in counts.items()}


# ---------------------------------------------------------------------------------------------
# The one entry point
# ---------------------------------------------------------------------------------------------
def evaluate_scores(scores, query_videos: Sequence[str], video_ids: Sequence[str], *,
                    v2t_protocols: Sequence[str] = ("group-best",), ks: Sequence[int] = KS,
                    post_processing: str = "none", chunk_bytes: int = CHUNK_BYTES,
                    text_to_video: bool = True) -> dict:
    """Both directions, every metric, with the protocol named.

    ``scores``: ``[Q, V]`` array or :class:`ScoreSource`. Returns
    ``{"t2v": {"R@1","R@5","R@10","R@50","RSum","MdR","MnR"}, "v2t": {...}, "RSum", "protocol": {...}}``
    (R@K for every K of ``ks``, in %; RSum = R@1 + R@5 + R@10 per direction, the top-level one summing both;
    ranks 1-based); with several ``v2t_protocols`` the first is ``"v2t"`` and all are in
    ``"v2t_by_protocol"``. ``text_to_video=False`` leaves ``"t2v"`` as None (the caller ranks
    text-to-video another way, e.g. through a FAISS index).
    """
    source = as_source(scores)
    if source.n_rows != len(query_videos) or source.n_cols != len(video_ids):
        raise ScoreError(f"similarity is [{source.n_rows} x {source.n_cols}] but there are "
                         f"{len(query_videos)} query ids and {len(video_ids)} video ids")
    if not v2t_protocols:
        raise ScoreError("give at least one video-to-text protocol")
    truth = GroundTruth.from_ids(query_videos, video_ids)
    t2v = text_to_video_counts(source, truth, chunk_bytes) if text_to_video else None
    v2t = video_to_text_counts(source, truth, v2t_protocols, chunk_bytes)
    result = {
        "t2v": t2v.summary(ks) if t2v else None,
        "v2t": v2t[v2t_protocols[0]].summary(ks),
        "protocol": {
            "ties": TIES,
            "tie_rule": TIE_RULE,
            "t2v": "each caption is a query; gallery = every video",
            "v2t": v2t_protocols[0],
            "ranks": "1-based",
            "recall_unit": "%",
            "post_processing": post_processing,
            "n_queries_t2v": int(source.n_rows),
            "n_queries_v2t": int(len(truth.group_cols)),
            "n_videos": int(source.n_cols),
        },
    }
    if len(v2t_protocols) > 1:
        result["v2t_by_protocol"] = {p: v2t[p].summary(ks) for p in v2t_protocols}
    if result["t2v"]:
        result["RSum"] = result["t2v"]["RSum"] + result["v2t"]["RSum"]
        result["protocol"]["rsum"] = ("RSum per direction = R@1 + R@5 + R@10; top-level RSum = "
                                      "both directions summed")
    return result
