"""The interface every retrieval model implements (``fusion.factory.build_model`` builds them).

Encodings are dicts of tensors whose first dimension runs over captions (text) or videos, so
chunks concatenate with :func:`cat_encodings`. ``score`` is the exact full score on the cosine
scale (a sum or mean of cosines); the training logits are ``score * scale`` (``1 / tau``).
"""
from __future__ import annotations

import torch
from torch import nn

from fusion.batches import TextBatch, VideoBatch
from fusion.layers import Scale

Encoding = dict[str, torch.Tensor]


def cat_encodings(parts: list[Encoding]) -> Encoding:
    """Concatenate chunked encodings along the first dimension (padding token dims to the longest)."""
    out: Encoding = {}
    for key in parts[0]:
        tensors = [p[key] for p in parts]
        if tensors[0].dim() >= 2 and len({t.shape[1] for t in tensors}) > 1:
            width = max(t.shape[1] for t in tensors)
            tensors = [nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, width - t.shape[1]]) for t in tensors]
        out[key] = torch.cat(tensors)
    return out


def take(enc: Encoding, idx: torch.Tensor) -> Encoding:
    return {k: v[idx] for k, v in enc.items()}


class RetrievalModel(nn.Module):
    """Base class: subclasses implement the encoders, ``score``, the FAISS vectors and ``loss``."""

    modalities: tuple[str, ...] = ()   # extra feature modalities needed besides frames and text
    fine_grained = False               # True: FAISS holds coarse vectors, ``score`` re-ranks exactly
    needs_tokens = True                # False: the text side reads only the EOT embedding

    @classmethod
    def extra_modalities(cls, config: dict) -> tuple[str, ...]:
        """The extra feature modalities (``audio``, ``motion``) a model of ``config`` reads; what
        :func:`fusion.features.load_features` loads for it besides frames and caption tokens."""
        return ()

    def encode_text(self, text: TextBatch) -> Encoding:
        raise NotImplementedError

    def encode_video(self, video: VideoBatch) -> Encoding:
        raise NotImplementedError

    def score(self, text: Encoding, video: Encoding) -> torch.Tensor:
        """Exact scores ``[Q, V]`` on the cosine scale."""
        return self.text_vectors(text) @ self.video_vectors(video).t()

    def text_vectors(self, text: Encoding) -> torch.Tensor:
        """FAISS query vectors ``[Q, E]``."""
        return text["vector"]

    def video_vectors(self, video: Encoding) -> torch.Tensor:
        """FAISS gallery vectors ``[V, E]``."""
        return video["vector"]

    def wants_second_view(self, epoch: int) -> bool:
        """True when the training step of ``epoch`` needs a second frame sampling (HCMI denoising)."""
        return False

    def loss(self, text: TextBatch, video: VideoBatch, positives: torch.Tensor, pair_video: torch.Tensor,
             *, epoch: int, second_view: VideoBatch | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on B captions x V distinct videos; returns (total, named parts for the log)."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step: clamps learnable temperatures (CLIP's in-place clamp)."""
        for module in self.modules():
            if isinstance(module, Scale):
                module.clamp_()

    def fit_on_validation(self, text: Encoding, video: Encoding, positives: torch.Tensor) -> dict:
        """Fit weights that are chosen on validation (ensemble lambdas); returns what was fitted."""
        return {}

    def fit_input_statistics(self, stats: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Take per-dimension statistics of the training inputs before training: ``stats`` maps a
        modality (``audio``, ``motion``) to its ``(mean [C], std [C])`` over the training videos' rows."""
