"""The moment head: where in a video a query happens, on the time grid of :mod:`fusion.moments.grid`
(docs/methods.md §8). Shapes: B videos of K steps, N (query, video) pairs, D the clip_text width,
W = ``moments.width``, C = ``moments.channels``.

- **Steps** (query-independent, computed once per video): each modality on the grid (frames
  ``[B, K, D]``, audio ``[B, K, 128]``, motion ``[B, K, 2304]``) is standardised per dimension with
  the training videos' statistics, projected ``Linear(C_m, W)`` + LayerNorm and added where the
  video has it: the local step embeddings ``x [B, K, W]``. ``layers`` pre-LN residual dilated
  convolutions (kernel 3, dilations 1, 2, 4, ...) over ``x`` give the context encodings ``h``.
- **Window match**: unit step vectors ``z = l2norm(Linear(x))`` (local: a step's content, not its
  neighbours'), a window's vector is ``l2norm(sum_{k in window} z_k)`` and the query's
  ``m = l2norm(Linear(q))`` from the unit clip_text EOT embedding ``q [N, D]`` (the ranking models'
  text tower). ``cos(m, window) / temperature`` is trained as a logit against the batch's other
  windows (of the same and of other videos), so it ranks windows across videos.
- **Start / end detector** (XML / ReLoCLNet style, over per-step query similarity): the profile
  ``cos(m, z_k) / temperature`` (``Linear(1, C)``) plus query-free boundary evidence
  ``Linear(W, C)(h_k)``, two residual convolutions over the steps (C channels, dilations 1, 2),
  ``Linear(C, 2)``: start / end logits ``[N, K, 2]`` (padded steps at the dtype's minimum). Trained
  with cross-entropy against a Gaussian around the true start / end step (``boundary_sigma_s``).
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import nn

from fusion.layers import l2norm
from fusion.losses import info_nce
from fusion.moments.grid import GridBatch

DETECTOR_DILATIONS = (1, 2)
_threads = {"lock": threading.Lock(), "depth": 0, "saved": 1}


@contextlib.contextmanager
def one_thread():
    """Run torch's CPU ops on one thread meanwhile (nested and concurrent uses share one count; the
    previous setting comes back when the last one ends). The head's tensors are small: on the shared
    2-core machine, two threads waiting for each other made training steps and :meth:`moments`
    calls about 10x slower than one thread, and one thread makes CPU results independent of the
    machine's core count."""
    with _threads["lock"]:
        if _threads["depth"] == 0:
            _threads["saved"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads["depth"] += 1
    try:
        yield
    finally:
        with _threads["lock"]:
            _threads["depth"] -= 1
            if _threads["depth"] == 0:
                torch.set_num_threads(_threads["saved"])


class TemporalBlock(nn.Module):
    """Pre-LN residual 1-D convolution over steps: ``x + Dropout(Conv(GELU(LN(x))))`` on ``[B, K, W]``;
    padded steps are zeroed before the convolution and in the output, so a video's encoding does not
    depend on how far its batch is padded."""

    def __init__(self, width: int, dilation: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, 3, padding=dilation, dilation=dilation)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask[..., None].to(x.dtype)
        h = self.conv((F.gelu(self.norm(x)) * keep).transpose(1, 2)).transpose(1, 2)
        return (x + self.drop(h)) * keep


class MomentHead(nn.Module):
    """Built from ``meta``: ``dims`` (modality -> input width, frames included), ``text_dim`` (D) and
    ``config`` (the ``moments:`` section); other keys of ``meta`` (extractor-ids, windows trained on,
    the RANDOM WEIGHTS warning) are kept verbatim for the run folder."""

    def __init__(self, meta: dict):
        super().__init__()
        self.meta = meta
        cfg = meta["config"]
        width, channels = cfg["width"], cfg["channels"]
        self.modalities = tuple(m for m in meta["dims"] if m != "clip_frames")   # read beside the frames
        self.temperature = float(cfg["temperature"])
        self.inputs = nn.ModuleDict({m: nn.Sequential(nn.Linear(c, width), nn.LayerNorm(width))
                                     for m, c in meta["dims"].items()})
        for m, c in meta["dims"].items():
            self.register_buffer(f"mean_{m}", torch.zeros(c))
            self.register_buffer(f"std_{m}", torch.ones(c))
        self.blocks = nn.ModuleList(TemporalBlock(width, 2 ** i, cfg["dropout"]) for i in range(cfg["layers"]))
        self.match_step = nn.Linear(width, width)
        self.match_text = nn.Linear(meta["text_dim"], width)
        self.detect_sim = nn.Linear(1, channels)
        self.detect_step = nn.Linear(width, channels)
        self.detector = nn.ModuleList(TemporalBlock(channels, d, cfg["dropout"]) for d in DETECTOR_DILATIONS)
        self.detect_out = nn.Linear(channels, 2)

    def fit_input_statistics(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Standardise each modality with the training videos' ``(mean [C], std [C])`` (frames: of
        the unit frame vectors); the std is floored at 1% of its median, as M2HF's
        ``source_norm: train-zscore``."""
        for m, (mean, std) in stats.items():
            if m in self.inputs:
                getattr(self, f"mean_{m}").copy_(mean)
                getattr(self, f"std_{m}").copy_(std.clamp(min=0.01 * float(std.median()) + 1e-12))

    # ---- steps ---------------------------------------------------------------------------------
    def encode_steps(self, grid: GridBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Local step embeddings ``x`` and context encodings ``h``, both ``[B, K, W]`` (zero on
        padded steps)."""
        x = 0.0
        for m, layer in self.inputs.items():
            values = (grid.inputs[m] - getattr(self, f"mean_{m}")) / getattr(self, f"std_{m}")
            x = x + layer(values) * grid.present[m].to(values.dtype)[:, None, None]
        x = x * grid.mask[..., None]
        h = x
        for block in self.blocks:
            h = block(h, grid.mask)
        return x, h

    def match_steps(self, x: torch.Tensor) -> torch.Tensor:
        """Unit match vectors ``z [..., K, W]`` of local step embeddings ``x``."""
        return l2norm(self.match_step(x))

    def match_query(self, query: torch.Tensor) -> torch.Tensor:
        """Unit match queries ``[N, W]`` of unit clip_text embeddings ``query [N, D]``."""
        return l2norm(self.match_text(query))

    def boundary_logits(self, h: torch.Tensor, z: torch.Tensor, mask: torch.Tensor,
                        match: torch.Tensor) -> torch.Tensor:
        """Start / end logits ``[N, K, 2]`` of match queries ``match [N, W]`` over context encodings
        ``h`` and match vectors ``z`` ``[N, K, W]`` (or ``[1, K, W]``: one video for every query),
        ``mask [N or 1, K]``."""
        similarity = (z * match[:, None]).sum(-1, keepdim=True) / self.temperature             # [N, K, 1]
        x = self.detect_sim(similarity) + self.detect_step(h)
        mask = mask.expand(x.shape[0], -1)
        for block in self.detector:
            x = block(x, mask)
        return self.detect_out(x).masked_fill(~mask[..., None], torch.finfo(x.dtype).min)

    # ---- training ------------------------------------------------------------------------------
    def loss(self, grid: GridBatch, query: torch.Tensor, pair: torch.Tensor, start: torch.Tensor,
             end: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss of N windows: ``query [N, D]`` unit clip_text embeddings, ``pair [N]`` the
        window's video in ``grid``, ``start`` / ``end [N]`` its first and last step. Cross-entropy of
        the start and of the end step (soft targets, :func:`boundary_targets`), plus
        ``match_weight`` x symmetric InfoNCE between the queries and the batch's distinct windows
        (the captions of one window share it)."""
        x, h = self.encode_steps(grid)
        z, match = self.match_steps(x), self.match_query(query)
        logits = torch.log_softmax(self.boundary_logits(h[pair], z[pair], grid.mask[pair], match), 1)
        sigma = self.meta["config"]["boundary_sigma_s"] / grid.step_s[pair]
        loss_start = -(boundary_targets(start, sigma, grid.mask[pair]) * logits[..., 0]).sum(1).mean()
        loss_end = -(boundary_targets(end, sigma, grid.mask[pair]) * logits[..., 1]).sum(1).mean()
        windows, column = torch.unique(torch.stack([pair, start, end], 1), dim=0, return_inverse=True)
        scores = match @ window_vectors(z, *windows.unbind(1)).t() / self.temperature
        loss_match = info_nce(scores, column[:, None] == torch.arange(len(windows), device=pair.device)[None])
        total = loss_start + loss_end + self.meta["config"]["match_weight"] * loss_match
        return total, {"loss": total.item(), "loss_start": loss_start.item(), "loss_end": loss_end.item(),
                       "loss_match": loss_match.item()}


def boundary_targets(step: torch.Tensor, sigma: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Soft targets ``[N, K]`` over the real steps of ``mask [N, K]``: a Gaussian of ``sigma [N]``
    steps around ``step [N]``, normalised (one-hot as sigma -> 0)."""
    k = torch.arange(mask.shape[1], device=mask.device, dtype=sigma.dtype)[None]
    dist = (k - step[:, None]) / sigma.clamp(min=1e-3)[:, None]
    weights = torch.exp(-0.5 * dist * dist) * mask
    return weights / weights.sum(1, keepdim=True)


def window_vectors(z: torch.Tensor, video: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Unit mean match vectors ``[U, W]`` of windows ``start..end`` (steps, inclusive) of videos
    ``video [U]`` over ``z [B, K, W]``."""
    summed = torch.cat([torch.zeros_like(z[:, :1]), z.cumsum(1)], 1)
    return l2norm(summed[video, end + 1] - summed[video, start])
