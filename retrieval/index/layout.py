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

Build ids start with their UTC time, so sorting them sorts builds oldest first. A published build
never changes: :meth:`IndexBuild.check_files` compares its files with their identity when it was
opened (:class:`FileStamp`), so a reader refuses a build changed under it (:class:`BuildDamaged`)
before it reads a truncated memory map (SIGBUS: the process dies).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.manifest import Manifest
from data.settings import Settings, get_settings
from retrieval.index.faiss_index import IndexFolderError
from retrieval.index.segments import SegmentIndex

VECTORS_FILE = "vectors.npy"
VIDEO_STATE_FILE = "videos.parquet"
REQUIRED_FILES = ("ids.json", "manifest.parquet", "info.json")          # + index.faiss or part-NNN.*
POINTER = "current"
WRITE_LOCK = ".lock"               # exclusive while a writer stages, publishes or tidies the folder
ENCODING_LOCK = ".encoding.lock"   # held shared while build_from_model's .encoded-* vectors file exists
CRASH_ENV = "TVR_INDEX_CRASH_AT"   # tests: data.faults.crash_point at one of BUILD_STEPS
BUILD_STEPS = ("files-written", "synced", "verified", "renamed", "pointer-written")
ENCODE_BATCH = 4096                # videos encoded (and vectors added to the index) per batch


def mmap_threshold_bytes() -> int:
    """Index files (FAISS files, ``vectors.npy``) larger than this are memory-mapped, smaller ones read
    into memory: ``$TVR_INDEX_MMAP_GB`` GB, default half the RAM."""
    gb = get_settings().index_mmap_gb
    if gb is not None:
        return int(gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


class BuildDamaged(IndexFolderError):
    """A file of an opened build changed on disk after it was opened (published builds never
    change); reading on could kill the process. :attr:`build_id`: the build; :attr:`damage`: what changed."""

    def __init__(self, build_id: str, damage: str):
        super().__init__(f"index build {build_id} changed on disk after it was opened: {damage}; "
                         f"re-open the index (the newest build that verifies answers)")
        self.build_id, self.damage = build_id, damage


class FileStamp(NamedTuple):
    """A file's (or folder's) identity as a build was opened: inode, size in bytes, modification time in ns."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        """One ``os.stat``; raises :class:`OSError` when ``path`` is gone."""
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


FOLDER_STAMP = "."                 # the key of the build folder's own stamp among its files'


def stamp_build(folder: Path) -> dict[str, FileStamp]:
    """The :class:`FileStamp` of the build folder (key :data:`FOLDER_STAMP`, taken first: a file
    added meanwhile changes it) and of every file in it, by name."""
    stamps = {FOLDER_STAMP: FileStamp.of(folder)}
    with os.scandir(folder) as entries:
        for entry in entries:
            stamps[entry.name] = FileStamp.of(folder / entry.name)
    return stamps


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
    stamps: dict[str, FileStamp] = field(repr=False)   # the folder and its files as opened (:func:`stamp_build`)
    warning: str | None = None       # set when ``current`` was unusable and this is a fallback build

    @property
    def build_id(self) -> str:
        return self.folder.name

    @cached_property
    def row(self) -> dict[str, int]:
        """video_id -> its row in the index (and in :attr:`ids`)."""
        return {vid: i for i, vid in enumerate(self.ids)}

    @cached_property
    def paths(self) -> dict[str, str]:
        """video_id -> path (relative to the video root) from the manifest snapshot."""
        table = self.manifest.table
        return dict(zip(table.column("video_id").to_pylist(), table.column("path").to_pylist()))

    def path_of(self, video_id: str) -> dict:
        """``{"path": relative, "abs_path": absolute}`` of a video from the manifest snapshot."""
        rel = self.paths.get(video_id)
        return {"path": rel, "abs_path": None if rel is None else str(self.manifest.abs_path(rel))}

    def damage(self) -> str | None:
        """What changed in the build folder since it was opened (:attr:`stamps`), or None: the folder
        gone or replaced, a file gone, replaced (another inode), resized or rewritten, a file added.
        One ``os.stat`` per file (the folder is listed only once a change is found)."""
        since, opened = f"since build {self.build_id} was opened", f"when build {self.build_id} was opened"
        try:
            folder = FileStamp.of(self.folder)
        except OSError:
            return f"the build folder is gone (build {self.build_id})"
        if folder.inode != self.stamps[FOLDER_STAMP].inode:
            return f"the build folder was replaced {since}"
        for name, then in self.stamps.items():
            if name == FOLDER_STAMP:
                continue
            try:
                now = FileStamp.of(self.folder / name)
            except OSError:
                return f"{name} is gone (it was there {opened})"
            if now.inode != then.inode:
                return f"{name} was replaced by another file {since}"
            if now.size != then.size:
                return f"{name} is {now.size} bytes, was {then.size} bytes {opened}"
            if now.mtime_ns != then.mtime_ns:
                return f"{name} was rewritten in place {since}"
        if folder != self.stamps[FOLDER_STAMP]:
            added = sorted(set(os.listdir(self.folder)) - set(self.stamps))
            return (f"{added[0]} was added to the build folder {since}"
                    if added else f"the build folder changed {since}")
        return None

    def check_files(self) -> None:
        """Raise :class:`BuildDamaged` when :meth:`damage` finds a change; cheap (a few ``os.stat``),
        for every query batch, before any read of the build's memory-mapped files."""
        damage = self.damage()
        if damage is not None:
            raise BuildDamaged(self.build_id, damage)

    def stored_vectors(self) -> np.ndarray | None:
        """The indexed vectors ``[N, D]`` float32 (rows as :attr:`ids`) when the build kept them
        (``store_vectors=True``), else None: read into memory, or memory-mapped when the file is
        larger than :func:`mmap_threshold_bytes` (as the FAISS files are). The files are checked
        first (:meth:`check_files`), so a damaged file is refused, never mapped."""
        if VECTORS_FILE not in self.stamps:
            return None
        self.check_files()
        path = self.folder / VECTORS_FILE
        mapped = self.stamps[VECTORS_FILE].size > mmap_threshold_bytes()
        try:
            vectors = np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise IndexFolderError(f"{VECTORS_FILE} of build {self.build_id} cannot be read "
                                   f"({str(err)[:200]})") from None
        if vectors.shape != (len(self.ids), self.index.d):
            raise IndexFolderError(f"{path}: shape {vectors.shape}, expected ({len(self.ids)}, {self.index.d})")
        return vectors

    @cached_property
    def segments(self) -> SegmentIndex | None:
        """The build's window index (corpus moment mode), or None when its run has no moment head
        (``info.json["segments"]`` absent)."""
        if "segments" not in self.info:
            return None
        self.check_files()
        return SegmentIndex.read(self.folder)

    def video_state(self) -> pa.Table | None:
        """The per-video state table the build was written with (``video_state=``), else None."""
        path = self.folder / VIDEO_STATE_FILE
        return pq.read_table(path) if path.is_file() else None
