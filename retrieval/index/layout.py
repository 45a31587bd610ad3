"""The build folder (contract D): its files, names and constants, and :class:`IndexBuild`, one
build opened. Shared by the read side (:mod:`retrieval.index.reader`) and the write side
(:mod:`retrieval.index.writer`); imports neither.

Layout::

    indexes/<dataset>/<run-id or "zero-shot">/<build-id>/
        index.faiss        FAISS index of the video vectors [N, D] (inner product)
        ids.json           row -> video_id
        manifest.parquet   snapshot of the dataset manifest the index covers
        info.json          extractor_ids, manifest_fingerprint, dim, index_type, params,
                           random_weights, model, run, dataset, splits, n_vectors, build_id,
                           build_options, checksums (sha256 of every other file), ...
        vectors.npy        optional: the vectors [N, D] float32, rows as ids.json (for reuse, and
                           for exact re-ranking of compressed indexes' candidates)
        part-NNN.*         instead of index.faiss in a partitioned build (shards by video-id hash,
                           zero-block groups): retrieval.index.shards
        videos.parquet     optional: per-video state of the build (written by retrieval.reindex)
    indexes/<dataset>/<run>/current      the live build-id (replaced atomically after a build)
    indexes/<dataset>/<run>/.lock        exclusive flock of the writers of this folder
    indexes/<dataset>/<run>/.tmp-<id>/   a build being written (debris once its writer died)
    indexes/<dataset>/<run>/.encoded-*   vectors being encoded (held under .encoding.lock)
    indexes/<dataset>/.serving.json      the dataset's serving run (retrieval.index.serving)

Build ids start with their UTC time, so sorting them sorts builds oldest first.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.manifest import Manifest
from data.settings import Settings, get_settings
from retrieval.index.faiss_index import IndexFolderError

VECTORS_FILE = "vectors.npy"
VIDEO_STATE_FILE = "videos.parquet"
REQUIRED_FILES = ("ids.json", "manifest.parquet", "info.json")          # + index.faiss or part-NNN.*
POINTER = "current"
WRITE_LOCK = ".lock"               # exclusive while a writer stages, publishes or tidies the folder
ENCODING_LOCK = ".encoding.lock"   # held shared while build_from_model's .encoded-* vectors file exists
CRASH_ENV = "TVR_INDEX_CRASH_AT"   # tests: data.faults.crash_point at one of BUILD_STEPS
BUILD_STEPS = ("files-written", "synced", "verified", "renamed", "pointer-written", "published")
ENCODE_BATCH = 4096                # videos encoded (and vectors added to the index) per batch


def index_root(dataset: str, run: str, settings: Settings | None = None) -> Path:
    """``indexes/<dataset>/<run>``: the builds of one dataset and run, and their ``current`` pointer."""
    return (settings or get_settings()).indexes_dir / dataset / run


def build_ids(root: Path) -> list[str]:
    """The build folders of ``indexes/<dataset>/<run>``, oldest first (build ids start with their UTC time)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def build_options(info: dict) -> dict:
    """The index options a build was made with: ``info.json["build_options"]`` (``index_type``,
    ``memory_gb``, ``factory``, ``shards``, ``tune_target``); for a build written before they were
    recorded, what its ``info.json`` shows (a factory string, the shard count, the tuning target)."""
    if isinstance(info.get("build_options"), dict):
        return dict(info["build_options"])
    factory = info.get("params", {}).get("factory") if info.get("index_type") == "factory" else None
    return {"index_type": "auto", "memory_gb": None, "factory": factory,
            "shards": int((info.get("partitions") or {}).get("shards", 1)),
            "tune_target": (info.get("tuning") or {}).get("target")}


@dataclass
class IndexBuild:
    """One build folder, opened (:func:`retrieval.index.reader.verify_build`)."""

    folder: Path
    info: dict
    ids: list[str]
    index: faiss.Index               # or a retrieval.index.shards.PartitionedIndex (same d / ntotal / search)
    manifest: Manifest
    warning: str | None = None       # set when ``current`` was unusable and this is a fallback build

    @property
    def build_id(self) -> str:
        return self.folder.name

    @cached_property
    def paths(self) -> dict[str, str]:
        """video_id -> path (relative to the video root) from the manifest snapshot."""
        table = self.manifest.table
        return dict(zip(table.column("video_id").to_pylist(), table.column("path").to_pylist()))

    def path_of(self, video_id: str) -> dict:
        """``{"path": relative, "abs_path": absolute}`` of a video from the manifest snapshot."""
        rel = self.paths.get(video_id)
        return {"path": rel, "abs_path": None if rel is None else str(self.manifest.abs_path(rel))}

    def stored_vectors(self) -> np.ndarray | None:
        """The indexed vectors ``[N, D]`` float32 (memory-mapped, rows as :attr:`ids`) when the build
        kept them (``store_vectors=True``), else None."""
        path = self.folder / VECTORS_FILE
        if not path.is_file():
            return None
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
        if vectors.shape != (len(self.ids), self.index.d):
            raise IndexFolderError(f"{path}: shape {vectors.shape}, expected ({len(self.ids)}, {self.index.d})")
        return vectors

    def video_state(self) -> pa.Table | None:
        """The per-video state table the build was written with (``video_state=``), else None."""
        path = self.folder / VIDEO_STATE_FILE
        return pq.read_table(path) if path.is_file() else None
