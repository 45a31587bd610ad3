"""Contrastive losses on a text x video score matrix.

A training batch holds B captions and the V <= B distinct videos they describe (a video drawn twice
is encoded once), so the targets are a boolean ``positives`` matrix ``[B, V]``: plain InfoNCE when
every video has one caption in the batch, multi-positive otherwise (and for HCMI's mined labels).
"""
from __future__ import annotations

import torch


def _multi_positive_ce(logits: torch.Tensor, positives: torch.Tensor, rows: torch.Tensor,
                       cols: torch.Tensor) -> torch.Tensor:
    """Mean over valid rows of ``-log(sum_pos exp S / sum_valid exp S)``; ``logits`` ``[R, C]``."""
    neg_inf = torch.finfo(logits.dtype).min
    positives = positives & cols[None, :]
    rows = rows & positives.any(1)
    if not rows.any():
        return (logits * 0.0).sum()   # nothing to learn from; keeps the graph connected
    logits = logits.masked_fill(~cols[None, :], neg_inf)
    denom = torch.logsumexp(logits, 1)
    numer = torch.logsumexp(logits.masked_fill(~positives, neg_inf), 1)
    return (denom - numer)[rows].mean()


def info_nce(scores: torch.Tensor, positives: torch.Tensor, text_valid: torch.Tensor | None = None,
             video_valid: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric (multi-positive) InfoNCE ``1/2 [CE(S) + CE(S^T)]`` on logits ``scores`` ``[B, V]``.

    ``text_valid`` ``[B]`` / ``video_valid`` ``[V]`` drop rows and columns (e.g. videos without the
    branch's modality, and the captions of those videos).
    """
    scores = scores.float()      # under autocast the logits may be bf16 / fp16: the softmax runs in fp32
    b, v = scores.shape
    tv = torch.ones(b, dtype=torch.bool, device=scores.device) if text_valid is None else text_valid
    vv = torch.ones(v, dtype=torch.bool, device=scores.device) if video_valid is None else video_valid
    t2v = _multi_positive_ce(scores, positives, tv, vv)
    v2t = _multi_positive_ce(scores.t(), positives.t(), vv, tv)
    return (t2v + v2t) / 2


def hardest_negative_triplet(cosines: torch.Tensor, positives: torch.Tensor, pair_video: torch.Tensor,
                             margin: float) -> torch.Tensor:
    """Symmetric margin loss on the hardest in-batch negatives (positives excluded).

    ``cosines`` ``[B, V]`` on the cosine scale, ``pair_video`` ``[B]`` the video of each caption.
    For each pair (i, v(i)): ``relu(m - c(i, v(i)) + max_j c(i, j)) + relu(m - c(i, v(i)) + max_k c(k, v(i)))``
    with j over videos and k over captions that are not positives.
    """
    low = torch.finfo(cosines.dtype).min
    rows = torch.arange(len(pair_video), device=cosines.device)
    pos = cosines[rows, pair_video]
    hardest_video = cosines.masked_fill(positives, low).max(1).values
    col_neg = cosines.masked_fill(positives, low)[:, pair_video]      # [B(k), B(i)]
    hardest_text = col_neg.max(0).values
    has_video_neg = (~positives).any(1)
    has_text_neg = (~positives[:, pair_video]).any(0)
    loss_t = torch.relu(margin - pos + hardest_video) * has_video_neg
    loss_v = torch.relu(margin - pos + hardest_text) * has_text_neg
    return (loss_t + loss_v).mean()
