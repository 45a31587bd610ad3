"""What one run's moment head trains on: the dataset's caption windows (:mod:`data.windows`) matched
to stored captions, and the features the head reads (:class:`HeadPlan`, made by :func:`plan_head`).

A window trains (and scores) the head when it places a stored caption: its ``(video_id,
caption_index)`` is a clip_text row of a video with frames. Windows that place a paragraph's
*sentence* (``text`` set: DiDeMo, ActivityNet Captions, whose manifest holds the paragraph) cannot:
the stored clip_text features encode the paragraph, not the sentence, so they are skipped with one
note. Audio / motion (``moments.modalities``) are read when stored for the dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.provenance import random_weights_label
from data.settings import Settings
from data.store import list_extractors
from data.windows import CaptionWindow, group_windows, read_windows, windows_path
from fusion.features import DatasetFeatures, load_features
from fusion.layers import l2norm
from fusion.moments.grid import video_durations


@dataclass
class HeadPlan:
    """The head's configuration (``moments:``), features, durations ``[V]`` (s) and ground truth:
    caption row -> ``[A, 2]`` windows (s) of its A annotators, for every split."""

    config: dict
    feats: DatasetFeatures
    modalities: tuple[str, ...]          # read beside the frames (audio / motion)
    durations: np.ndarray
    truth: dict[int, np.ndarray]
    notes: list[str] = field(default_factory=list)

    def split_queries(self, split: str) -> np.ndarray:
        """Caption rows of ``split`` that have a window (none when the split does not exist)."""
        if split not in self.feats.splits:
            return np.zeros(0, np.int64)
        return np.asarray([q for q in self.feats.split_captions(split).tolist() if q in self.truth], np.int64)

    def train_samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One sample per annotator window of a train caption: caption rows ``[N]``, video rows
        ``[N]`` and windows ``[N, 2]`` (s)."""
        caps = self.split_queries("train")
        rows = np.concatenate([np.full(len(self.truth[q]), q) for q in caps]).astype(np.int64)
        bounds = np.concatenate([self.truth[q] for q in caps])
        return rows, self.feats.caption_video[torch.as_tensor(rows)].numpy(), bounds

    def queries(self, captions: np.ndarray) -> torch.Tensor:
        """Unit clip_text EOT embeddings ``[N, D]`` of caption rows ``captions``."""
        text = self.feats.text_batch(torch.as_tensor(captions, dtype=torch.int64), 2, eot_only=True)  # [N, 1, D]
        return l2norm(text.tokens[:, 0])

    def meta(self) -> dict:
        """The head's description (:class:`~fusion.moments.head.MomentHead`), saved with the run."""
        dims = {CLIP_FRAMES: int(self.feats.frames.flat.shape[1])}
        dims.update({m: int(getattr(self.feats, m).flat.shape[1]) for m in self.modalities})
        out = {"config": self.config, "dims": dims, "text_dim": int(self.feats.text.flat.shape[1]),
               "extractor_ids": {m: self.feats.extractor_ids[m] for m in (CLIP_TEXT, *dims)},
               "windows": int(sum(len(self.truth[q]) for q in self.split_queries("train"))),
               "captions": int(len(self.split_queries("train"))), "notes": self.notes,
               "random_weights": self.feats.random_weights}
        if self.feats.random_weights:
            out["WARNING"] = random_weights_label()
        return out


def caption_truth(feats: DatasetFeatures, windows: list[CaptionWindow]) -> tuple[dict[int, np.ndarray], list[str]]:
    """Caption row -> ``[A, 2]`` windows (s) of the windows that place a stored caption, and a note
    for each kind of window that cannot be used."""
    videos = [feats.video_ids[v] for v in feats.caption_video.tolist()]
    row = {(v, c): q for q, (v, c) in enumerate(zip(videos, feats.caption_index))}
    sentences = sum(w.text is not None for w in windows)
    grouped = group_windows(w for w in windows if w.text is None)
    truth = {row[key]: bounds for key, bounds in grouped.items() if key in row}
    notes = []
    if sentences:
        notes.append(f"moments: {sentences} windows of {feats.dataset!r} place paragraph sentences (the manifest "
                     f"holds the paragraph, the window its sentence, as in DiDeMo / ActivityNet Captions); the "
                     f"stored clip_text features encode the paragraph, not the sentence, so the head skips them")
    if len(grouped) > len(truth):
        notes.append(f"moments: {len(grouped) - len(truth)} windowed captions of {feats.dataset!r} have no stored "
                     f"clip_text row of a video with frames; skipped")
    return truth, notes


def plan_head(config: dict, dataset: str, settings: Settings, say: Callable[[str], None]) -> HeadPlan | None:
    """The head's plan for a run of ``config`` on ``dataset``; None when no head is trained
    (``moments.enabled: false``; ``auto`` and no usable window of a train-split caption, said once).
    ``enabled: true`` without such windows is a ValueError (raised before anything trains)."""
    cfg = config["moments"]
    if cfg["enabled"] is False:
        return None
    path = windows_path(dataset, settings)
    windows = read_windows(path)
    if not windows and cfg["enabled"] == "auto":
        return None
    stored = tuple(m for m in cfg["modalities"] if list_extractors(settings.features_dir, dataset, m))
    notes = [f"moments: no {m} features stored for {dataset!r}: the head reads the frames without them"
             for m in cfg["modalities"] if m not in stored]
    feats = load_features(dataset, stored, extractors=config["extractors"], settings=settings,
                          val_holdout=config["val_holdout"])
    truth, skipped = caption_truth(feats, windows)
    plan = HeadPlan(cfg, feats, stored, video_durations(feats, settings), truth, notes + skipped)
    if not len(plan.split_queries("train")):
        message = (f"moments: no window of a train-split caption of {dataset!r} can train the head ({len(windows)} "
                   f"windows in {path})" + "".join(f"; {n}" for n in plan.notes))
        if cfg["enabled"] is True:
            raise ValueError(message + "; set moments.enabled to auto or false")
        say(message + ": no moment head")
        return None
    for note in plan.notes:
        say(note)
    return plan
