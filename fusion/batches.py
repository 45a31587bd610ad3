"""Padded model inputs built from ragged feature rows: the tensors every model reads.

- :class:`Ragged`: variable-length rows of one modality over one flat array ``flat`` ``[S, D]``
  (in memory, or memory-mapped by :mod:`fusion.featurecache`) with ``times`` ``[S]`` (seconds from
  the video start; the position index for rows without timestamps, i.e. caption tokens): row ``i``
  is ``flat[starts[i]: starts[i] + lengths[i]]``, so choosing rows (:meth:`Ragged.select`) copies
  no values; :meth:`Ragged.gather` picks positions of many rows in one vectorised ``index_select``,
  and only those steps are read.
- :class:`VideoBatch`: frames ``[B, N, D]`` + mask ``[B, N]`` + times ``[B, N]`` (s); audio
  ``[B, Na, 128]`` and motion ``[B, Nm, 2304]``, each + mask + times, and ``has_audio`` /
  ``has_motion`` ``[B]`` (None when the model reads no such modality).
- :class:`TextBatch`: caption tokens ``[Q, L, D]`` + mask ``[Q, L]`` + end-of-text index ``eot`` ``[Q]``;
  :func:`truncate_tokens` keeps a long caption's first ``L - 1`` tokens and its EOT.

Masks are True on real steps; padded values and times are 0.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch


@dataclass
class Ragged:
    """Variable-length rows over ``flat`` ``[S, D]`` and ``times`` ``[S]`` (seconds): row ``i`` is
    ``flat[starts[i]: starts[i] + lengths[i]]`` (``starts`` / ``lengths`` ``[R]`` int64)."""

    flat: torch.Tensor
    times: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_offsets(cls, flat: torch.Tensor, offsets: torch.Tensor, times: torch.Tensor) -> "Ragged":
        """Rows stored one after the other: row ``i`` = ``flat[offsets[i]: offsets[i + 1]]``."""
        offsets = torch.as_tensor(offsets, dtype=torch.int64)
        return cls(flat, times, offsets[:-1], offsets[1:] - offsets[:-1])

    @classmethod
    def from_arrays(cls, rows: list[np.ndarray], times: list[np.ndarray] | None = None) -> "Ragged":
        """From per-row ``[T_i, D]`` arrays (tests and the benchmark)."""
        lengths = [len(r) for r in rows]
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64)
        flat = torch.from_numpy(np.concatenate(rows).astype(np.float32))
        if times is None:
            times = [np.arange(n, dtype=np.float32) for n in lengths]
        return cls.from_offsets(flat, offsets, torch.from_numpy(np.concatenate(times).astype(np.float32)))

    def select(self, rows: torch.Tensor) -> "Ragged":
        """Rows ``rows`` (row ``-1``: an empty row) over the same ``flat`` / ``times``; copies no values."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        if len(self.lengths) == 0:
            return Ragged(self.flat, self.times, torch.zeros_like(rows), torch.zeros_like(rows))
        safe = rows.clamp(min=0)
        present = rows >= 0
        return Ragged(self.flat, self.times, torch.where(present, self.starts[safe], 0),
                      torch.where(present, self.lengths[safe], 0))

    def row(self, i: int) -> torch.Tensor:
        """``[T_i, D]`` values of row ``i``."""
        start = int(self.starts[i])
        return self.flat[start: start + int(self.lengths[i])]

    def gather(self, rows: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Values ``[B, T, D]`` and times ``[B, T]`` at within-row ``positions`` ``[B, T]`` (zeros where ~mask)."""
        idx = torch.where(mask, self.starts[rows][:, None] + positions, 0).reshape(-1)
        values = torch.index_select(self.flat, 0, idx).view(*mask.shape, -1)
        values.masked_fill_(~mask[..., None], 0.0)
        return values, torch.index_select(self.times, 0, idx).view(mask.shape).masked_fill_(~mask, 0.0)

    def pad(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Whole rows, padded to the longest: values ``[B, T, D]``, mask ``[B, T]``, times ``[B, T]``."""
        lengths = self.lengths[rows]
        t = max(int(lengths.max()) if len(rows) else 0, 1)
        positions = torch.arange(t)[None].expand(len(rows), t)
        mask = positions < lengths[:, None]
        values, times = self.gather(rows, positions, mask)
        return values, mask, times


@dataclass
class VideoBatch:
    """Padded video inputs. Masks are True on real steps; times in seconds from the video start."""

    frames: torch.Tensor                 # [B, N, D]
    frame_mask: torch.Tensor             # [B, N] bool
    frame_t: torch.Tensor                # [B, N]
    audio: torch.Tensor | None = None    # [B, Na, 128]
    audio_mask: torch.Tensor | None = None
    audio_t: torch.Tensor | None = None
    has_audio: torch.Tensor | None = None  # [B] bool
    motion: torch.Tensor | None = None   # [B, Nm, 2304]
    motion_mask: torch.Tensor | None = None
    motion_t: torch.Tensor | None = None
    has_motion: torch.Tensor | None = None  # [B] bool

    def to(self, device) -> "VideoBatch":
        return replace(self, **{f.name: getattr(self, f.name).to(device) for f in fields(self)
                                if getattr(self, f.name) is not None})


@dataclass
class TextBatch:
    """Padded caption tokens ``[Q, L, D]``, mask ``[Q, L]`` and end-of-text index ``[Q]``."""

    tokens: torch.Tensor
    token_mask: torch.Tensor
    eot: torch.Tensor

    def to(self, device) -> "TextBatch":
        return TextBatch(self.tokens.to(device), self.token_mask.to(device), self.eot.to(device))

    def sentence(self) -> torch.Tensor:
        """The EOT token embedding ``[Q, D]`` (CLIP's sentence embedding)."""
        return self.tokens[torch.arange(len(self.eot), device=self.eot.device), self.eot]


def truncate_tokens(text: Ragged, rows: torch.Tensor, eot: torch.Tensor, max_words: int) -> TextBatch:
    """Padded tokens of ``rows``; captions over ``max_words`` keep tokens ``0..L-2`` and their EOT."""
    lengths = text.lengths[rows]
    width = max(1, min(max_words, int(lengths.max()) if len(rows) else 1))
    positions = torch.arange(width)[None].repeat(len(rows), 1)
    long = lengths > width
    positions[long, width - 1] = eot[long]
    mask = positions < lengths[:, None]
    tokens, _ = text.gather(rows, positions, mask)
    return TextBatch(tokens, mask, torch.clamp(eot, max=width - 1))
