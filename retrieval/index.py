"""Video embeddings -> FAISS index folder (contract D), and searching it.

Layout::

    indexes/<dataset>/<run-id or "zero-shot">/<build-id>/
        index.faiss        FAISS index of the video vectors [N, D] (inner product)
        ids.json           row -> video_id
        manifest.parquet   snapshot of the dataset manifest the index covers
        info.json          extractor_ids, manifest_fingerprint, dim, index_type, params,
                           random_weights, model, run, dataset, splits, n_vectors, build_id, ...
        vectors.npy        optional: the vectors [N, D] float32, rows as ids.json (for reuse, and
                           for exact re-ranking of compressed indexes' candidates)
        part-NNN.*         instead of index.faiss in a partitioned build (shards by video-id hash,
                           zero-block groups): retrieval.shards
        videos.parquet     optional: per-video state of the build (written by retrieval.reindex)
    indexes/<dataset>/<run>/current   the live build-id (replaced atomically after a build)

A build is written into a hidden temporary folder, every file and the folder are fsynced, the
build is verified (it loads, the vector count equals the id count, every file matches the sha256
recorded in ``info.json["checksums"]``) and renamed into place (:func:`stage_build`); only then is
``current`` swapped with :func:`data.atomic.write_text_atomic` and the folder fsynced
(:func:`publish_build`, which verifies again), so a reader never sees a half-built index and a
crash at any step leaves the previous build current. A reader that finds ``current`` missing or
naming a missing or corrupt build falls back to the newest verified build with a warning
(:attr:`IndexBuild.warning`); :func:`rebuild_reason` then asks for a rebuild, which repairs
``current``. Tests inject a SIGKILL at each step with ``TVR_INDEX_CRASH_AT=<step>``
(:data:`BUILD_STEPS`). Writers of one ``indexes/<dataset>/<run>`` folder hold an
exclusive ``flock`` on its ``.lock`` file while they write, so :func:`remove_partial_builds` can
tell a killed writer's ``.tmp-*`` debris from a build in progress.

The FAISS layer (index type by scale or memory budget, factory strings, streamed adding, search
parameters, tuning) is :mod:`retrieval.faiss_index`; partitioned builds are :mod:`retrieval.shards`.
``info.json["params"]`` holds the build's search defaults (``nprobe`` / ``efSearch`` / ``rerank``),
the ``factory`` string and the ``reason`` the index was chosen; ``info.json["tuning"]`` the recall /
latency curve of ``--tune``. Indexes larger than ``TVR_INDEX_MMAP_GB`` (default: half the machine's
memory) are opened memory-mapped (``faiss.IO_FLAG_MMAP``).

Build with ``python -m retrieval.index --dataset D [--run R]``.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import locks
from data.atomic import write_json_atomic, write_text_atomic
from data.cli import add_version
from data.fingerprint import sha256_file
from data.manifest import Manifest, manifest_fingerprint, read_manifest
from data.progress import Bars, ProgressEvent, ProgressFn
from data.settings import Settings, get_settings
from retrieval.faiss_index import (ADD_BATCH, EXACT_UP_TO, INDEX_TYPES, SEARCH_KEYS, IndexFolderError,
                                   apply_search_params, build_faiss, builds_on_gpu, exact_top, sample_rows, tune)
from retrieval.shards import VECTORS_FILE, Mapper, PartitionedIndex, build_parts, plan_parts
from retrieval.runs import ZERO_SHOT, fusion_api, load, run_name
from retrieval.serving import set_serving_run

VIDEO_STATE_FILE = "videos.parquet"
REQUIRED_FILES = ("ids.json", "manifest.parquet", "info.json")          # + index.faiss or part-NNN.*
CRASH_ENV = "TVR_INDEX_CRASH_AT"
BUILD_STEPS = ("files-written", "synced", "verified", "renamed", "pointer-written", "published")
log = logging.getLogger(__name__)
ENCODING_LOCK = ".encoding.lock"   # held shared while build_from_model's .encoded-* vectors file exists
ENCODE_BATCH = 4096           # videos encoded (and vectors added to the index) per batch by build_from_model
RANDOM_WARNING = "RANDOM WEIGHTS: embeddings come from randomly initialised feature extractors"


# ---------------------------------------------------------------------------------------------
# Index folders (contract D)
# ---------------------------------------------------------------------------------------------
def index_root(dataset: str, run: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).indexes_dir / dataset / run


@dataclass
class IndexBuild:
    """One build folder, opened."""

    folder: Path
    info: dict
    ids: list[str]
    index: faiss.Index
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


def write_build(dataset: str, run: str, vectors: np.ndarray, video_ids: Sequence[str], *,
                info: dict, index_type: str = "auto", params: dict | None = None,
                settings: Settings | None = None, use_gpu: bool | None = None, keep: int = 3,
                manifest: Manifest | None = None, video_state: pa.Table | None = None,
                store_vectors: bool = False, **layout) -> Path:
    """Build the FAISS index, write the build folder atomically and make it ``current``; keep the
    newest ``keep`` builds. :func:`stage_build` then :func:`publish_build`; see there.
    Returns the build folder."""
    settings = settings or get_settings()
    folder = stage_build(dataset, run, vectors, video_ids, info=info, index_type=index_type, params=params,
                         settings=settings, use_gpu=use_gpu, manifest=manifest, video_state=video_state,
                         store_vectors=store_vectors, **layout)
    publish_build(folder, keep)
    return folder


@contextmanager
def _write_lock(root: Path) -> Iterator[None]:
    """Exclusive ``flock`` on ``root/.lock`` (released by the kernel when the holder dies)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def stage_build(dataset: str, run: str, vectors: np.ndarray | Path, video_ids: Sequence[str], *,
                info: dict, index_type: str = "auto", params: dict | None = None,
                settings: Settings | None = None, use_gpu: bool | None = None,
                manifest: Manifest | None = None, video_state: pa.Table | None = None,
                store_vectors: bool = False, memory_gb: float | None = None, factory: str | None = None,
                shards: int = 1, processes: int = 1, tune_target: float | None = None,
                batch: int = ADD_BATCH, mapper: Mapper | None = None) -> Path:
    """Build the FAISS index and write a complete build folder beside the others, NOT yet current.

    ``vectors``: ``[N, D]`` float32, an array or the path of a ``.npy`` file (such as
    :func:`build_from_model` writes); a file is moved into the build as its ``vectors.npy`` and read
    memory-mapped, ``batch`` rows at a time, so the vectors are never all in memory at once.

    ``info`` must hold ``extractor_ids``, ``random_weights`` and ``model``; the manifest snapshot,
    its fingerprint, dim, index type and params are added here. ``manifest``: the manifest the
    vectors were computed for (default: the dataset's manifest file as it is now).
    ``video_state``: a table saved as ``videos.parquet``; ``store_vectors``: also save the vectors
    ``[N, D]`` as ``vectors.npy`` (so a later build can reuse them; compressed indexes re-rank their
    candidates from it). ``memory_gb`` / ``factory``: :func:`retrieval.faiss_index.plan_index`
    (an IVF-PQ choice stores the vectors for re-ranking). ``shards``: parts by video-id hash, built
    by ``processes`` processes or as jobs through ``mapper`` (:func:`retrieval.shards.build_parts`);
    vectors with zero blocks (M2HF) are partitioned by pattern (:mod:`retrieval.shards`).
    ``tune_target``: :func:`tune_build` before publishing. The index options (``index_type``,
    ``memory_gb``, ``factory``, ``shards``, ``tune_target``) are recorded as
    ``info.json["build_options"]``, for the re-index to build the same way (:func:`build_options`).
    Returns the build folder.
    """
    settings = settings or get_settings()
    source = Path(vectors) if isinstance(vectors, (str, Path)) else None
    if source is not None:
        vectors = np.load(source, mmap_mode="r", allow_pickle=False)
    missing = [key for key in ("extractor_ids", "random_weights", "model") if key not in info]
    if missing:
        raise IndexFolderError(f"index info lacks {missing}")
    if len(video_ids) != len(vectors):
        raise IndexFolderError(f"{len(video_ids)} video ids for {len(vectors)} vectors")
    if len(set(video_ids)) != len(video_ids):
        raise IndexFolderError("duplicate video ids among the vectors to index")
    manifest_path = settings.manifest_path(dataset)
    manifest = manifest or read_manifest(manifest_path)
    unknown = sorted(set(video_ids) - set(manifest.video_ids))
    if unknown:
        raise IndexFolderError(f"{len(unknown)} video ids are not in {manifest_path} (first: {unknown[:3]})")
    root = index_root(dataset, run, settings)
    build_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:4]
    tmp = root / f".tmp-{build_id}"
    with _write_lock(root):
        tmp.mkdir(parents=True)
        try:
            if source is not None:
                os.replace(source, tmp / VECTORS_FILE)        # the open memory map follows the file
            options = {"index_type": index_type, "memory_gb": memory_gb, "factory": factory, "shards": shards,
                       "tune_target": tune_target}
            start = time.perf_counter()
            layout = _write_index(tmp, vectors, video_ids, index_type, params, use_gpu=use_gpu, memory_gb=memory_gb,
                                  factory=factory, shards=shards, processes=processes, batch=batch, mapper=mapper)
            build_seconds = time.perf_counter() - start
            index_type, params = layout.pop("index_type"), layout.pop("params")
            keep_vectors = store_vectors or params.get("rerank") or tune_target is not None
            if keep_vectors and not (tmp / VECTORS_FILE).exists():
                np.save(tmp / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
            elif not keep_vectors:
                (tmp / VECTORS_FILE).unlink(missing_ok=True)
            write_json_atomic(tmp / "ids.json", list(video_ids))
            pq.write_table(manifest.table, tmp / "manifest.parquet")
            if video_state is not None:
                pq.write_table(video_state, tmp / VIDEO_STATE_FILE)
            full_info = {
                **info,
                "dataset": dataset, "run": run, "build_id": build_id,
                "manifest_fingerprint": manifest_fingerprint(manifest),
                "dim": int(vectors.shape[1]), "n_vectors": int(len(vectors)),
                "index_type": index_type, "params": params, "build_options": options, **layout,
                "gpu_used": builds_on_gpu(index_type, use_gpu) and "partitions" not in layout,
                "build_seconds": round(build_seconds, 3),
                "faiss_version": faiss.__version__,
                "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            if full_info["random_weights"]:
                full_info["WARNING"] = RANDOM_WARNING
            if tune_target is not None:
                full_info["tuning"] = tune_build(tmp, full_info, tune_target)
                full_info["params"].update(full_info["tuning"]["chosen"])
            full_info["checksums"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            write_json_atomic(tmp / "info.json", full_info)
            _crash_point("files-written")
            for path in tmp.iterdir():
                _fsync(path)
            _fsync(tmp)
            _crash_point("synced")
            verify_build(tmp)
            _crash_point("verified")
            os.replace(tmp, root / build_id)
            _fsync(root)
            _crash_point("renamed")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return root / build_id


def _write_index(folder: Path, vectors: np.ndarray, video_ids: Sequence[str], index_type: str, params: dict | None,
                 *, use_gpu, memory_gb, factory, shards: int, processes: int, batch: int, mapper: Mapper | None) -> dict:
    """Write ``index.faiss`` (one index) or the ``part-NNN.*`` files (shards, zero-block groups);
    returns ``index_type``, ``params`` and, for partitioned builds, ``partitions``."""
    specs = plan_parts(video_ids, vectors, shards, zero_blocks=factory is None)
    if len(specs) > 1 or shards > 1:
        partitions = build_parts(vectors, specs, folder, shards=shards, processes=processes, index_type=index_type,
                                 memory_gb=memory_gb, factory=factory, batch=batch, mapper=mapper)
        first = partitions["parts"][0]
        search_defaults = {k: first[k] for k in SEARCH_KEYS if k in first}
        kinds = sorted({p["type"] for p in partitions["parts"]})
        return {"index_type": "+".join(kinds), "params": {**search_defaults, **(params or {}),
                "reason": f"{partitions['count']} parts; " + first["reason"]}, "partitions": partitions}
    index, index_type, params = build_faiss(vectors, index_type, params, use_gpu=use_gpu, memory_gb=memory_gb,
                                            factory=factory, batch=batch)
    faiss.write_index(index, str(folder / "index.faiss"))
    return {"index_type": index_type, "params": params}


def tune_build(folder: Path, info: dict, target: float, queries: int = 200, k: int = 10) -> dict:
    """Recall@k / latency curve of a written build (:func:`retrieval.faiss_index.tune`) on held-out
    queries: ``queries`` stored vectors chosen at random plus Gaussian noise of norm 0.1 x theirs
    (so no query is its own answer); exact answers from the stored vectors in chunks. Returns the
    ``tuning`` entry of ``info.json`` (target, chosen setting, curve)."""
    index = _read_index(folder, info)
    vectors = np.load(folder / VECTORS_FILE, mmap_mode="r") if (folder / VECTORS_FILE).is_file() else None
    if vectors is None:
        raise IndexFolderError("tuning needs the vectors: build with store_vectors (or a budget that re-ranks)")
    rng = np.random.default_rng(0)
    picked = np.asarray(vectors[sample_rows(len(vectors), queries)], np.float32)
    noise = rng.normal(size=picked.shape).astype(np.float32)
    noise *= 0.1 * np.linalg.norm(picked, axis=1, keepdims=True) / np.linalg.norm(noise, axis=1, keepdims=True)
    held_out = picked + noise
    exact = exact_top(held_out, (vectors[s:s + 100_000] for s in range(0, len(vectors), 100_000)), k)
    result = tune(index, held_out, exact, target=target, k=k,
                  vectors=vectors if info["params"].get("rerank") else None)
    return {**result, "queries_from": f"{len(held_out)} stored vectors + noise (0.1 x norm), held out of nothing else"}


def mmap_threshold_bytes() -> int:
    """Index files larger than this are memory-mapped: ``$TVR_INDEX_MMAP_GB`` GB, default half the RAM."""
    if os.environ.get("TVR_INDEX_MMAP_GB"):
        return int(float(os.environ["TVR_INDEX_MMAP_GB"]) * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def _read_index(folder: Path, info: dict):
    """The build's FAISS index (memory-mapped when larger than :func:`mmap_threshold_bytes`) or its
    :class:`retrieval.shards.PartitionedIndex`."""
    partitions = info.get("partitions")
    files = ([folder / f"part-{i:03d}.faiss" for i in range(partitions["count"])] if partitions
             else [folder / "index.faiss"])
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise IndexFolderError(f"{folder} lacks {missing[:3]}")
    flags = faiss.IO_FLAG_MMAP if sum(p.stat().st_size for p in files) > mmap_threshold_bytes() else 0
    if partitions:
        return PartitionedIndex.read(folder, partitions["count"], int(info["dim"]), flags)
    return faiss.read_index(str(files[0]), flags)


def publish_build(folder: Path, keep: int = 3) -> None:
    """Verify the staged build ``folder`` and make it current (atomic pointer swap, then the folder
    is fsynced); keep the newest ``keep``. A build that fails verification is never published."""
    root = folder.parent
    verify_build(folder)
    with _write_lock(root):
        write_text_atomic(root / "current", folder.name + "\n")
        _crash_point("pointer-written")
        _fsync(root)
        _crash_point("published")
        prune_builds(root, keep)


def _crash_point(step: str) -> None:
    """Tests only: SIGKILL this process at ``step`` when ``$TVR_INDEX_CRASH_AT`` names it."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's (its entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def verify_build(folder: Path) -> IndexBuild:
    """Open the build ``folder`` and check it: every required file present, every file matching
    the sha256 recorded in ``info.json`` (builds written before checksums were recorded are checked
    by loading only), the FAISS index loading with as many vectors as ``ids.json`` has ids and the
    dimension ``info.json`` states. Returns the opened build; raises :class:`IndexFolderError`
    naming the first problem."""
    needed = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if needed:
        raise IndexFolderError(f"{folder} lacks {needed}")
    try:
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise IndexFolderError(f"{folder}: unreadable info.json or ids.json ({err})") from None
    if not isinstance(info, dict) or not isinstance(ids, list):
        raise IndexFolderError(f"{folder}: info.json is not an object or ids.json is not a list")
    for name, digest in (info.get("checksums") or {}).items():
        path = folder / name
        if name == "info.json" or not path.is_file() or sha256_file(path) != digest:
            raise IndexFolderError(f"{path}: missing or its sha256 differs from the one recorded in info.json "
                                   f"(a damaged or partly written build)")
    try:
        index = _read_index(folder, info)
        manifest = read_manifest(folder / "manifest.parquet")
    except (RuntimeError, ValueError, OSError) as err:
        raise IndexFolderError(f"{folder}: index.faiss or manifest.parquet cannot be read ({str(err)[:200]})") from None
    if index.ntotal != len(ids) or index.d != info.get("dim"):
        raise IndexFolderError(f"{folder}: index holds {index.ntotal} x {index.d} vectors but ids.json has "
                               f"{len(ids)} ids and info.json says dim {info.get('dim')}")
    apply_search_params(index, info.get("params", {}))
    return IndexBuild(folder, info, ids, index, manifest)


def remove_partial_builds(dataset: str, run: str, settings: Settings | None = None) -> list[str]:
    """Remove the ``.tmp-*`` folders of killed writers (taken under the write lock, so a build in
    progress is never touched) and their ``.encoded-*`` vectors files (only when no
    :func:`build_from_model` holds the shared :data:`ENCODING_LOCK`). Returns the removed names."""
    root = index_root(dataset, run, settings)
    if not root.is_dir():
        return []
    with _write_lock(root), locks.try_exclusive(root / ENCODING_LOCK) as no_encoder:
        debris = [p for p in root.iterdir() if (p.is_dir() and p.name.startswith(".tmp-"))
                  or (no_encoder and p.is_file() and p.name.startswith(".encoded-"))]
        for p in debris:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return [p.name for p in debris]


def build_ids(root: Path) -> list[str]:
    """The build folders of ``indexes/<dataset>/<run>``, oldest first (build ids start with their UTC time)."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def prune_builds(root: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` builds (the current one always stays), so a reader that
    opened the previous build a moment ago still finds it. Returns the removed build ids."""
    pointer = root / "current"
    current = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    removed = [b for b in build_ids(root)[:-max(keep, 1)] if b != current]
    for build_id in removed:
        shutil.rmtree(root / build_id, ignore_errors=True)
    return removed


def current_build_id(dataset: str, run: str, settings: Settings | None = None) -> str | None:
    """The build id ``current`` names (None when there is no pointer); cheap, for watchers."""
    try:
        return (index_root(dataset, run, settings) / "current").read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def open_build(dataset: str, run: str, settings: Settings | None = None, *, fallback: bool = True) -> IndexBuild:
    """Open and verify the ``current`` build of ``indexes/<dataset>/<run>``.

    When ``current`` is missing, empty, or names a missing or corrupt build, the newest other build
    that verifies is opened instead, with :attr:`IndexBuild.warning` set (and logged); with
    ``fallback=False``, or when no build verifies, :class:`IndexFolderError` names the problem.
    """
    root = index_root(dataset, run, settings)
    pointer = root / "current"
    rebuild = f"rebuild with: python -m retrieval.reindex {dataset} --run {run} (or python -m retrieval.index)"
    builds = build_ids(root)
    if not pointer.is_file() and not builds:
        raise IndexFolderError(f"no index for dataset {dataset!r}, run {run!r}: {pointer} does not exist; "
                               f"build it with: python -m retrieval.index --dataset {dataset} --run {run}")
    named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    if not pointer.is_file():
        problem = f"{pointer} does not exist"
    elif not named or named.startswith(".") or "/" in named:
        problem = f"{pointer} names no valid build ({named!r})"
    else:
        try:
            return verify_build(root / named)
        except IndexFolderError as err:
            problem = f"{pointer} names build {named!r}, which cannot be used: {err}"
    if fallback:
        for candidate in reversed(builds):
            if candidate == named:
                continue
            try:
                build = verify_build(root / candidate)
            except IndexFolderError:
                continue
            build.warning = (f"{problem}; answering from the newest verified build {candidate}; "
                             f"the next re-index repairs 'current' ({rebuild})")
            log.warning(build.warning)
            return build
        problem += " and no other build verifies"
    raise IndexFolderError(f"{problem}; {rebuild}")


def check_build(build: IndexBuild, *, extractor_ids: dict, manifest: Manifest | None, dim: int,
                stale_ok: bool = False) -> str | None:
    """Refuse an index built for other extractors, another manifest, or another dimension.

    With ``stale_ok`` (search), an index of the same collection whose manifest has since changed
    (videos added or removed, not yet re-indexed) is accepted and a note saying so is returned; it
    is still refused when fewer than half of its videos are in the manifest (another manifest).
    """
    where = f"index {build.folder}"
    rebuild = (f"rebuild with: python -m retrieval.index --dataset {build.info.get('dataset')} "
               f"--run {build.info.get('run')}")
    built = build.info.get("extractor_ids", {})
    if built != dict(extractor_ids):
        diff = {m: (built.get(m), extractor_ids.get(m)) for m in sorted(set(built) | set(extractor_ids))
                if built.get(m) != extractor_ids.get(m)}
        shown = "; ".join(f"{m}: index {a}, model {b}" for m, (a, b) in diff.items())
        raise IndexFolderError(f"{where} was built with other extractor ids than the model uses now ({shown}); {rebuild}")
    if int(dim) != build.index.d:
        raise IndexFolderError(f"dimension mismatch: the model's query vectors have {dim} dimensions, "
                               f"{where} holds {build.index.d}-dimensional vectors; {rebuild}")
    note = None
    if manifest is not None:
        now = manifest_fingerprint(manifest)
        if build.info.get("manifest_fingerprint") != now:
            current = set(manifest.video_ids)
            shared = sum(1 for vid in build.ids if vid in current)
            if not stale_ok:
                raise IndexFolderError(f"{where} covers manifest {build.info.get('manifest_fingerprint')}, but the "
                                       f"dataset's manifest is now {now} (videos added, removed or moved); {rebuild}")
            if shared < len(build.ids) / 2:
                raise IndexFolderError(f"{where} was built for another manifest: only {shared} of its "
                                       f"{len(build.ids)} videos are in the dataset's manifest; {rebuild}")
            note = (f"stale index: built for manifest {build.info.get('manifest_fingerprint')}, the dataset is now "
                    f"{now}; {len(current) - shared} videos are not indexed yet and {len(build.ids) - shared} "
                    f"removed videos are hidden; run python -m retrieval.reindex {build.info.get('dataset')}")
    return note


def rebuild_reason(dataset: str, run: str, *, extractor_ids: dict | None = None,
                   settings: Settings | None = None) -> str | None:
    """Why ``indexes/<dataset>/<run>`` needs a (re)build, or None when the current build still fits
    the dataset's manifest (and ``extractor_ids`` when given). For scheduled re-indexing."""
    settings = settings or get_settings()
    try:
        build = open_build(dataset, run, settings)
        if build.warning:
            return build.warning
        check_build(build, extractor_ids=build.info.get("extractor_ids", {}) if extractor_ids is None
                    else extractor_ids, manifest=read_manifest(settings.manifest_path(dataset)),
                    dim=build.index.d)
    except IndexFolderError as err:
        return str(err)
    return None


# ---------------------------------------------------------------------------------------------
# Building from a model (fusion.api)
# ---------------------------------------------------------------------------------------------
def model_info(loaded) -> dict:
    """The part of ``info.json`` that comes from a :class:`fusion.api.LoadedModel`."""
    return {"extractor_ids": dict(loaded.extractor_ids), "random_weights": bool(loaded.random_weights),
            "model": loaded.name, "fine_grained": bool(loaded.fine_grained)}


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


def write_vectors(path: Path, count: int, batches: Iterable[np.ndarray],
                  on_batch: Callable[[int], None] | None = None) -> None:
    """Write ``count`` vectors arriving in ``[b, D]`` batches as the ``.npy`` file ``path``: a header,
    then each batch appended to ``path`` + ``.part`` (plain writes: nothing but one batch in memory),
    renamed when complete. ``on_batch(rows written)`` after each batch."""
    part = path.with_name(path.name + ".part")
    at, dim = 0, None
    try:
        with open(part, "wb") as out:
            for block in batches:
                block = np.ascontiguousarray(block, dtype=np.float32)
                if dim is None:
                    dim = block.shape[1]
                    np.lib.format.write_array_header_2_0(
                        out, {"descr": "<f4", "fortran_order": False, "shape": (count, dim)})
                if block.ndim != 2 or block.shape[1] != dim or at + len(block) > count:
                    raise IndexFolderError(f"the encoder gave a batch of shape {block.shape} after {at} of "
                                           f"{count} {dim}-d vectors")
                out.write(block.tobytes())
                at += len(block)
                if on_batch:
                    on_batch(at)
        if dim is None:
            raise IndexFolderError("no vectors to index: no video of the chosen splits has features")
        if at != count:
            raise IndexFolderError(f"the encoder gave {at} vectors for {count} videos")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def build_from_model(dataset: str, run: str = ZERO_SHOT, *, splits: Sequence[str] | None = None,
                     index_type: str = "auto", settings: Settings | None = None,
                     use_gpu: bool | None = None, progress: ProgressFn | None = None,
                     batch: int = ENCODE_BATCH, **layout) -> Path:
    """Encode the videos of ``splits`` (default: every split of the manifest) with the model of
    ``run`` and write an index build. Fine-grained models are indexed by their coarse vector.

    Streamed: the model encodes ``batch`` videos at a time (``fusion.api.video_vector_batches``),
    each batch is written to a vectors file on disk (:func:`write_vectors`), and the index is
    trained on a sample of that file and filled from it ``batch`` rows at a time
    (:func:`stage_build`), so neither the encodings nor the vectors are ever all in memory.
    ``progress`` gets one event per batch encoded and one when the build is written. ``layout``:
    ``memory_gb``, ``factory``, ``shards``, ``processes``, ``tune_target``, ``store_vectors``,
    ``mapper`` (:func:`stage_build`)."""
    settings = settings or get_settings()
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    loaded = load(run, dataset, settings)
    if splits is None:
        splits = sorted(set(read_manifest(settings.manifest_path(dataset)).table.column("split").to_pylist()))
    name, task = run_name(loaded.run_dir), f"index {dataset}/{run}"
    ids, batches = fusion_api().video_vector_batches(loaded, dataset, list(splits), batch=batch, settings=settings)
    root = index_root(dataset, name, settings)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f".encoded-{uuid.uuid4().hex}.npy"
    on_batch = None if progress is None else (lambda done: progress(ProgressEvent(task, done, len(ids), "video")))
    with locks.shared(root / ENCODING_LOCK):          # remove_partial_builds leaves .encoded-* files alone
        try:
            write_vectors(path, len(ids), batches, on_batch)
            info = {**model_info(loaded), "splits": list(splits)}
            folder = write_build(dataset, name, path, ids, info=info, index_type=index_type, settings=settings,
                                 use_gpu=use_gpu, batch=batch, **layout)
        finally:
            path.unlink(missing_ok=True)
    if progress:
        progress(ProgressEvent(task, len(ids), len(ids), "video", {"built": folder.name}))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.index",
        description="Encode a dataset's videos with a run's model (or zero-shot) and write a FAISS "
                    "index build under indexes/<dataset>/<run>/, then point 'current' at it.")
    parser.add_argument("--dataset", required=True, help="dataset name under datasets/")
    parser.add_argument("--run", default=ZERO_SHOT, help="run folder, run id, or 'zero-shot' (default)")
    parser.add_argument("--split", action="append", dest="splits",
                        help="split to index (repeatable; default: every split)")
    parser.add_argument("--index-type", default="auto", choices=("auto",) + INDEX_TYPES,
                        help=f"auto = flat up to {EXACT_UP_TO:,} vectors, hnsw above")
    parser.add_argument("--no-gpu", action="store_true", help="never use a GPU even if FAISS has one")
    parser.add_argument("--memory-gb", type=float, help="memory budget: the first of flat, HNSW, IVF-Flat, IVF-PQ "
                        "(+ exact re-ranking from stored vectors) that fits; the reason goes into info.json")
    parser.add_argument("--factory", help="any FAISS index_factory string, e.g. 'IVF1024,PQ64' or 'OPQ64,IVF4096,PQ64'")
    parser.add_argument("--shards", type=int, default=1, help="split into this many parts by video-id hash")
    parser.add_argument("--processes", type=int, default=1, help="processes building shards in parallel")
    parser.add_argument("--tune", type=float, metavar="RECALL", dest="tune_target",
                        help="pick nprobe / efSearch / rerank reaching this recall@10 on held-out queries "
                             "and record the curve in info.json (stores the vectors)")
    parser.add_argument("--batch", type=int, default=ENCODE_BATCH,
                        help=f"videos encoded and added to the index per batch (default {ENCODE_BATCH})")
    parser.add_argument("--store-vectors", action="store_true", help="keep vectors.npy (exact re-ranking, reuse)")
    parser.add_argument("--serve", action="store_true",
                        help="also record this run as the dataset's serving run: the index the search service "
                             "answers from and the nightly reindex/<dataset> deployment keeps fresh")
    add_version(parser)
    args = parser.parse_args(argv)
    if min(args.shards, args.processes, args.batch) < 1:
        print("error: --shards, --processes and --batch must be at least 1", file=sys.stderr)
        return 2
    try:
        with Bars.for_cli() as bars:
            folder = build_from_model(args.dataset, args.run, splits=args.splits, index_type=args.index_type,
                                      use_gpu=False if args.no_gpu else None, progress=bars,
                                      memory_gb=args.memory_gb, factory=args.factory, shards=args.shards,
                                      processes=args.processes, tune_target=args.tune_target, batch=args.batch,
                                      store_vectors=args.store_vectors or args.tune_target is not None)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = json.loads((folder / "info.json").read_text())
    print(f"index {folder}: {info['n_vectors']} x {info['dim']} {info['index_type']} {info['params']}, "
          f"built in {info['build_seconds']} s")
    if "partitions" in info:
        p = info["partitions"]
        print(f"{p['count']} parts ({p['shards']} shards, zero-block groups: {p['zero_blocks']}); bytes per video "
              f"{p['bytes_per_video_before']} as one vector, {p['bytes_per_video_after']} stored")
    if "tuning" in info:
        print(f"tuned for recall@10 >= {info['tuning']['target']}: {info['tuning']['chosen']}")
    if info["random_weights"]:
        print(f"!!! {RANDOM_WARNING} !!!")
    if args.serve:
        record = set_serving_run(args.dataset, folder.parent.name)
        print(f"serving run of {args.dataset}: {folder.parent.name} (recorded in {record})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
