"""The home of ``python -m bench.serve --moments``: a dataset of GENERATED features with caption
windows, a run with a moment head trained on a part of it, and its index with the segment index.

``n`` videos of 6-12 frames at 1 fps (stored ``clip_frames`` and ``clip_text`` rows under the
extractor ids of a RANDOM-weights CLIP ``model``, so the service rebuilds that CLIP's real text
tower for queries), one caption each, whose window (2-5 s) is where a caption-specific direction is
added to the frames. The first ``n_train`` videos are the train split (the head learns from their
windows), the rest test; the index holds them all. meanP is the ranking model (frames and text
only); the head is trained for ``epochs`` epochs. Timings only: nothing here is a real video.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.manifest import VideoRecord, build_manifest, write_manifest
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.settings import get_settings
from data.store import FeatureRow, FeatureSet
from data.windows import CaptionWindow, windows_path, write_windows

RUN_ID = "bench-moments"
TOKENS = 6              # caption tokens (SOT .. EOT)


def _unit(rng: np.random.Generator, shape) -> np.ndarray:
    v = rng.normal(size=shape).astype(np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def write_features(root: Path, dataset: str, n: int, n_train: int, model: str, seed: int = 0) -> None:
    """Manifest, windows and the two feature folders of ``n`` generated videos under ``root``."""
    from extractors.registry import build_extractor

    settings = get_settings(root)
    specs = {m: build_extractor(m, model, "random", device="cpu").spec for m in (CLIP_FRAMES, CLIP_TEXT)}
    dim = specs[CLIP_FRAMES].dim
    rng = np.random.default_rng(seed)
    records, frames, texts, windows = [], [], [], []
    for i in range(n):
        vid, steps = f"video{i:06d}", int(rng.integers(6, 13))
        length = int(rng.integers(2, min(5, steps) + 1))
        start = int(rng.integers(0, steps - length + 1))
        topic = _unit(rng, dim)
        values = 0.5 * _unit(rng, (steps, dim))
        values[start:start + length] += topic
        tokens = 0.5 * _unit(rng, (TOKENS, dim))
        tokens[-1] += topic
        caption = f"generated caption {i}"
        records.append(VideoRecord(vid, f"videos/{vid}.mp4", "train" if i < n_train else "test", [caption],
                                   float(steps)))
        frames.append(FeatureRow(vid, values, np.arange(steps, dtype=np.float64)))
        texts.append(FeatureRow(vid, tokens, np.zeros(0), extra={"caption_index": 0, "eot_index": TOKENS - 1,
                                                                "caption": caption}))
        windows.append(CaptionWindow(vid, 0, float(start), float(start + length)))
    table, _ = build_manifest(records, root / "media", dataset=dataset)
    write_manifest(table, settings.manifest_path(dataset), home=root)
    write_windows(windows_path(dataset, settings), windows)
    for modality, rows in ((CLIP_FRAMES, frames), (CLIP_TEXT, texts)):
        store = FeatureSet(settings.feature_dir(dataset, modality, specs[modality].extractor_id), specs[modality])
        store.prepare()
        for a in range(0, len(rows), 1024):
            store.write_shard(rows[a:a + 1024])


def build_moments_home(root: Path, dataset: str, n: int, model: str, n_train: int = 400, epochs: int = 2) -> str:
    """:func:`write_features`, then the meanP run with its moment head, its index (with the
    segment index) recorded as the serving run; returns the run id."""
    from fusion.train import train
    from retrieval.index.serving import set_serving_run
    from retrieval.index.writer import build_from_model

    settings = get_settings(root)
    write_features(root, dataset, n, min(n_train, n - 1), model)
    train(dataset, "meanP", overrides=[f"moments.epochs={epochs}", "moments.enabled=true"], epochs=1,
          run_id=RUN_ID, settings=settings, quiet=True)
    build_from_model(dataset, RUN_ID, settings=settings, use_gpu=False)
    set_serving_run(dataset, RUN_ID, settings)
    return RUN_ID
