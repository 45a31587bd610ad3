"""A small stand-in for ``fusion.api`` (contract B) so retrieval tests run without trained models.

Vectors are deterministic: each video id hashes to a unit vector, each caption is its video's
vector plus a little caption-seeded noise. Install with :func:`install` (monkeypatches
``sys.modules["fusion.api"]``).
"""
from __future__ import annotations

import hashlib
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.manifest import VideoRecord, build_manifest, read_manifest, write_manifest
from data.settings import get_settings

IDS = {"clip_frames": "frames01", "clip_text": "text01"}


def _unit(key: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).normal(size=dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


@dataclass
class LoadedModel:
    model: object
    name: str
    config: dict
    run_dir: Path | None
    dataset: str
    extractor_ids: dict
    random_weights: bool
    fine_grained: bool


@dataclass
class EncodedSplit:
    text_vectors: np.ndarray
    query_video_ids: list
    captions: list
    video_vectors: np.ndarray
    video_ids: list
    fine_grained: bool

    def score(self, q_idx, v_idx):
        coarse = self.text_vectors[q_idx] @ self.video_vectors[v_idx].T
        return coarse + (0.01 * np.sin(50 * coarse) if self.fine_grained else 0)

    def similarity(self, chunk: int = 1024):
        return self.score(np.arange(len(self.text_vectors)), np.arange(len(self.video_ids)))


@dataclass
class EncodedQueries:
    vectors: np.ndarray
    encoding: object
    clip: np.ndarray


@dataclass
class FakeFusion:
    dim: int = 16
    query_dim: int | None = None          # encode_queries dimension (None: same as dim)
    noise: float = 1.5
    fine_grained: bool = False
    extractor_ids: dict = field(default_factory=lambda: dict(IDS))
    calls: list = field(default_factory=list)

    def caption_vector(self, video_id: str, caption: str) -> np.ndarray:
        v = _unit(video_id, self.dim) + self.noise * _unit("caption:" + caption, self.dim)
        return (v / np.linalg.norm(v)).astype(np.float32)

    def load_model(self, run, *, dataset=None, settings=None):
        settings = settings or get_settings()
        run_dir = None if str(run) == "zero-shot" else (Path(run) if Path(run).is_dir() else settings.runs_dir / str(run))
        return LoadedModel(None, "zero-shot" if run_dir is None else "meanP", {}, run_dir, dataset,
                           dict(self.extractor_ids), True, self.fine_grained)

    def encode_split(self, loaded, dataset, split, *, settings=None, captions="all"):
        self.calls.append(("encode_split", dataset, split, captions))
        manifest = read_manifest((settings or get_settings()).manifest_path(dataset)).split(split)
        texts, qids = [], []
        for rec in manifest.records():
            for cap in (rec.captions if captions == "all" else rec.captions[:1]):
                texts.append(cap)
                qids.append(rec.video_id)
        text = np.stack([self.caption_vector(v, c) for v, c in zip(qids, texts)])
        video = np.stack([_unit(v, self.dim) for v in manifest.video_ids])
        return EncodedSplit(text, qids, texts, video, manifest.video_ids, self.fine_grained)

    def video_vector_batches(self, loaded, dataset, splits, *, batch=4096, settings=None):
        manifest = read_manifest((settings or get_settings()).manifest_path(dataset))
        ids = [v for split in splits for v in manifest.split(split).video_ids]

        def batches():
            for start in range(0, len(ids), batch):
                self.calls.append(("video_vector_batches", dataset, len(ids[start:start + batch])))
                yield np.stack([_unit(v, self.dim) for v in ids[start:start + batch]])
        return ids, batches()

    def encode_queries(self, loaded, texts, *, settings=None):
        dim = self.query_dim or self.dim
        return np.stack([_unit(t.split(" of ")[-1], dim) for t in texts])   # "a clip of v3" -> near v3

    def exact(self, vectors, video_ids):
        """The fake fine-grained exact score: the coarse one plus a wiggle that reorders near ties."""
        coarse = vectors @ np.stack([_unit(v, self.dim) for v in video_ids]).T
        return (coarse + 0.01 * np.sin(50 * coarse)).astype(np.float32)

    def query_encoder(self, loaded, *, settings=None, device="auto", precision=None):
        fake = self

        class QueryEncoder:
            precision = "fp32"

            def encode(self, texts):
                fake.calls.append(("encode", len(texts)))
                vectors = fake.encode_queries(loaded, texts)
                return EncodedQueries(vectors, vectors, vectors)
        return QueryEncoder()

    def video_scorer(self, loaded, dataset, video_ids, *, settings=None):
        fake = self

        class VideoScorer:
            ids = list(video_ids)
            row = {v: i for i, v in enumerate(video_ids)}

            def score(self, queries, ids):
                return fake.exact(queries.vectors, ids)
        return VideoScorer()

    def install(self, monkeypatch) -> "FakeFusion":
        module = types.ModuleType("fusion.api")
        for name in ("load_model", "encode_split", "encode_queries", "video_vector_batches"):
            setattr(module, name, getattr(self, name))
        module.QueryEncoder, module.VideoScorer = self.query_encoder, self.video_scorer
        module.LoadedModel, module.EncodedSplit = LoadedModel, EncodedSplit
        monkeypatch.setitem(sys.modules, "fusion.api", module)
        return self


def write_dataset(name: str, n: int, *, captions_per_video=(1, 2, 3), path_suffix: str = "",
                  split: str = "test") -> list[str]:
    """A manifest of ``n`` videos (no files needed) with uneven caption counts; returns the ids."""
    settings = get_settings()
    ids = [f"v{i}" for i in range(n)]
    records = [VideoRecord(v, f"videos/{v}{path_suffix}.mp4", split,
                           [f"caption {j} of {v}" for j in range(captions_per_video[i % len(captions_per_video)])])
               for i, v in enumerate(ids)]
    table, _ = build_manifest(records, settings.root / "media" / name, dataset=name)
    write_manifest(table, settings.manifest_path(name))
    return ids
