"""Encode a split in chunks and score it exactly; shared by training (validation / test) and the API."""
from __future__ import annotations

import numpy as np
import torch

from fusion.base import Encoding, RetrievalModel, cat_encodings, take
from fusion.features import DatasetFeatures


@torch.no_grad()
def encode_videos(model: RetrievalModel, feats: DatasetFeatures, videos: np.ndarray, config: dict,
                  device: torch.device, batch: int = 256) -> Encoding:
    """Encodings of ``videos`` (indices) with uniform frame sampling, on the CPU."""
    return _encode_in_chunks(model, videos, batch, lambda rows: model.encode_video(
        feats.video_batch(rows, config["max_frames"]).to(device)))


@torch.no_grad()
def encode_texts(model: RetrievalModel, feats: DatasetFeatures, captions: np.ndarray, config: dict,
                 device: torch.device, batch: int = 256) -> Encoding:
    """Encodings of ``captions`` (indices), on the CPU."""
    return _encode_in_chunks(model, captions, batch, lambda rows: model.encode_text(
        feats.text_batch(rows, config["max_words"], not model.needs_tokens).to(device)))


def _encode_in_chunks(model: RetrievalModel, rows: np.ndarray, batch: int, encode) -> Encoding:
    """``encode(rows[i:i + batch])`` for each chunk in eval mode, moved to the CPU and concatenated."""
    model.eval()
    return cat_encodings([{k: v.cpu() for k, v in encode(rows[start: start + batch]).items()}
                          for start in range(0, len(rows), batch)])


@torch.no_grad()
def score_matrix(model: RetrievalModel, text: Encoding, video: Encoding, chunk: int = 256) -> np.ndarray:
    """Exact scores ``[Q, V]`` float32; single-vector models use the FAISS vectors' inner product."""
    model.eval()
    device = model_device(model)
    video = {k: v.to(device) for k, v in video.items()}
    n = len(next(iter(text.values())))
    if not model.fine_grained:
        text = {k: v.to(device) for k, v in text.items()}
        return (model.text_vectors(text) @ model.video_vectors(video).t()).cpu().numpy().astype(np.float32)
    rows = []
    for s in range(0, n, chunk):
        part = {k: v.to(device) for k, v in take(text, torch.arange(s, min(s + chunk, n))).items()}
        rows.append(model.score(part, video).cpu())
    return torch.cat(rows).numpy().astype(np.float32)


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")
