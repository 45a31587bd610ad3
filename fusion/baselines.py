"""CLIP4Clip baselines on frozen features (docs/methods.md §2): zero-shot, meanP, seqTransf."""
from __future__ import annotations

from torch import nn

from fusion.base import Encoding, RetrievalModel
from fusion.batches import TextBatch, VideoBatch
from fusion.layers import QueryTower, Scale, TemporalTransformer, identity_linear, l2norm, masked_mean
from fusion.losses import info_nce


class MeanPooling(RetrievalModel):
    """Text = EOT embedding (optionally after ``text_layers`` residual transformer layers over the
    tokens, and an identity-initialised adapter); video =
    ``l2norm(masked_mean(l2norm(T(frames))))`` where T is the seqTransf transformer (0 layers: meanP).

    zero-shot is this with no adapter and no transformer: nothing to train, CLIP's own space.
    ``temporal`` (seqTransf) runs the ``frame_layers`` transformer; without it there is none.
    """

    def __init__(self, width: int, config: dict, temporal: bool = False):
        super().__init__()
        layers = config["frame_layers"] if temporal else 0
        self.query = QueryTower(width, config["text_layers"], config["heads"], config["dropout"])
        self.needs_tokens = config["text_layers"] > 0
        self.text_adapter = identity_linear(width) if config.get("text_adapter") else nn.Identity()
        self.frame_adapter = identity_linear(width) if config.get("frame_adapter") else nn.Identity()
        self.temporal = TemporalTransformer(width, layers, config["heads"], config["dropout"])
        self.scale = Scale(config["temperature"], config["learn_temperature"])

    def encode_text(self, text: TextBatch) -> Encoding:
        return {"vector": l2norm(self.text_adapter(self.query(text)))}

    def encode_video(self, video: VideoBatch) -> Encoding:
        frames = self.temporal(self.frame_adapter(video.frames), video.frame_mask)
        return {"vector": l2norm(masked_mean(l2norm(frames), video.frame_mask))}

    def loss(self, text, video, positives, pair_video, *, epoch, second_view=None):
        logits = self.score(self.encode_text(text), self.encode_video(video)) * self.scale()
        loss = info_nce(logits, positives)
        return loss, {"loss": loss.item()}
