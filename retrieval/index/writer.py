"""The write side of an index: build a folder (contract D, :mod:`retrieval.index.layout`), publish
it as ``current``, prune old builds, tidy a killed writer's debris; and build from a model.

A build is written into a hidden temporary folder, every file and the folder are fsynced
(:func:`data.atomic.fsync_tree`), the build is verified (it loads, the vector count equals the id
count, every file matches the sha256 recorded in ``info.json["checksums"]``) and renamed into place,
then the parent folder is fsynced (:func:`data.atomic.rename_durably`; :func:`stage_build`); only
then is ``current`` swapped with :func:`data.atomic.write_text_atomic` (pointer fsynced, renamed,
folder fsynced; :func:`publish_build`, which verifies again), so a reader never sees a half-built
index and a crash at any step, of the process or of the machine, leaves the previous build
current. Tests inject a SIGKILL at each step with ``TVR_INDEX_CRASH_AT=<step>``
(:data:`~retrieval.index.layout.BUILD_STEPS`, :func:`data.faults.crash_point`). Writers of one ``indexes/<dataset>/<run>`` folder hold an
exclusive ``flock`` on its ``.lock`` file while they write (:func:`data.locks.exclusive`), so
:func:`remove_partial_builds` can tell a killed writer's ``.tmp-*`` debris from a build in progress.

The FAISS layer (index type by scale or memory budget, factory strings, streamed adding, search
parameters, tuning) is :mod:`retrieval.index.faiss_index`; partitioned builds are
:mod:`retrieval.index.shards`. ``info.json["params"]`` holds the build's search defaults
(``nprobe`` / ``efSearch`` / ``rerank``), the ``factory`` string and the ``reason`` the index was
chosen; ``info.json["tuning"]`` the recall / latency curve of ``--tune``.
"""
from __future__ import annotations

import shutil
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import locks
from data.atomic import fsync_tree, rename_durably, replace_durably, write_json_atomic, write_text_atomic
from data.faults import crash_point
from data.fingerprint import sha256_file
from data.manifest import Manifest, manifest_fingerprint, read_manifest, write_manifest
from data.progress import ProgressEvent, ProgressFn
from data.provenance import random_weights_label
from data.settings import Settings, get_settings
from retrieval.index.faiss_index import (ADD_BATCH, SEARCH_KEYS, IndexFolderError, build_faiss, builds_on_gpu,
                                         exact_top, sample_rows, tune)
from retrieval.index.layout import (CRASH_ENV, ENCODE_BATCH, ENCODING_LOCK, POINTER, VECTORS_FILE, VIDEO_STATE_FILE,
                                    WRITE_LOCK, build_ids, index_root)
from retrieval.index.reader import read_index, verify_build
from retrieval.index.segments import STRIDE_S, WINDOW_S, SegmentIndex
from retrieval.index.shards import Mapper, build_parts, plan_parts
from retrieval.runs import ZERO_SHOT, fusion_api, load, run_name


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


