"""The model API used by retrieval/ and flows/ (contract B, docs/design.md "Contracts").

``load_model`` rebuilds a trained run (or the zero-shot model), ``encode_split`` encodes a split's
captions and videos into FAISS vectors (plus exact scoring for fine-grained models), and
``encode_queries`` encodes free text with the same frozen text tower as the stored captions.
A run trained with a moment head (``LoadedModel.moments``) places queries in time with
:class:`MomentPredictor` (:mod:`fusion.moments.predict`, docs/methods.md §8).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from data.devices import resolve_device
from data.modalities import AUDIO, CLIP_FRAMES, CLIP_TEXT, MODALITIES, MOTION
from data.settings import Settings, get_settings
from fusion.base import Encoding, take
from fusion.batches import Ragged, truncate_tokens
from fusion.bundle import is_bundle, load_bundle
from fusion.config import load_config
from fusion.encoding import encode_texts, encode_videos, model_device, score_matrix
from fusion.factory import build_model, modalities_for
from fusion.features import audio_centre_s, load_features, pick_extractor, video_batch_at
from fusion.loaded import LoadedModel
from fusion.moments.predict import MomentPredictor  # noqa: F401  (part of this API)
from fusion.moments.saved import load_head
from fusion.sampling import uniform_positions


def load_model(run: str | Path, *, dataset: str | None = None, settings: Settings | None = None,
               device: str | None = None) -> LoadedModel:
    """A run folder, a run id under ``settings.runs_dir``, ``"zero-shot"`` (needs ``dataset``), or an
    exported bundle folder (written by :mod:`fusion.export`, read by :mod:`fusion.bundle`; no feature
    store needed).

    The model lives on ``device`` (default ``settings.device``, i.e. ``$TVR_DEVICE``; ``auto`` =
    CUDA when present), so every encoding through this API runs there; results come back on the CPU.
    """
    settings = settings or get_settings()
    target = resolve_device(device or settings.device)
    if str(run) == "zero-shot":
        if not dataset:
            raise ValueError("load_model('zero-shot') needs dataset=...: it uses that dataset's stored clip extractors")
        infos = {m: pick_extractor(settings, dataset, m) for m in (CLIP_FRAMES, CLIP_TEXT)}
        config = load_config("zero-shot")
        model = build_model(config, int(infos[CLIP_FRAMES]["dim"])).eval().to(target)
        return LoadedModel(model, "zero-shot", config, None, dataset, {m: i["extractor_id"] for m, i in infos.items()},
                           any(i.get("random_weights", False) for i in infos.values()), False)
    folder = Path(run)
    if not folder.is_dir():
        folder = settings.runs_dir / str(run)
    if is_bundle(folder):
        return load_bundle(folder, target)
    meta_path = folder / "config.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{run!r}: no run folder with config.json (looked at {Path(run)} and {folder})")
    best = folder / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{folder}: no best.pt; the run has not finished an epoch yet")
    meta = json.loads(meta_path.read_text())
    try:
        config, width = meta["config"], int(meta["width"])
        model = build_model(config, width)
        model.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["model"])
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"{folder}: cannot rebuild the model ({exc})") from exc
    model.eval().to(target)
    return LoadedModel(model, meta["model"], config, folder, meta["dataset"], dict(meta["extractor_ids"]),
                       bool(meta["random_weights"]), model.fine_grained,
                       moments=load_head(folder, meta.get("moment_head"), target))


@dataclass
class EncodedSplit:
    text_vectors: np.ndarray
    query_video_ids: list[str]
    captions: list[str]
    video_vectors: np.ndarray
    video_ids: list[str]
    fine_grained: bool
    listed: tuple[int, int] | None = None   # (videos, queries) the manifest lists for the split
    _model: torch.nn.Module | None = field(default=None, repr=False)
    _text: Encoding | None = field(default=None, repr=False)
    _video: Encoding | None = field(default=None, repr=False)

    def score(self, q_idx: np.ndarray, v_idx: np.ndarray) -> np.ndarray:
        """Exact full scores ``[len(q_idx), len(v_idx)]``."""
        q, v = np.asarray(q_idx, np.int64), np.asarray(v_idx, np.int64)
        if not self.fine_grained:
            return self.text_vectors[q] @ self.video_vectors[v].T
        return score_matrix(self._model, take(self._text, torch.as_tensor(q)), take(self._video, torch.as_tensor(v)))

    def similarity(self, chunk: int = 1024) -> np.ndarray:
        """``[Q, V]`` exact scores, computed ``chunk`` queries at a time."""
        all_v = np.arange(len(self.video_ids))
        rows = [self.score(np.arange(s, min(s + chunk, len(self.captions))), all_v)
                for s in range(0, len(self.captions), chunk)]
        return np.concatenate(rows) if rows else np.zeros((0, len(self.video_ids)), np.float32)


def _features(loaded: LoadedModel, dataset: str, settings: Settings):
    wanted = modalities_for(loaded.config)
    ids = {m: loaded.extractor_ids[m] for m in MODALITIES if m in loaded.extractor_ids}
    return load_features(dataset, wanted, extractors=ids, settings=settings,
                         val_holdout=loaded.config.get("val_holdout", 0.1))


def encode_split(loaded: LoadedModel, dataset: str, split: str, *, settings: Settings | None = None,
                 captions: str = "all") -> EncodedSplit:
    """Encode every video of ``split`` and its captions (``all``, or each video's ``first``)."""
    settings = settings or get_settings()
    feats = _features(loaded, dataset, settings)
    videos = feats.split_videos(split)
    caps = feats.split_captions(split, captions)
    device = model_device(loaded.model)
    v_enc = encode_videos(loaded.model, feats, videos, loaded.config, device)
    t_enc = encode_texts(loaded.model, feats, caps, loaded.config, device)
    with torch.no_grad():
        tv = loaded.model.text_vectors(t_enc).numpy().astype(np.float32)
        vv = loaded.model.video_vectors(v_enc).numpy().astype(np.float32)
    return EncodedSplit(tv, [feats.video_ids[int(v)] for v in feats.caption_video[caps]],
                        [feats.captions[int(q)] for q in caps], vv, [feats.video_ids[int(v)] for v in videos],
                        loaded.fine_grained, feats.listed_counts(split, captions), loaded.model, t_enc, v_enc)


def video_vector_batches(loaded: LoadedModel, dataset: str, splits: list[str], *, batch: int = 4096,
                         settings: Settings | None = None) -> tuple[list[str], Iterator[np.ndarray]]:
    """The videos of ``splits`` (those with ``ok`` frame features, split by split) and their FAISS
    video vectors encoded ``batch`` videos at a time: (ids, an iterator of ``[b, E]`` float32 arrays
    in id order). Only one batch's encodings are held at once (for indexing large collections)."""
    settings = settings or get_settings()
    feats = _features(loaded, dataset, settings)
    rows = np.concatenate([feats.split_videos(split) for split in splits]).astype(np.int64)
    return [feats.video_ids[int(v)] for v in rows], _vector_batches(loaded, feats, rows, batch)


def _vector_batches(loaded: LoadedModel, feats, rows: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    """FAISS video vectors ``[b, E]`` float32 of the feature rows ``rows``, ``batch`` at a time."""
    device = model_device(loaded.model)
    for start in range(0, len(rows), batch):
        encoded = encode_videos(loaded.model, feats, rows[start:start + batch], loaded.config, device)
        with torch.no_grad():
            yield loaded.model.video_vectors(encoded).numpy().astype(np.float32)


@dataclass
class EncodedQueries:
    """Free texts encoded by :class:`QueryEncoder`."""

    vectors: np.ndarray          # [Q, E] float32 FAISS query vectors
    encoding: Encoding           # the model's text encoding, for exact scores (:class:`VideoScorer`)
    clip: np.ndarray             # [Q, D] float32 unit clip_text EOT embeddings (the clip_frames space)

    def select(self, rows: list[int]) -> "EncodedQueries":
        """The queries ``rows`` (in that order)."""
        return EncodedQueries(self.vectors[rows], take(self.encoding, torch.as_tensor(rows, dtype=torch.int64)),
                              self.clip[rows])


class QueryEncoder:
    """The run's text side built once (the stored clip_text extractor's own tower, then the model);
    :meth:`encode` answers many calls (the search service batches queries through it). The tower
    runs on ``device`` (default: the model's own device, so ``$TVR_DEVICE`` unless
    :func:`load_model` was given another)."""

    def __init__(self, loaded: LoadedModel, *, settings: Settings | None = None, device: str | None = None,
                 precision: str | None = None):
        from extractors.registry import build_text_encoder  # the one fusion -> extractors arrow, kept lazy

        settings = settings or get_settings()
        self.loaded = loaded
        info = loaded.text_extractor or pick_extractor(settings, loaded.dataset, CLIP_TEXT,
                                                       loaded.extractor_ids.get(CLIP_TEXT))
        device = device or str(model_device(loaded.model))
        self.tower = build_text_encoder(info, device=device, precision=precision or settings.query_precision)
        self.precision = self.tower.precision     # what the tower runs in: fp32, bf16 or fp16

    def encode(self, texts: list[str]) -> EncodedQueries:
        encoded = self.tower.encode(list(texts))
        model = self.loaded.model
        text = Ragged.from_arrays([np.asarray(tokens, np.float32) for tokens, _ in encoded])
        eot = torch.tensor([int(e) for _, e in encoded], dtype=torch.int64)
        clip = np.stack([np.asarray(tokens[e], np.float32) for tokens, e in encoded])
        clip /= np.maximum(np.linalg.norm(clip, axis=1, keepdims=True), 1e-12)
        batch = truncate_tokens(text, torch.arange(len(encoded)), eot, self.loaded.config["max_words"])
        with torch.no_grad():
            model.eval()
            on_device = model.encode_text(batch.to(model_device(model)))
            vectors = model.text_vectors(on_device).cpu().numpy().astype(np.float32)
            encoding = {k: v.cpu() for k, v in on_device.items()}
        return EncodedQueries(vectors, encoding, clip)


def encode_queries(loaded: LoadedModel, texts: list[str], *, settings: Settings | None = None) -> np.ndarray:
    """FAISS query vectors ``[Q, E]`` of free texts, via the stored clip_text extractor's own tower."""
    return QueryEncoder(loaded, settings=settings).encode(texts).vectors


class VideoScorer:
    """Exact scores of free-text queries against videos by id, for re-ranking a fine-grained
    model's first-stage candidates. The videos' encodings are computed once from the stored
    features (``video_ids``: which videos; those without features are left out, see :attr:`ids`)."""

    def __init__(self, loaded: LoadedModel, dataset: str, video_ids: list[str], *,
                 settings: Settings | None = None):
        settings = settings or get_settings()
        self.loaded = loaded
        feats = _features(loaded, dataset, settings)
        position = {v: i for i, v in enumerate(feats.video_ids)}
        self.ids = [v for v in video_ids if v in position]
        self.row = {v: i for i, v in enumerate(self.ids)}
        rows = np.asarray([position[v] for v in self.ids], np.int64)
        self.video = encode_videos(loaded.model, feats, rows, loaded.config, model_device(loaded.model))

    def score(self, queries: EncodedQueries, video_ids: list[str]) -> np.ndarray:
        """Exact scores ``[Q, len(video_ids)]`` float32 (every id must be in :attr:`ids`)."""
        rows = torch.as_tensor([self.row[v] for v in video_ids], dtype=torch.int64)
        return score_matrix(self.loaded.model, queries.encoding, take(self.video, rows))


def video_id_vector_batches(loaded: LoadedModel, dataset: str, video_ids: list[str], *, batch: int = 4096,
                            settings: Settings | None = None) -> tuple[list[str], Iterator[np.ndarray]]:
    """FAISS video vectors of just ``video_ids`` (any split), encoded ``batch`` videos at a time:
    (the ids that have ``ok`` frame features, in the given order; an iterator of ``[b, E]`` float32
    arrays in that order). Videos without them are left out. Used to re-index only new or changed
    videos; only one batch's encodings are held at once."""
    settings = settings or get_settings()
    feats = _features(loaded, dataset, settings)
    position = {v: i for i, v in enumerate(feats.video_ids)}
    found = [v for v in video_ids if v in position]
    rows = np.asarray([position[v] for v in found], np.int64)
    return found, _vector_batches(loaded, feats, rows, batch)


def encode_video_ids(loaded: LoadedModel, dataset: str, video_ids: list[str], *,
                     settings: Settings | None = None) -> tuple[np.ndarray, list[str]]:
    """:func:`video_id_vector_batches` in one batch: vectors ``[V, E]`` float32 and their ids."""
    found, batches = video_id_vector_batches(loaded, dataset, video_ids, batch=max(len(video_ids), 1),
                                             settings=settings)
    return (np.concatenate(list(batches)) if found else np.zeros((0, 0), np.float32)), found


def encode_example(loaded: LoadedModel, features: dict[str, tuple[np.ndarray, np.ndarray]],
                   infos: dict[str, dict]) -> np.ndarray:
    """The FAISS video vector ``[E]`` float32 of one video that is not in the store (a query clip).

    ``features``: per modality ``(values [T, D] float32, times [T] s)`` as the extractors return
    them (``extractors.example``); ``infos``: the extractors' stored ``_extractor.json`` (audio
    times are window starts there, shifted to centres here as :func:`load_features` does). The
    video is batched like a stored one (uniform frame sampling); a modality the model reads and the
    clip lacks is masked, as for a stored video without it.
    """
    wanted = modalities_for(loaded.config)
    values, times = features[CLIP_FRAMES]
    frames = Ragged.from_arrays([values], [times])
    extra: dict[str, tuple[Ragged, torch.Tensor]] = {}
    for modality in (AUDIO, MOTION):
        if modality not in wanted:
            continue
        got = features.get(modality)
        present = got is not None and len(got[0]) > 0
        # an absent modality: one zero step that the row does not reach (gathers need a value to point at)
        vals, stamps = got if present else (np.zeros((1, int(infos[modality]["dim"])), np.float32),
                                            np.zeros(1, np.float32))
        offset = audio_centre_s(infos[modality]) if modality == AUDIO else 0.0
        steps = Ragged.from_arrays([vals], [stamps + offset]).select(torch.tensor([0 if present else -1]))
        extra[modality] = (steps, torch.tensor([present]))
    rows = torch.zeros(1, dtype=torch.int64)
    batch = video_batch_at(rows, *uniform_positions(frames.lengths, loaded.config["max_frames"]), frames,
                           extra.get(AUDIO, (None, None)), extra.get(MOTION, (None, None)))
    model = loaded.model
    with torch.no_grad():
        model.eval()
        encoded = model.encode_video(batch.to(model_device(model)))
        return model.video_vectors(encoded).cpu().numpy()[0].astype(np.float32)

