"""Building blocks shared by every model: masked pooling, the seqTransf temporal transformer,
time resampling of audio / motion onto frames, and the contrastive score scale."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def l2norm(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-6)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` ``[B, N, D]`` over the True steps of ``mask`` ``[B, N]`` -> ``[B, D]``."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1.0)


def identity_linear(dim_in: int, dim_out: int | None = None) -> nn.Linear:
    """A Linear initialised to the identity (or its top-left block), so training starts at the input."""
    layer = nn.Linear(dim_in, dim_out or dim_in)
    with torch.no_grad():
        layer.weight.zero_()
        n = min(layer.weight.shape)
        layer.weight[:n, :n] = torch.eye(n)
        layer.bias.zero_()
    return layer


def encoder(width: int, layers: int, heads: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-LN transformer encoder (batch first); padding is passed as ``src_key_padding_mask``."""
    layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class TemporalTransformer(nn.Module):
    """seqTransf: ``out = T(x + pos) + x`` over ``[B, N, D]`` with learned positions (CLIP4Clip).

    ``layers = 0`` returns ``x`` unchanged (meanP). Padded steps never influence real ones.
    """

    def __init__(self, width: int, layers: int, heads: int, dropout: float, max_len: int = 512):
        super().__init__()
        self.layers = layers
        if layers:
            self.pos = nn.Parameter(torch.randn(max_len, width) * 0.01)
            self.transformer = encoder(width, layers, heads, dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.layers:
            return x
        if x.shape[1] > self.pos.shape[0]:
            raise ValueError(f"{x.shape[1]} steps exceed the {self.pos.shape[0]} learned positions")
        safe = safe_mask(mask)
        out = self.transformer(x + self.pos[: x.shape[1]], src_key_padding_mask=~safe) + x
        return out * mask[..., None]


def safe_mask(mask: torch.Tensor) -> torch.Tensor:
    """Rows with no real step get their first step unmasked (their output is zeroed afterwards)."""
    empty = ~mask.any(1)
    if empty.any():
        mask = mask.clone()
        mask[empty, 0] = True
    return mask


class QueryTower(nn.Module):
    """Caption tokens ``[Q, L, D]`` -> optional residual transformer (``T(x) + x``) -> EOT read-out ``[Q, D]``."""

    def __init__(self, width: int, layers: int, heads: int, dropout: float):
        super().__init__()
        self.transformer = encoder(width, layers, heads, dropout) if layers else None

    def tokens(self, text) -> torch.Tensor:
        """Contextualised tokens ``[Q, L, D]`` (padding zeroed)."""
        tokens = text.tokens
        if self.transformer is not None:
            tokens = self.transformer(tokens, src_key_padding_mask=~safe_mask(text.token_mask)) + tokens
        return tokens * text.token_mask[..., None]

    def forward(self, text) -> torch.Tensor:
        tokens = self.tokens(text)
        return tokens[torch.arange(len(text.eot), device=tokens.device), text.eot]


class Scale(nn.Module):
    """``1 / tau``: fixed, or learnable as ``exp(s)`` with ``s`` clamped to ``[0, log(100)]`` in place
    after every optimiser step (:meth:`clamp_`, as CLIP does), so the gradient always reaches ``s``."""

    MAX = math.log(100.0)

    def __init__(self, temperature: float, learnable: bool):
        super().__init__()
        value = torch.tensor(min(math.log(1.0 / temperature), self.MAX))
        if learnable:
            self.log_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_scale", value)

    def forward(self) -> torch.Tensor:
        return self.log_scale.exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        self.log_scale.clamp_(0.0, self.MAX)


def interval_weights(frame_t: torch.Tensor, frame_mask: torch.Tensor, src_t: torch.Tensor,
                     src_mask: torch.Tensor) -> torch.Tensor:
    """Averaging weights ``[B, N, S]`` that resample sources (audio windows, motion clips) onto frames.

    Frame ``i`` owns the interval between the midpoints to its neighbours (first and last intervals
    open-ended); it averages the sources whose time falls inside, or takes the nearest source when
    none does. Rows of padded frames, or of videos without sources, are all zero.
    """
    big = torch.finfo(frame_t.dtype).max / 4
    t = torch.where(frame_mask, frame_t, torch.full_like(frame_t, big))
    mid = (t[:, 1:] + t[:, :-1]) / 2  # next to a padded frame this is >= big / 2: open-ended
    lo = torch.cat([torch.full_like(t[:, :1], -big), mid], 1)
    hi = torch.cat([mid, torch.full_like(t[:, :1], big)], 1)
    s = src_t[:, None, :]
    inside = (s >= lo[..., None]) & (s < hi[..., None]) & src_mask[:, None, :]
    dist = (s - t[..., None]).abs().masked_fill(~src_mask[:, None, :], big)
    nearest = F.one_hot(dist.argmin(-1), src_t.shape[1]).bool() & src_mask[:, None, :]
    chosen = torch.where(inside.any(-1, keepdim=True), inside, nearest) & frame_mask[..., None]
    w = chosen.to(frame_t.dtype)
    return w / w.sum(-1, keepdim=True).clamp(min=1.0)
