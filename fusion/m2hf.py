"""M2HF reconstruction: multi-branch, multi-modal hybrid (early + late) fusion (docs/methods.md §3).

Branches: ``V`` (seqTransf over frames), ``AV`` / ``MV`` (frames cross-attending to audio windows /
motion clips resampled onto the frame times, then the seqTransf pooling). A video without the
branch's modality keeps the frames alone in that branch, and the branch is masked out of the loss
rows and of the fusion weights for that video.

Late fusion: ``S(t, v) = sum_b lambda_b(t) m_b(v) cos(t_b, v_b) / sum_b lambda_b(t) m_b(v)`` with
``m_b(v)`` the availability of branch b. ``lambda(t) = softmax(W t)`` (end-to-end) or constants
fitted on validation (ensemble). The renormalisation only depends on the text and on the video's
availability *pattern*, so S is one inner product: the query holds a block
``lambda_b(t) / Z_p(t) * t_b`` for every pattern p and branch b in p, the video holds ``v_b`` in the
blocks of its own pattern and zeros elsewhere (:meth:`M2HF.text_vectors` / :meth:`video_vectors`).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from data.modalities import AUDIO, MOTION
from fusion.base import Encoding, RetrievalModel
from fusion.batches import TextBatch, VideoBatch
from fusion.layers import (QueryTower, Scale, TemporalTransformer, identity_linear, interval_weights, l2norm,
                           masked_mean, safe_mask)
from fusion.losses import info_nce

BRANCHES = ("V", "AV", "MV")
SOURCE = {"AV": (AUDIO, 128), "MV": (MOTION, 2304)}   # branch -> (modality, its width C)
BALANCES = ("uncertainty", "loss-ratio", "contribution", "none")
FUSIONS = ("end-to-end", "ensemble")
ZERO_WEIGHT = 1e-12   # fused weights at or below this count as no weight


class CrossBlock(nn.Module):
    """Pre-LN cross-attention (frames = queries) + FFN, each added back only where ``gate`` is 1."""

    def __init__(self, width: int, heads: int, dropout: float):
        super().__init__()
        self.norm_q = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.norm_ffn = nn.LayerNorm(width)
        self.ffn = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(4 * width, width))

    def forward(self, x, keys, key_mask, gate):
        h, _ = self.attn(self.norm_q(x), keys, keys, key_padding_mask=~key_mask, need_weights=False)
        x = x + gate * h
        return x + gate * self.ffn(self.norm_ffn(x))


class EarlyFusion(nn.Module):
    """Frames ``[B, N, D]`` + a source ``[B, S, C]`` (audio 128-d windows / motion 2304-d clips) -> ``[B, N, D]``.

    Source: standardised per dimension with the training set's statistics (``source_mean`` /
    ``source_std``, set by :meth:`M2HF.fit_input_statistics`; identity until then), Linear(C -> D)
    + LayerNorm, averaged inside each frame interval (nearest source when none falls inside), + type
    and frame-position embeddings; then cross-attention blocks.
    """

    def __init__(self, width: int, source_dim: int, layers: int, heads: int, dropout: float, max_len: int = 512):
        super().__init__()
        self.register_buffer("source_mean", torch.zeros(source_dim))
        self.register_buffer("source_std", torch.ones(source_dim))
        self.proj = nn.Linear(source_dim, width)
        self.norm = nn.LayerNorm(width)
        self.type_emb = nn.Parameter(torch.zeros(width))
        self.pos = nn.Parameter(torch.randn(max_len, width) * 0.01)
        self.blocks = nn.ModuleList(CrossBlock(width, heads, dropout) for _ in range(layers))

    def forward(self, video: VideoBatch, source: torch.Tensor, source_mask: torch.Tensor, source_t: torch.Tensor,
                available: torch.Tensor) -> torch.Tensor:
        weights = interval_weights(video.frame_t, video.frame_mask, source_t, source_mask)   # [B, N, S]
        aligned = weights @ self.norm(self.proj((source - self.source_mean) / self.source_std))
        aligned = aligned + self.type_emb + self.pos[: aligned.shape[1]]
        key_mask = safe_mask((weights.sum(-1) > 0) & available[:, None])
        gate = available.to(aligned.dtype)[:, None, None]
        x = video.frames
        for block in self.blocks:
            x = block(x, aligned, key_mask, gate)
        return x


class M2HF(RetrievalModel):
    @classmethod
    def extra_modalities(cls, config: dict) -> tuple[str, ...]:
        """``audio`` / ``motion`` for the ``AV`` / ``MV`` branches the configuration has."""
        return tuple(SOURCE[b][0] for b in ("AV", "MV") if b in config["branches"])

    def __init__(self, width: int, config: dict):
        super().__init__()
        self.config = config
        self.branches = tuple(config["branches"])
        if "V" not in self.branches or any(b not in BRANCHES for b in self.branches):
            raise ValueError(f"m2hf branches {list(self.branches)}: choose from {list(BRANCHES)}, V included")
        if config["fusion"] not in FUSIONS:
            raise ValueError(f"m2hf fusion {config['fusion']!r}: expected one of {FUSIONS}")
        if config["source_norm"] not in ("train-zscore", "none"):
            raise ValueError(f"m2hf source_norm {config['source_norm']!r}: expected 'train-zscore' or 'none'")
        if config["balance"] not in BALANCES:
            raise ValueError(f"m2hf balance {config['balance']!r}: expected one of {BALANCES}")
        self.ensemble = config["fusion"] == "ensemble"
        self.needs_tokens = config["text_layers"] > 0
        self.modalities = self.extra_modalities(config)
        heads, dropout = config["heads"], config["dropout"]
        n_towers = len(self.branches) if self.ensemble else 1   # ensemble: branches share nothing
        self.query = nn.ModuleList(QueryTower(width, config["text_layers"], heads, dropout) for _ in range(n_towers))
        self.heads = nn.ModuleDict({b: identity_linear(width) for b in self.branches})
        self.early = nn.ModuleDict({b: EarlyFusion(width, SOURCE[b][1], config["cross_layers"], heads, dropout)
                                    for b in self.branches if b != "V"})
        self.pool = nn.ModuleDict({b: TemporalTransformer(width, config["frame_layers"], heads, dropout)
                                   for b in self.branches})
        self.scale = Scale(config["temperature"], config["learn_temperature"])
        if self.ensemble:
            self.register_buffer("ensemble_lambda", torch.full((len(self.branches),), 1.0 / len(self.branches)))
        else:
            self.gate = nn.Linear(width, len(self.branches))
            nn.init.zeros_(self.gate.weight)
            nn.init.zeros_(self.gate.bias)
            if config["balance"] == "uncertainty":
                self.log_var = nn.Parameter(torch.zeros(len(self.branches)))
        optional = [b for b in self.branches if b != "V"]
        self.patterns = [("V",) + tuple(c) for r in range(len(optional), -1, -1)
                         for c in itertools.combinations(optional, r)]

    def fit_input_statistics(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """``source_norm: train-zscore``: standardise audio / motion with the training statistics.

        Random-weight (and many real) features share a common component far larger than the
        per-video differences; removing it before the projection lets the branch see the differences
        from the first step (the synthetic ablation's "raw audio / motion" row measures what it adds).
        Dimensions that never vary get a std floor of 1% of the median std.
        """
        if self.config["source_norm"] == "none":
            return
        for b, early in self.early.items():
            name = SOURCE[b][0]
            if name in stats:
                mean, std = stats[name]
                early.source_mean.copy_(mean)
                early.source_std.copy_(std.clamp(min=0.01 * float(std.median()) + 1e-12))

    # ---- encoders ------------------------------------------------------------------------------
    def encode_text(self, text: TextBatch) -> Encoding:
        out: Encoding = {}
        sentences = [q(text) for q in self.query]
        for k, b in enumerate(self.branches):
            out[f"t_{b}"] = l2norm(self.heads[b](sentences[k if self.ensemble else 0]))
        if self.ensemble:
            out["lambda"] = self.ensemble_lambda.expand(len(text.eot), -1)
        else:
            out["lambda"] = torch.softmax(self.gate(sentences[0]), -1)
        return out

    def encode_video(self, video: VideoBatch) -> Encoding:
        out: Encoding = {}
        for b in self.branches:
            if b == "V":
                frames, available = video.frames, torch.ones_like(video.frame_mask[:, 0])
            else:
                name = SOURCE[b][0]
                available = getattr(video, f"has_{name}")
                frames = self.early[b](video, getattr(video, name), getattr(video, f"{name}_mask"),
                                       getattr(video, f"{name}_t"), available)
            pooled = self.pool[b](frames, video.frame_mask)
            out[f"v_{b}"] = l2norm(masked_mean(l2norm(pooled), video.frame_mask))
            out[f"m_{b}"] = available.to(pooled.dtype)
        return out

    # ---- scores ----------------------------------------------------------------------------------
    def branch_cosines(self, text: Encoding, video: Encoding) -> torch.Tensor:
        """``[nb, Q, V]`` cosine of every branch."""
        return torch.stack([text[f"t_{b}"] @ video[f"v_{b}"].t() for b in self.branches])

    def availability(self, video: Encoding) -> torch.Tensor:
        return torch.stack([video[f"m_{b}"] for b in self.branches])          # [nb, V]

    def fuse(self, cosines: torch.Tensor, lam: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        """``sum_b lam_b m_b cos_b / sum_b lam_b m_b``; cosines ``[nb, Q, V]``, lam ``[Q, nb]``, avail ``[nb, V]``.

        Where the weights put nothing on any branch the video has (e.g. lambda_V = 0 for a video
        without audio), its available branches count equally: a video is always scored by them.
        """
        weights = lam.t()[:, :, None] * avail[:, None, :]                     # [nb, Q, V]
        nothing = weights.sum(0, keepdim=True) <= ZERO_WEIGHT
        weights = torch.where(nothing, avail[:, None, :].expand_as(weights), weights)
        return (weights * cosines).sum(0) / weights.sum(0).clamp(min=ZERO_WEIGHT)

    def score(self, text: Encoding, video: Encoding) -> torch.Tensor:
        return self.fuse(self.branch_cosines(text, video), text["lambda"], self.availability(video))

    def text_vectors(self, text: Encoding) -> torch.Tensor:
        lam = text["lambda"]
        blocks = []
        for pattern in self.patterns:
            part = lam[:, [self.branches.index(b) for b in pattern]]           # [Q, |pattern|]
            nothing = part.sum(1, keepdim=True) <= ZERO_WEIGHT                # same fallback as fuse
            part = torch.where(nothing, torch.ones_like(part), part)
            part = part / part.sum(1, keepdim=True)
            blocks += [part[:, [k]] * text[f"t_{b}"] for k, b in enumerate(pattern)]
        return torch.cat(blocks, 1)

    def video_vectors(self, video: Encoding) -> torch.Tensor:
        avail = self.availability(video) > 0.5                                 # [nb, V]
        blocks = []
        for pattern in self.patterns:
            member = torch.ones_like(avail[0])
            for k, b in enumerate(self.branches):
                member &= avail[k] if b in pattern else ~avail[k]
            blocks += [video[f"v_{b}"] * member[:, None] for b in pattern]
        return torch.cat(blocks, 1)

    # ---- training --------------------------------------------------------------------------------
    def loss(self, text, video, positives, pair_video, *, epoch, second_view=None):
        t, v = self.encode_text(text), self.encode_video(video)
        cos = self.branch_cosines(t, v)
        avail = self.availability(v)
        scale = self.scale()
        parts, branch_losses = {}, []
        for k, b in enumerate(self.branches):
            has = avail[k] > 0.5
            loss_b = info_nce(cos[k] * scale, positives, has[pair_video], has)
            parts[f"loss_{b}"] = loss_b.item()
            branch_losses.append(loss_b)
        losses = torch.stack(branch_losses)
        if self.ensemble:
            total = losses.sum()
        else:
            fused = self.fuse(cos, t["lambda"], avail)
            total = self.balance(losses, cos, t["lambda"], avail, pair_video)
            if self.config["fused_loss"]:
                loss_f = info_nce(fused * scale, positives)
                parts["loss_fused"] = loss_f.item()
                total = total + loss_f
        parts["loss"] = total.item()
        return total, parts

    def balance(self, losses, cos, lam, avail, pair_video) -> torch.Tensor:
        """The multi-modal balance loss over the branch losses ``[nb]`` (docs/methods.md §3)."""
        kind = self.config["balance"]
        if kind == "uncertainty":
            return (torch.exp(-self.log_var) * losses + self.log_var).sum()
        if kind == "loss-ratio":
            w = torch.softmax(losses.detach() / self.config["balance_temperature"], 0) * len(losses)
            return (w * losses).sum()
        if kind == "contribution":
            rows = torch.arange(len(pair_video), device=cos.device)
            pos_cos = cos[:, rows, pair_video].clamp(min=0)                    # [nb, B]
            has = avail[:, pair_video]                                         # [nb, B]
            contrib = lam.t() * has * pos_cos
            share = contrib / contrib.sum(0, keepdim=True).clamp(min=1e-6)
            target = has / has.sum(0, keepdim=True)            # equal shares of the branches a video has
            penalty = ((share.mean(1) - target.mean(1)) ** 2).sum()
            return losses.sum() + self.config["balance_weight"] * penalty
        return losses.sum()

    @torch.no_grad()
    def fit_on_validation(self, text: Encoding, video: Encoding, positives: torch.Tensor) -> dict:
        """Ensemble mode: grid-search lambda on the simplex for validation text-to-video R@1."""
        if not self.ensemble:
            return {}
        cos, avail = self.branch_cosines(text, video), self.availability(video)
        step = self.config["ensemble_grid"]
        n = int(round(1 / step))
        best, best_r1 = None, -1.0
        for combo in itertools.product(range(n + 1), repeat=len(self.branches)):
            if sum(combo) != n:
                continue
            lam = torch.tensor(combo, dtype=cos.dtype, device=cos.device) / n
            fused = self.fuse(cos, lam.expand(cos.shape[1], -1), avail)
            r1 = _top1_hit_rate(fused, positives)
            if r1 > best_r1 + 1e-9:
                best, best_r1 = lam, r1
        self.ensemble_lambda.copy_(best)
        return {"ensemble_lambda": dict(zip(self.branches, best.tolist())), "val_t2v_R@1": 100 * best_r1}


def _top1_hit_rate(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Share of rows whose top-scored column is a positive, ties counted fractionally."""
    top = scores.max(1, keepdim=True).values
    tied = scores >= top
    return float(((tied & positives).sum(1).float() / tied.sum(1).float()).mean())
