"""Frame sampling: which stored frames of each video fill the ``N = max_frames`` slots of a batch.

Every function takes the videos' frame counts ``lengths`` ``[R]`` and returns within-video
``positions`` ``[R, N]`` (int64) and a ``mask`` ``[R, N]`` (True on used slots):

- :func:`uniform_positions`: ``round(linspace(0, len - 1, N))`` (every frame when ``len <= N``),
  the sampling of evaluation and of every model but HCMI in training (docs/methods.md §1);
- :func:`segment_positions`: HCMI's training sampling: each video split into ``min(N, len)``
  segments, one random frame from each;
- :func:`other_view`: HCMI's second view for label denoising, different from the first for every
  video of two or more frames.
"""
from __future__ import annotations

import torch


def uniform_positions(lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``round(linspace(0, len-1, n))`` per row (all steps when shorter): positions, mask ``[R, n]``."""
    lengths = lengths.to(torch.float64)
    frac = torch.linspace(0, 1, n, dtype=torch.float64)[None]
    short = lengths[:, None] <= n
    spread = torch.round(frac * (lengths[:, None] - 1).clamp(min=0)).long()
    ordinal = torch.arange(n)[None].expand_as(spread)
    positions = torch.where(short, ordinal, spread)
    mask = torch.where(short, ordinal < lengths[:, None], torch.ones_like(short))
    return positions, mask


def _segments(lengths: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HCMI segments: each row split into ``min(n, len)`` parts; ``lo`` / ``hi`` ``[R, n]`` (float64,
    half-open frame ranges) and the mask of the slots that hold a segment."""
    lengths = lengths.to(torch.float64)
    segments = torch.minimum(lengths, torch.full_like(lengths, n)).clamp(min=1)
    k = torch.arange(n, dtype=torch.float64)[None]
    lo = torch.floor(k * lengths[:, None] / segments[:, None])
    hi = torch.floor((k + 1) * lengths[:, None] / segments[:, None])
    return lo, hi, k < torch.minimum(segments, lengths)[:, None]


def segment_positions(lengths: torch.Tensor, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """HCMI view sampling: split each row into ``min(n, len)`` segments, one random step in each."""
    lo, hi, mask = _segments(lengths, n)
    u = torch.rand(lo.shape, generator=generator, dtype=torch.float64)
    positions = (lo + torch.floor(u * (hi - lo).clamp(min=1))).long()
    return torch.where(mask, positions, torch.zeros_like(positions)), mask


def other_view(lengths: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, n: int,
               generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A second view ``[R, n]`` that differs from ``positions`` / ``mask`` for every row of 2+ frames.

    Every segment holding two or more frames takes another of its frames (uniformly among the
    others); a row of at most ``n`` frames (one frame per segment, so nothing to move) leaves one
    random frame out instead, keeping the others at their slots. A 1-frame row keeps its only view.
    """
    lo, hi, _ = _segments(lengths, n)
    width = (hi - lo).long()
    lo = lo.long()
    u = torch.rand(lo.shape, generator=generator, dtype=torch.float64)
    pick = lo + torch.floor(u * (width - 1).clamp(min=0)).long()
    pick = pick + ((pick >= positions) & (positions >= lo) & (positions < lo + width)).long()
    moved = torch.where(mask & (width >= 2), pick, positions)
    short = (lengths >= 2) & (lengths <= n)
    drop = torch.floor(torch.rand(len(lengths), generator=generator, dtype=torch.float64)
                       * lengths.to(torch.float64)).long()
    keep = mask & ~(short[:, None] & (torch.arange(n)[None] == drop[:, None]))
    return torch.where(keep, moved, torch.zeros_like(moved)), keep
