"""HCMI reconstruction: hierarchical cross-modal interaction (docs/methods.md §4).

Video: frames -> seqTransf -> frame tokens ``f`` ``[V, N, D]`` -> 1 self-attention block ->
clustering into M clips -> FFN -> clip tokens ``c`` ``[V, M, D]`` -> attention pooling with one
learned query + the masked frame mean (zero-initialised, so training starts at meanP) -> ``v``.
Text: words ``w`` ``[Q, L, D]`` (after ``text_layers`` residual transformer layers) -> the same block + clustering into ceil(L_valid / 4) phrases ->
``p`` -> sentence ``s`` = EOT + attention of the EOT over the phrases (zero-initialised).
Level scores: video-sentence cosine; clip-phrase and frame-word token-wise max-mean
``1/2 [mean_p max_k cos + mean_k max_p cos]`` with padding masked. Test score = weighted mean of
the three levels; FAISS holds ``s`` / ``v`` and ``score`` re-ranks exactly (``fine_grained``).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from fusion.base import Encoding, RetrievalModel
from fusion.clustering import Clustering
from fusion.batches import TextBatch, VideoBatch
from fusion.layers import QueryTower, Scale, TemporalTransformer, encoder, identity_linear, l2norm, masked_mean, safe_mask
from fusion.losses import hardest_negative_triplet, info_nce

LEVELS = ("video-sentence", "clip-phrase", "frame-word")


def clips_for(n_frames: int, setting) -> int:
    """M: 4 for N <= 12, 8 for N >= 64, linear in between (docs/methods.md §4, chosen), unless set."""
    if setting != "auto":
        return int(setting)
    return int(round(4 + 4 * min(max(n_frames - 12, 0), 52) / 52))


MAX_MEAN_BYTES = 128 * 2**20   # similarity block per video chunk; about 3x this is live at the peak


def max_mean(a: torch.Tensor, am: torch.Tensor, b: torch.Tensor, bm: torch.Tensor,
             chunk_bytes: int | None = None) -> torch.Tensor:
    """Token-wise max-mean of unit tokens ``a`` ``[Q, La, D]`` and ``b`` ``[V, Lb, D]`` -> ``[Q, V]``.

    The ``[Q, Vc, La, Lb]`` similarities are built for ``Vc`` videos at a time, ``Vc`` chosen so one
    block stays under ``chunk_bytes`` (default :data:`MAX_MEAN_BYTES`; memory is flat in V,
    ``bench/hcmi_memory.py``).
    """
    chunk_bytes = chunk_bytes or MAX_MEAN_BYTES
    per_video = max(1, a.shape[0] * a.shape[1] * b.shape[1] * a.element_size())
    step = max(1, chunk_bytes // per_video)
    if step >= len(b):
        return _max_mean(a, am, b, bm)
    return torch.cat([_max_mean(a, am, b[s:s + step], bm[s:s + step]) for s in range(0, len(b), step)], 1)


def _max_mean(a: torch.Tensor, am: torch.Tensor, b: torch.Tensor, bm: torch.Tensor) -> torch.Tensor:
    sim = torch.einsum("qad,vbd->qvab", a, b)
    low = torch.finfo(sim.dtype).min
    pair_b = bm[None, :, None, :]
    pair_a = am[:, None, :, None]
    a_best = sim.masked_fill(~pair_b, low).amax(3)                              # [Q, V, La]
    b_best = sim.masked_fill(~pair_a, low).amax(2)                              # [Q, V, Lb]
    a_side = (a_best * am[:, None]).sum(2) / am.sum(1).clamp(min=1)[:, None]
    b_side = (b_best * bm[None]).sum(2) / bm.sum(1).clamp(min=1)[None]
    return (a_side + b_side) / 2


class Hierarchy(nn.Module):
    """tokens -> 1 self-attention block -> clustering -> residual FFN -> (clusters ``[B, M, D]``, mask)."""

    def __init__(self, width: int, config: dict, max_clusters: int):
        super().__init__()
        self.block = encoder(width, 1, config["heads"], config["dropout"])
        self.cluster = Clustering(config["clustering"], width, max_clusters, config["knn"], config["heads"])
        self.ffn = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x, mask, counts):
        h = self.block(x, src_key_padding_mask=~safe_mask(mask)) * mask[..., None]
        clusters, cmask = self.cluster(h, mask, counts)
        return clusters + self.ffn(clusters), cmask


class AttentionPool(nn.Module):
    """Queries ``[B, 1, D]`` attend to tokens; output projection zero-initialised (starts at 0)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        nn.init.zeros_(self.attn.out_proj.weight)
        nn.init.zeros_(self.attn.out_proj.bias)

    def forward(self, query, tokens, mask):
        out, _ = self.attn(query, tokens, tokens, key_padding_mask=~safe_mask(mask), need_weights=False)
        return out[:, 0]


