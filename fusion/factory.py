"""One factory: a model name plus its configuration (``fusion/configs``) -> a :class:`RetrievalModel`,
as the model registry (:mod:`fusion.registry`) says."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch

from fusion.base import Encoding, RetrievalModel
from fusion.batches import TextBatch, VideoBatch
from fusion.config import load_config
from fusion.registry import model_entry


def build_model(config: dict, width: int) -> RetrievalModel:
    """The model ``config["model"]`` for features of width ``width`` (D).

    ``config["width"]`` (default null = D) builds the model at a smaller width W behind fixed random
    projections D -> W of frames and caption tokens (:class:`Projected`; used by the fast ablation).
    """
    entry = model_entry(config["model"])
    inner_width = config.get("width") or width
    model = entry.builds(inner_width, config, **entry.options)
    return model if inner_width == width else Projected(model, width, inner_width)


def create(name: str, config_file: str | Path | None = None, overrides: Iterable[str | dict] = (),
           width: int = 512) -> tuple[RetrievalModel, dict]:
    """Load the configuration of ``name`` (+ file, + overrides) and build the model."""
    config = load_config(name, config_file, overrides)
    return build_model(config, width), config


def modalities_for(config: dict) -> tuple[str, ...]:
    """Extra feature modalities (``audio``, ``motion``) a configuration needs."""
    return model_entry(config["model"]).builds.extra_modalities(config)


class Projected(RetrievalModel):
    """``inner`` run on inputs projected from D to W by a fixed random matrix (Gaussian / sqrt(W),
    which roughly preserves cosines); everything else delegates to ``inner``."""

    def __init__(self, inner: RetrievalModel, dim_in: int, dim_out: int):
        super().__init__()
        self.inner = inner
        self.modalities, self.fine_grained, self.needs_tokens = inner.modalities, inner.fine_grained, inner.needs_tokens
        g = torch.Generator().manual_seed(dim_in * 7919 + dim_out)
        self.register_buffer("projection", torch.randn(dim_in, dim_out, generator=g) / dim_out ** 0.5)

    def _text(self, text: TextBatch) -> TextBatch:
        return TextBatch(text.tokens @ self.projection, text.token_mask, text.eot)

    def _video(self, video: VideoBatch | None) -> VideoBatch | None:
        if video is None:
            return None
        out = VideoBatch(**{k: getattr(video, k) for k in video.__dataclass_fields__})
        out.frames = video.frames @ self.projection
        return out

    def encode_text(self, text: TextBatch) -> Encoding:
        return self.inner.encode_text(self._text(text))

    def encode_video(self, video: VideoBatch) -> Encoding:
        return self.inner.encode_video(self._video(video))

    def score(self, text, video):
        return self.inner.score(text, video)

    def text_vectors(self, text):
        return self.inner.text_vectors(text)

    def video_vectors(self, video):
        return self.inner.video_vectors(video)

    def wants_second_view(self, epoch: int) -> bool:
        return self.inner.wants_second_view(epoch)

    def loss(self, text, video, positives, pair_video, *, epoch, second_view=None):
        return self.inner.loss(self._text(text), self._video(video), positives, pair_video, epoch=epoch,
                               second_view=self._video(second_view))

    def fit_on_validation(self, text, video, positives):
        return self.inner.fit_on_validation(text, video, positives)

    def fit_input_statistics(self, stats):
        self.inner.fit_input_statistics(stats)
