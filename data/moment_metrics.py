"""Moment retrieval metrics, in seconds (docs/methods.md §7; pure numpy).

Two tasks, one query per caption that has a window (:mod:`data.windows`):

- **SVMR** (single-video moment retrieval): the query's own video is given; the model ranks
  candidate windows ``[P, 2]`` by score. ``R{k}@{t}`` (%) = share of queries with a window of
  IoU >= t among the top k; ``mIoU`` (%) = mean IoU of the top-1 window.
- **VCMR** (video-corpus moment retrieval, the TVR protocol): the model ranks (video, window)
  pairs of the whole corpus together; a hit needs the right video AND IoU >= t.
  ``R{k}@{t}`` for k in 1, 10, 100 and t in 0.5, 0.7.

Rules (the evaluation contract):

- **IoU** of windows ``[s1, e1]`` and ``[s2, e2]`` = overlap / union in seconds, union =
  ``(e1 - s1) + (e2 - s2) - overlap``; 0 when the union is empty. A predicted window reaching past
  the video's end is counted as is (not clipped: the metric knows no durations), so the part past
  the end lies outside every ground-truth window and lowers the IoU.
- **Several annotators** (DiDeMo): a window's IoU with a query whose ground truth has ``A``
  annotator windows is the mean of its ``min(3, A)`` largest IoUs with them (:func:`consensus_iou`):
  the rule of DiDeMo's evaluation (Hendricks et al., 2017), which averages the top three of the
  (usually four) annotators' IoUs, i.e. drops the one that disagrees most. With one window it is
  the plain IoU. ``mIoU`` on DiDeMo is therefore the published mIoU; the thresholds apply to the
  same consensus IoU (DiDeMo's own Rank@1 / Rank@5, exact matches among its 21 fixed candidate
  moments, are not computed here).
- **Thresholds**: a window counts at threshold ``t`` when its IoU >= ``t - 1e-9``
  (:data:`IOU_EPS`), so a window exactly at the edge counts despite rounding in seconds arithmetic.
- **Ties** are averaged as in :mod:`data.metrics`: with ``g`` candidates scored above the best
  hit, ``w`` misses and ``c`` hits tied with it, a query's ``R{k}`` is the probability that a hit
  lands in the top k under uniformly random tie-breaking (:meth:`data.metrics.RankCounts.hit_rate`);
  ``mIoU`` takes the mean IoU of the windows tied at the top score. The rows' order in a
  prediction array plays no part: scores alone rank.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data.metrics import RankCounts

IOU_EPS = 1e-9
ANNOTATORS_KEPT = 3                                  # DiDeMo: mean of the three largest IoUs
SVMR_KS, SVMR_IOUS = (1, 5), (0.3, 0.5, 0.7)
VCMR_KS, VCMR_IOUS = (1, 10, 100), (0.5, 0.7)


class MomentError(ValueError):
    """Windows, scores or ground truth that cannot be evaluated (shapes, NaN, end before start)."""


def _windows(value, what: str, *, truth: bool = False) -> np.ndarray:
    """``value`` as float64 ``[..., 2]`` with finite bounds and ``end >= start`` (``end > start``
    for ground ``truth``)."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim < 1 or arr.shape[-1] != 2:
        raise MomentError(f"{what}: expected windows of shape [..., 2] (start, end in seconds), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise MomentError(f"{what}: windows must be finite seconds")
    length = arr[..., 1] - arr[..., 0]
    if (length < 0).any() or (truth and (length == 0).any()):
        raise MomentError(f"{what}: a window ends before it starts" + (" or has no length" if truth else ""))
    return arr


def temporal_iou(pred, gt) -> np.ndarray:
    """IoU of ``pred [N, 2]`` with ``gt [N, 2]`` (row by row: ``[N]``) or with each of ``gt [N, M, 2]``
    (``[N, M]``); windows in seconds, counted as given (no clipping to a duration)."""
    pred = _windows(pred, "predicted windows")
    gt = _windows(gt, "ground-truth windows")
    if pred.ndim != 2 or gt.ndim not in (2, 3) or gt.shape[0] != pred.shape[0]:
        raise MomentError(f"temporal_iou takes pred [N, 2] and gt [N, 2] or [N, M, 2], got {pred.shape} and {gt.shape}")
    if gt.ndim == 3:
        pred = pred[:, None, :]
    overlap = np.clip(np.minimum(pred[..., 1], gt[..., 1]) - np.maximum(pred[..., 0], gt[..., 0]), 0.0, None)
    union = (pred[..., 1] - pred[..., 0]) + (gt[..., 1] - gt[..., 0]) - overlap
    return np.divide(overlap, union, out=np.zeros_like(union), where=union > 0)


def consensus_iou(ious: np.ndarray, kept: int = ANNOTATORS_KEPT) -> np.ndarray:
    """``[N, A]`` IoUs with A annotator windows -> ``[N]``: the mean of each row's ``min(kept, A)``
    largest (DiDeMo's rule; the plain IoU when A = 1)."""
    top = np.sort(ious, axis=1)[:, -kept:]
    return top.mean(axis=1)


def _window_ious(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Consensus IoU of each of ``pred [P, 2]`` with the annotator windows ``gt [A, 2]``: ``[P]``."""
    if len(pred) == 0:
        return np.zeros(0)
    return consensus_iou(temporal_iou(pred, np.broadcast_to(gt, (len(pred), *gt.shape))))


def _query(q: int, pred, score, gt) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked ``pred [P, 2]``, ``score [P]`` and ``gt [A, 2]`` of query ``q``."""
    pred = _windows(pred, f"query {q}: predicted windows").reshape(-1, 2)
    score = np.asarray(score, dtype=np.float64)
    gt = _windows(gt, f"query {q}: ground-truth windows", truth=True).reshape(-1, 2)
    if score.shape != (len(pred),):
        raise MomentError(f"query {q}: {len(pred)} windows but scores of shape {score.shape}")
    if not np.isfinite(score).all():
        raise MomentError(f"query {q}: scores must be finite (NaN and infinite scores cannot be ranked)")
    if len(gt) == 0:
        raise MomentError(f"query {q}: no ground-truth window")
    return pred, score, gt


def _counts(score: np.ndarray, hit: np.ndarray) -> tuple[int, int, int]:
    """(g, w, c) of one query: candidates above the best-scored hit, misses and hits tied with it
    (``c = 0``: no hit at all)."""
    if not hit.any():
        return 0, 0, 0
    best = score[hit].max()
    tied = score == best
    return int((score > best).sum()), int((tied & ~hit).sum()), int((tied & hit).sum())


def _recalls(scores: list[np.ndarray], window_ious: list[np.ndarray], ks: Sequence[int],
             ious: Sequence[float]) -> dict[str, float]:
    """``{"R{k}@{t}": %}`` over queries, each given its scores ``[P]`` and window IoUs ``[P]``."""
    out = {}
    for t in ious:
        hits = [iou >= t - IOU_EPS for iou in window_ious]
        g, w, c = (np.array(col, dtype=np.int64) for col in zip(*map(_counts, scores, hits)))
        counts = RankCounts(g, w, np.maximum(c, 1))
        out.update({f"R{k}@{t:g}": float(100.0 * np.where(c > 0, counts.hit_rate(k), 0.0).mean()) for k in ks})
    return {f"R{k}@{t:g}": out[f"R{k}@{t:g}"] for k in ks for t in ious}


def _check_inputs(ks: Sequence[int], ious: Sequence[float], **lists) -> None:
    """One entry per query in each of ``lists``; ks >= 1 whole numbers; thresholds in (0, 1]."""
    lengths = {name: len(v) for name, v in lists.items()}
    if len(set(lengths.values())) != 1 or not next(iter(lengths.values())):
        raise MomentError(f"one entry per query expected in each of {lengths}; no queries or different lengths")
    if not all(isinstance(k, int) and k >= 1 for k in ks) or not all(0 < t <= 1 for t in ious):
        raise MomentError(f"ks must be whole numbers >= 1 and IoU thresholds in (0, 1]; got {ks} and {ious}")


def svmr_metrics(predictions: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                 ground_truth: Sequence[np.ndarray], ks: Sequence[int] = SVMR_KS,
                 ious: Sequence[float] = SVMR_IOUS) -> dict[str, float]:
    """Single-video moment retrieval over Q queries.

    ``predictions[q]`` ``[P_q, 2]`` candidate windows (s) in the query's video, ``scores[q]``
    ``[P_q]`` their scores (higher first; P_q may be 0: no hit), ``ground_truth[q]`` ``[A_q, 2]``
    the annotators' windows. Returns ``{"R1@0.3": ..., "R5@0.7": ..., "mIoU": ...}`` in percent.
    """
    _check_inputs(ks, ious, predictions=predictions, scores=scores, ground_truth=ground_truth)
    checked = [_query(q, *row) for q, row in enumerate(zip(predictions, scores, ground_truth))]
    window_ious = [_window_ious(pred, gt) for pred, _, gt in checked]
    all_scores = [score for _, score, _ in checked]
    top = [iou[score == score.max()].mean() if len(score) else 0.0 for iou, score in zip(window_ious, all_scores)]
    return {**_recalls(all_scores, window_ious, ks, ious), "mIoU": float(100.0 * np.mean(top))}


def vcmr_metrics(predictions: Sequence[np.ndarray], pred_videos: Sequence[Sequence[str]],
                 scores: Sequence[np.ndarray], ground_truth: Sequence[np.ndarray], gt_videos: Sequence[str],
                 ks: Sequence[int] = VCMR_KS, ious: Sequence[float] = VCMR_IOUS) -> dict[str, float]:
    """Video-corpus moment retrieval over Q queries (TVR protocol).

    ``predictions[q]`` ``[P_q, 2]`` windows (s) ranked together across the corpus,
    ``pred_videos[q]`` ``[P_q]`` the video of each, ``scores[q]`` ``[P_q]`` their scores;
    ``ground_truth[q]`` ``[A_q, 2]`` the annotators' windows in the query's video ``gt_videos[q]``.
    A candidate is a hit when its video is ``gt_videos[q]`` and its IoU >= t. Returns
    ``{"R1@0.5": ..., "R100@0.7": ...}`` in percent.
    """
    _check_inputs(ks, ious, predictions=predictions, pred_videos=pred_videos, scores=scores,
                  ground_truth=ground_truth, gt_videos=gt_videos)
    all_scores, window_ious = [], []
    for q, (pred, videos, score, gt, video) in enumerate(zip(predictions, pred_videos, scores, ground_truth,
                                                             gt_videos)):
        pred, score, gt = _query(q, pred, score, gt)
        videos = np.asarray(videos, dtype=object)
        if videos.shape != (len(pred),):
            raise MomentError(f"query {q}: {len(pred)} windows but videos of shape {videos.shape}")
        right = videos == video
        iou = np.zeros(len(pred))
        iou[right] = _window_ious(pred[right], gt)
        all_scores.append(score)
        window_ious.append(iou)
    return _recalls(all_scores, window_ious, ks, ious)
