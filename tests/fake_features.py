"""Test code: contract-A feature stores written from generated arrays (no production module imports it).

:func:`write_fake_dataset` writes a manifest plus ``clip_frames`` / ``clip_text`` / ``audio`` /
``motion`` features with the contract shapes and columns, labelled ``random_weights=True``.
With ``attributes`` (one dict per video, e.g. from :mod:`data.synthetic`), values are *structured*:
frames carry the visual attributes (and the motion as a drift over time), audio windows the sound,
motion clips the motion, and caption tokens one embedding per attribute word, each plus noise, so
a model that uses a modality can be told apart from one that cannot. Text and video use unrelated
embeddings (like two random towers), so zero-shot is at chance and every mapping must be learned.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from data.manifest import VideoRecord, build_manifest, write_manifest
from data.settings import Settings
from data.store import ExtractorSpec, FeatureRow, FeatureSet

DIMS = {"clip_frames": 512, "clip_text": 512, "audio": 128, "motion": 2304}
VISUAL = ("shape", "colour", "size", "texture")


def _spec(modality: str, dim: int, tag: str) -> ExtractorSpec:
    extra = {"clip_text": {"caption_index": pa.int32(), "eot_index": pa.int32(), "caption": pa.string()},
             "audio": {"has_audio": pa.bool_()}}.get(modality, {})
    params = {"model": f"fake-{modality}", "weights": "random", "weights_sha256": None, "seed": 0,
              "code_version": tag}
    return ExtractorSpec(modality, dim, params, True, extra)


class _Embedder:
    """A fixed random unit vector per (group, value) in each dimension."""

    def __init__(self, seed: int):
        self.seed, self.cache = seed, {}

    def __call__(self, key: str, dim: int) -> np.ndarray:
        if (key, dim) not in self.cache:
            h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
            v = np.random.default_rng([self.seed, h, dim]).normal(size=dim).astype(np.float32)
            self.cache[(key, dim)] = v / np.linalg.norm(v)
        return self.cache[(key, dim)]


def write_fake_dataset(settings: Settings, dataset: str, n_videos: int, *, seed: int = 0,
                       frames: tuple[int, int] = (8, 16), captions_per_video: int = 3,
                       tokens: tuple[int, int] = (8, 14), no_audio_every: int = 4, dims: dict | None = None,
                       attributes: list[dict] | None = None, splits: tuple[float, float] = (0.6, 0.2),
                       split_names: list[str] | None = None, captions: list[list[str]] | None = None,
                       has_audio: list[bool] | None = None, video_ids: list[str] | None = None, noise: float = 1.0, shard_size: int = 64) -> dict[str, str]:
    """Write manifest + features for ``n_videos`` videos; returns modality -> extractor-id.

    Every ``no_audio_every``-th video has no audio (``empty`` row, ``has_audio=False``) unless
    ``has_audio`` is given. ``splits`` = (train, val) fractions (rest test) unless ``split_names``
    is given; ``captions`` replaces the generated captions.
    """
    dims = {**DIMS, **(dims or {})}
    rng = np.random.default_rng(seed)
    emb = _Embedder(seed)
    n_train, n_val = int(splits[0] * n_videos), int(splits[1] * n_videos)
    split_of = split_names or ["train"] * n_train + ["val"] * n_val + ["test"] * (n_videos - n_train - n_val)
    records, rows = [], {m: [] for m in dims}
    for i in range(n_videos):
        for modality in dims:
            rows[modality].append([])   # rows of video i (a video's rows stay in one shard)
        vid = video_ids[i] if video_ids else f"vid{i:05d}"
        attrs = attributes[i] if attributes else None
        n_f = int(rng.integers(frames[0], frames[1] + 1))
        t_frames = np.arange(n_f, dtype=np.float64) + 0.5
        duration = float(n_f)
        caps = captions[i] if captions else [f"caption {c} of {vid}" for c in range(captions_per_video)]
        records.append(VideoRecord(vid, f"videos/{vid}.mp4", split_of[i], caps, duration))
        frame_vals = rng.normal(size=dims["clip_frames"]).astype(np.float32) + rng.normal(size=(n_f, dims["clip_frames"])).astype(np.float32) * noise
        if attrs is not None:
            look = sum(emb(f"frame:{k}={attrs[k]}", dims["clip_frames"]) for k in VISUAL if k in attrs)
            drift = emb(f"frame:drift={attrs.get('motion')}", dims["clip_frames"])
            frame_vals = frame_vals * 0.3 + 3 * look + np.linspace(-2, 2, n_f)[:, None] * drift * (attrs.get("motion") != "still")
        rows["clip_frames"][-1].append(FeatureRow(vid, frame_vals.astype(np.float32), t_frames))
        audio_ok = has_audio[i] if has_audio else not (no_audio_every and i % no_audio_every == no_audio_every - 1)
        n_a = int(duration / 0.96)
        if audio_ok:
            a = rng.normal(size=(n_a, dims["audio"])).astype(np.float32) * noise
            if attrs is not None:
                a = a * 0.3 + 3 * emb(f"audio:sound={attrs.get('sound')}", dims["audio"])
            rows["audio"][-1].append(FeatureRow(vid, a.astype(np.float32), np.arange(n_a) * 0.96, extra={"has_audio": True}))
        else:
            rows["audio"][-1].append(FeatureRow(vid, np.zeros((0, dims["audio"]), np.float32), np.zeros(0), "empty",
                                            extra={"has_audio": False}))
        n_m = max(1, n_f // 2)
        m = rng.normal(size=(n_m, dims["motion"])).astype(np.float32) * noise
        if attrs is not None:
            m = m * 0.3 + 3 * emb(f"motion:motion={attrs.get('motion')}", dims["motion"])
        rows["motion"][-1].append(FeatureRow(vid, m.astype(np.float32), np.arange(n_m) * 2.0 + 1.0))
        for c, cap in enumerate(caps):
            n_t = int(rng.integers(tokens[0], tokens[1] + 1))
            tok = rng.normal(size=(n_t, dims["clip_text"])).astype(np.float32) * noise
            if attrs is not None:
                words = [emb(f"text:{k}={attrs[k]}", dims["clip_text"]) for k in attrs]
                tok = tok * 0.3
                for j, w in enumerate(words):
                    tok[1 + j % (n_t - 2)] += 3 * w
                tok[-1] += 2 * sum(words)
            rows["clip_text"][-1].append(FeatureRow(vid, tok, np.zeros(0), extra={
                "caption_index": c, "eot_index": n_t - 1, "caption": cap}))
    table, _ = build_manifest(records, settings.dataset_dir(dataset) / "videos", dataset=dataset)
    write_manifest(table, settings.manifest_path(dataset))
    ids = {}
    for modality, dim in dims.items():
        fs = FeatureSet(settings.feature_dir(dataset, modality, _spec(modality, dim, "fake-1").extractor_id),
                        _spec(modality, dim, "fake-1"))
        fs.prepare()
        per_video = rows[modality]
        for start in range(0, len(per_video), shard_size):
            fs.write_shard([r for video_rows in per_video[start: start + shard_size] for r in video_rows])
        ids[modality] = fs.spec.extractor_id
    return ids


def write_structured_synthetic(settings: Settings, dataset: str = "synthetic", n: int = 300, seed: int = 0,
                               noise: float = 1.0) -> dict[str, str]:
    """Structured fake features for the synthetic-av *plan* (same ids, splits, captions, attributes,
    audio presence) without rendering videos; also writes ``annotations.jsonl`` and ``oracle.json``
    into the dataset folder, as the real generator does. For developing the ablation before real
    extracted features exist; every output is labelled random weights."""
    import json

    from data.atomic import write_json_atomic, write_text_atomic
    from data.synthetic.oracle import oracle_ceilings
    from data.synthetic.scenes import captions_for, plan_dataset

    specs = plan_dataset(n, seed)
    folder = settings.dataset_dir(dataset)
    lines = [json.dumps({"video_id": s.video_id, "video": s.filename, "captions": captions_for(s),
                         "split": s.split, "has_audio": s.has_audio, "attributes": s.attributes}) for s in specs]
    write_text_atomic(folder / "annotations.jsonl", "\n".join(lines) + "\n")
    test = [s.attributes for s in specs if s.split == "test"]
    write_json_atomic(folder / "oracle.json", {"n_test": len(test), "t2v": oracle_ceilings(test)})
    return write_fake_dataset(settings, dataset, len(specs), seed=seed, frames=(2, 6),
                              attributes=[s.attributes for s in specs], split_names=[s.split for s in specs],
                              captions=[captions_for(s) for s in specs],
                              has_audio=[s.has_audio for s in specs], noise=noise,
                              video_ids=[s.video_id for s in specs])
