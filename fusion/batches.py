"""Padded model inputs built from ragged feature rows: the tensors every model reads.

- :class:`Ragged`: variable-length rows of one modality, ``flat`` ``[S, D]`` (S = sum of the row
  lengths T_i), ``offsets`` ``[R + 1]`` and ``times`` ``[S]`` (seconds from the video start; the
  position index for rows without timestamps, i.e. caption tokens); :meth:`Ragged.gather` picks
  positions of many rows in one vectorised ``index_select``.
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

from data.store import FeatureTable


@dataclass
class Ragged:
    """Variable-length rows: ``flat`` ``[S, D]``, ``offsets`` ``[R + 1]``, ``times`` ``[S]`` seconds."""

    flat: torch.Tensor
    offsets: torch.Tensor
    times: torch.Tensor

    @classmethod
    def from_table(cls, table: FeatureTable, time_offset_s: float = 0.0) -> "Ragged":
        flat = np.asarray(table.flat, np.float32)
        flat = torch.from_numpy(flat if flat.flags.writeable else flat.copy())
        offsets = torch.from_numpy(np.asarray(table.offsets, np.int64).copy())
        col = table.table.column("timestamps_s").combine_chunks()
        ts_offsets = col.offsets.to_numpy()
        ts = col.values.to_numpy(zero_copy_only=False)[ts_offsets[0]: ts_offsets[-1]]
        if len(ts) == len(flat) and np.array_equal(np.diff(ts_offsets), np.diff(table.offsets)):
            times = torch.from_numpy(ts.astype(np.float32) + np.float32(time_offset_s))
        else:  # rows without timestamps (text): position index
            starts = np.repeat(table.offsets[:-1], np.diff(table.offsets))
            times = torch.from_numpy((np.arange(len(flat)) - starts).astype(np.float32))
        return cls(flat, offsets, times)

    @classmethod
    def from_arrays(cls, rows: list[np.ndarray], times: list[np.ndarray] | None = None) -> "Ragged":
        """From per-row ``[T_i, D]`` arrays (tests and the benchmark)."""
        lengths = [len(r) for r in rows]
        offsets = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int64)
        flat = torch.from_numpy(np.concatenate(rows).astype(np.float32))
        if times is None:
            times = [np.arange(n, dtype=np.float32) for n in lengths]
        return cls(flat, offsets, torch.from_numpy(np.concatenate(times).astype(np.float32)))

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def gather(self, rows: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Values ``[B, T, D]`` and times ``[B, T]`` at within-row ``positions`` ``[B, T]`` (zeros where ~mask)."""
        idx = torch.where(mask, self.offsets[rows][:, None] + positions, 0).reshape(-1)
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