def stage_build(dataset: str, run: str, vectors: np.ndarray | Path, video_ids: Sequence[str], *,
                info: dict, index_type: str = "auto", params: dict | None = None,
                settings: Settings | None = None, use_gpu: bool | None = None,
                manifest: Manifest | None = None, video_state: pa.Table | None = None,
                store_vectors: bool = False, memory_gb: float | None = None, factory: str | None = None,
                shards: int = 1, processes: int = 1, tune_target: float | None = None,
                batch: int = ADD_BATCH, mapper: Mapper | None = None,
                segments: SegmentIndex | None = None) -> Path:
    """Build the FAISS index and write a complete build folder beside the others, NOT yet current.

    ``vectors``: ``[N, D]`` float32, an array or the path of a ``.npy`` file (such as
    :func:`build_from_model` writes); a file is moved into the build as its ``vectors.npy`` and read
    memory-mapped, ``batch`` rows at a time, so the vectors are never all in memory at once.

    ``info`` must hold ``extractor_ids``, ``random_weights`` and ``model``; the manifest snapshot,
    its fingerprint, dim, index type and params are added here. ``manifest``: the manifest the
    vectors were computed for (default: the dataset's manifest file as it is now).
    ``video_state``: a table saved as ``videos.parquet``; ``store_vectors``: also save the vectors
    ``[N, D]`` as ``vectors.npy`` (so a later build can reuse them; compressed indexes re-rank their
    candidates from it). ``memory_gb`` / ``factory``: :func:`retrieval.index.faiss_index.plan_index`
    (an IVF-PQ choice stores the vectors for re-ranking). ``shards``: parts by video-id hash, built
    by ``processes`` processes or as jobs through ``mapper`` (:func:`retrieval.index.shards.build_parts`);
    vectors with zero blocks (M2HF) are partitioned by pattern (:mod:`retrieval.index.shards`).
    ``tune_target``: :func:`tune_build` before publishing. ``segments``: the run's moment-head
    window index (:mod:`retrieval.index.segments`), written into the build too. The index options (``index_type``,
    ``memory_gb``, ``factory``, ``shards``, ``tune_target``) are recorded as
    ``info.json["build_options"]``, for the re-index to build the same way
    (:func:`retrieval.index.layout.build_options`).
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
    with locks.exclusive(root / WRITE_LOCK):
        tmp.mkdir(parents=True)
        try:
            if source is not None:
                rename_durably(source, tmp / VECTORS_FILE)    # the open memory map follows the file
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
            write_manifest(manifest.table, tmp / "manifest.parquet", home=settings.root)   # root relative in TVR_HOME
            if video_state is not None:
                pq.write_table(video_state, tmp / VIDEO_STATE_FILE)
            if segments is not None:
                layout["segments"] = segments.write(tmp)
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
                full_info["WARNING"] = random_weights_label()
            if tune_target is not None:
                full_info["tuning"] = tune_build(tmp, full_info, tune_target)
                full_info["params"].update(full_info["tuning"]["chosen"])
            full_info["checksums"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
            write_json_atomic(tmp / "info.json", full_info)
            crash_point(CRASH_ENV, "files-written")
            fsync_tree(tmp)
            crash_point(CRASH_ENV, "synced")
            verify_build(tmp)
            crash_point(CRASH_ENV, "verified")
            rename_durably(tmp, root / build_id)          # synced above: rename, then fsync the folder
            crash_point(CRASH_ENV, "renamed")
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
    """Recall@k / latency curve of a written build (:func:`retrieval.index.faiss_index.tune`) on held-out
    queries: ``queries`` stored vectors chosen at random plus Gaussian noise of norm 0.1 x theirs
    (so no query is its own answer); exact answers from the stored vectors in chunks. Returns the
    ``tuning`` entry of ``info.json`` (target, chosen setting, curve)."""
    index = read_index(folder, info)
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


def publish_build(folder: Path, keep: int = 3) -> None:
    """Verify the staged build ``folder`` and make it current (:func:`data.atomic.write_text_atomic`:
    the pointer fsynced, renamed, its folder fsynced); keep the newest ``keep``. A build that fails
    verification is never published."""
    root = folder.parent
    verify_build(folder)
    with locks.exclusive(root / WRITE_LOCK):
        write_text_atomic(root / POINTER, folder.name + "\n")
        crash_point(CRASH_ENV, "pointer-written")
        prune_builds(root, keep)


def remove_partial_builds(dataset: str, run: str, settings: Settings | None = None) -> list[str]:
    """Remove the ``.tmp-*`` folders of killed writers (taken under the write lock, so a build in
    progress is never touched) and their ``.encoded-*`` vectors files (only when no
    :func:`build_from_model` holds the shared :data:`~retrieval.index.layout.ENCODING_LOCK`).
    Returns the removed names."""
    root = index_root(dataset, run, settings)
    if not root.is_dir():
        return []
    with locks.exclusive(root / WRITE_LOCK), locks.try_exclusive(root / ENCODING_LOCK) as no_encoder:
        debris = [p for p in root.iterdir() if (p.is_dir() and p.name.startswith(".tmp-"))
                  or (no_encoder and p.is_file() and p.name.startswith(".encoded-"))]
        for p in debris:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return [p.name for p in debris]


def prune_builds(root: Path, keep: int) -> list[str]:
    """Remove all but the newest ``keep`` builds (the current one always stays), so a reader that
    opened the previous build a moment ago still finds it. Returns the removed build ids."""
    pointer = root / POINTER
    current = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else None
    removed = [b for b in build_ids(root)[:-max(keep, 1)] if b != current]
    for build_id in removed:
        shutil.rmtree(root / build_id, ignore_errors=True)
    return removed


# ---------------------------------------------------------------------------------------------
# Building from a model (fusion.api)
# ---------------------------------------------------------------------------------------------
def model_info(loaded) -> dict:
    """The part of ``info.json`` that comes from a :class:`fusion.api.LoadedModel`."""
    return {"extractor_ids": dict(loaded.extractor_ids), "random_weights": bool(loaded.random_weights),
            "model": loaded.name, "fine_grained": bool(loaded.fine_grained)}


def model_segments(loaded, dataset: str, video_ids: Sequence[str], settings: Settings) -> SegmentIndex | None:
    """The window index of a run with a moment head (``loaded.moments``), else None."""
    if getattr(loaded, "moments", None) is None:
        return None
    predictor = fusion_api().MomentPredictor(loaded, dataset, list(video_ids), settings=settings)
    return SegmentIndex.exact(*predictor.segment_vectors(WINDOW_S, STRIDE_S))


def write_vectors(path: Path, count: int, batches: Iterable[np.ndarray],
                  on_batch: Callable[[int], None] | None = None) -> None:
    """Write ``count`` vectors arriving in ``[b, D]`` batches as the ``.npy`` file ``path``: a header,
    then each batch appended to ``path`` + ``.part`` (plain writes: nothing but one batch in memory),
    published when complete (:func:`data.atomic.replace_durably`). ``on_batch(rows written)`` after
    each batch."""
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
        replace_durably(part, path)
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
                                 use_gpu=use_gpu, batch=batch, segments=model_segments(loaded, dataset, ids, settings),
                                 **layout)
        finally:
            path.unlink(missing_ok=True)
    if progress:
        progress(ProgressEvent(task, len(ids), len(ids), "video", {"built": folder.name}))
    return folder