class HCMI(RetrievalModel):
    fine_grained = True

    def __init__(self, width: int, config: dict):
        super().__init__()
        self.config = config
        n_clips = clips_for(config["max_frames"], config["clips"])
        n_phrases = math.ceil(config["max_words"] / config["words_per_phrase"])
        self.n_clips, self.words_per_phrase = n_clips, config["words_per_phrase"]
        self.temporal = TemporalTransformer(width, config["frame_layers"], config["heads"], config["dropout"])
        self.clip_level = Hierarchy(width, config, n_clips)
        self.video_query = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.video_pool = AttentionPool(width, config["heads"])
        self.query = QueryTower(width, config["text_layers"], config["heads"], config["dropout"])
        self.word_adapter = identity_linear(width) if config.get("text_adapter") else nn.Identity()
        self.phrase_level = Hierarchy(width, config, n_phrases)
        self.sentence_pool = AttentionPool(width, config["heads"])
        self.scale = Scale(config["temperature"], config["learn_temperature"])
        weights = torch.tensor(config["level_weights"], dtype=torch.float32)
        if weights.shape != (3,) or weights.sum() <= 0:
            raise ValueError(f"hcmi level_weights {config['level_weights']}: expected 3 non-negative weights")
        self.register_buffer("level_weights", weights / weights.sum())

    def wants_second_view(self, epoch: int) -> bool:
        return bool(self.config["label_denoising"]) and epoch >= self.config["warmup_epochs"]

    # ---- encoders ------------------------------------------------------------------------------
    def encode_video(self, video: VideoBatch) -> Encoding:
        mask = video.frame_mask
        frames = self.temporal(video.frames, mask)
        counts = torch.full_like(mask[:, 0], self.n_clips, dtype=torch.int64)
        clips, clip_mask = self.clip_level(frames, mask, counts)
        query = self.video_query.expand(len(frames), -1, -1)
        vector = masked_mean(frames, mask) + self.video_pool(query, clips, clip_mask)
        return {"vector": l2norm(vector), "frames": l2norm(frames) * mask[..., None], "frame_mask": mask,
                "clips": l2norm(clips) * clip_mask[..., None], "clip_mask": clip_mask}

    def encode_text(self, text: TextBatch) -> Encoding:
        mask = text.token_mask
        words = self.word_adapter(self.query.tokens(text)) * mask[..., None]
        counts = torch.ceil(mask.sum(1) / self.words_per_phrase).long()
        phrases, phrase_mask = self.phrase_level(words, mask, counts)
        eot = words[torch.arange(len(words), device=words.device), text.eot]
        sentence = eot + self.sentence_pool(eot[:, None], phrases, phrase_mask)
        return {"vector": l2norm(sentence), "words": l2norm(words) * mask[..., None], "word_mask": mask,
                "phrases": l2norm(phrases) * phrase_mask[..., None], "phrase_mask": phrase_mask}

    # ---- scores ----------------------------------------------------------------------------------
    def level_scores(self, text: Encoding, video: Encoding) -> torch.Tensor:
        """``[3, Q, V]``: video-sentence, clip-phrase, frame-word (cosine scale)."""
        return torch.stack([
            text["vector"] @ video["vector"].t(),
            max_mean(text["phrases"], text["phrase_mask"], video["clips"], video["clip_mask"]),
            max_mean(text["words"], text["word_mask"], video["frames"], video["frame_mask"]),
        ])

    def score(self, text: Encoding, video: Encoding) -> torch.Tensor:
        return torch.einsum("l,lqv->qv", self.level_weights, self.level_scores(text, video))

    # ---- training --------------------------------------------------------------------------------
    def loss(self, text, video, positives, pair_video, *, epoch, second_view=None):
        t, v = self.encode_text(text), self.encode_video(video)
        levels = self.level_scores(t, v)
        targets = positives
        parts = {}
        if second_view is not None and self.wants_second_view(epoch):
            targets = positives | self.mine_positives(v["vector"], second_view)[pair_video]
            parts["extra_positives"] = float((targets & ~positives).sum()) / len(pair_video)
        scale = self.scale()
        total = 0.0
        for name, s in zip(LEVELS, levels):
            loss_l = info_nce(s * scale, targets)
            parts[f"loss_{name}"] = loss_l.item()
            total = total + loss_l / len(LEVELS)
        if self.config["hard_samples"]:
            fused = torch.einsum("l,lqv->qv", self.level_weights, levels)
            loss_h = hardest_negative_triplet(fused, targets, pair_video, self.config["margin"])
            parts["loss_hard"] = loss_h.item()
            total = total + self.config["hard_weight"] * loss_h
        parts["loss"] = total.item()
        return total, parts

    @torch.no_grad()
    def mine_positives(self, vectors: torch.Tensor, second_view: VideoBatch) -> torch.Tensor:
        """Adaptive label denoising: ``[V, V]`` True where ``cos(v_i, v_j) > cos(v_i, v_i')`` (j != i)."""
        other = self.encode_video(second_view)["vector"]
        v = vectors.detach()
        sim = v @ v.t()
        own = (v * other).sum(-1, keepdim=True)
        extra = sim > own
        extra.fill_diagonal_(False)
        return extra
