"""Partitioned indexes: shards by video-id hash and zero-block partitions, searched together.

A :class:`PartitionedIndex` holds parts; part i is a FAISS index over the global rows ``rows_i``
(row numbers of ``ids.json``) storing only the columns ``cols_i`` of the full vectors (None: all).
A query searches every part with that part's columns of the query (the inner product over the
columns where a part's vectors can be nonzero equals the full inner product) and the per-part
top-k lists are merged by score, ties by lower global row: with exact (flat) parts the result is
the top-k of one exact index over all rows.

* **Shards**: :func:`shard_of` = the first 8 bytes of ``sha1(video_id)`` modulo the shard count
  (stable across runs and machines; a video stays in its shard when others are added).
* **Zero blocks**: when every vector is zero outside a few patterns of :data:`BLOCK`-wide column
  blocks (M2HF: a video holds its own availability pattern's blocks only, the others are zero),
  rows are grouped by their pattern and each group stores its nonzero blocks only: exact, and
  the zeros are never stored (:func:`zero_block_groups`).

Each part is one job, :func:`build_part_file` ``(folder, part, options)``: it reads the part's rows
and columns and the build's ``vectors.npy`` (memory-mapped) from the build folder and writes
``part-NNN.faiss`` there, so a job carries no arrays and runs wherever the folder is visible.
:func:`build_parts` runs the jobs in this process, on a spawn-context process pool
(``processes``; FAISS's OpenMP does not survive ``fork``), or through a ``mapper`` the caller gives
(:data:`Mapper`: the ``reindex`` flow maps them as Prefect tasks on its Dask task runner). Files in
a build folder: ``part-NNN.faiss``, ``part-NNN.rows.npy`` and ``part-NNN.cols.npy`` (int64 .npy,
no pickles).
"""
from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import faiss
import numpy as np

from retrieval.index.faiss_index import (ADD_BATCH, TRAIN_SAMPLE, IndexFolderError, apply_search_params,
                                         build_streamed, plan_index, reconstruct_all, sample_rows, search_parameters)
from retrieval.index.layout import VECTORS_FILE

BLOCK = 64                 # column block width for zero-block detection (M2HF blocks are 512 wide)
MAX_GROUPS = 64            # more distinct zero patterns than this: not a block layout, no partitioning
MIN_SAVING = 0.25          # partition by zero blocks only when it saves at least this share of the bytes
# mapper(jobs) -> [build_part_file(*job) for job in jobs], run wherever the mapper runs them
Mapper = Callable[[list[tuple]], list[dict]]


def shard_of(video_id: str, shards: int) -> int:
    """The shard (0..shards-1) of a video id: sha1 of the id, first 8 bytes, modulo ``shards``."""
    return int.from_bytes(hashlib.sha1(video_id.encode("utf-8")).digest()[:8], "big") % int(shards)


def zero_block_groups(vectors: np.ndarray, block: int = BLOCK) -> list[tuple[np.ndarray, np.ndarray]] | None:
    """``[(rows, cols), ...]``: rows grouped by which ``block``-wide column blocks are nonzero, with
    the columns of those blocks; None when the vectors have no such layout (more than
    :data:`MAX_GROUPS` patterns, or less than :data:`MIN_SAVING` of the bytes saved)."""
    n, dim = vectors.shape
    if dim % block or dim == block:
        return None
    masks = np.concatenate([(np.asarray(vectors[s:s + ADD_BATCH]).reshape(-1, dim // block, block) != 0).any(2)
                            for s in range(0, n, ADD_BATCH)])                     # [N, blocks]
    patterns, which = np.unique(masks, axis=0, return_inverse=True)
    which = which.reshape(-1)
    stored = int(masks.sum()) * block
    if len(patterns) > MAX_GROUPS or stored > (1 - MIN_SAVING) * n * dim:
        return None
    groups = []
    for p, pattern in enumerate(patterns):
        cols = (np.flatnonzero(pattern)[:, None] * block + np.arange(block)).reshape(-1)
        groups.append((np.flatnonzero(which == p), cols if len(cols) else np.arange(block)))
    return groups


def plan_parts(video_ids: Sequence[str], vectors: np.ndarray, shards: int = 1,
               zero_blocks: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """The parts of a build: zero-block groups (when the vectors have that layout and
    ``zero_blocks``) x hash shards."""
    groups = (zero_blocks and zero_block_groups(vectors)) or [(np.arange(len(vectors)), None)]
    if shards <= 1:
        return groups
    shard = np.array([shard_of(v, shards) for v in video_ids])
    return [(rows[shard[rows] == s], cols) for rows, cols in groups for s in range(shards)
            if (shard[rows] == s).any()]


def _gather(vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray | None, batch: int = ADD_BATCH):
    def batches():
        for s in range(0, len(rows), batch):
            part = np.asarray(vectors[rows[s:s + batch]], dtype=np.float32)
            yield part if cols is None else part[:, cols]
    return batches


def build_part(vectors: np.ndarray | str, rows: np.ndarray, cols: np.ndarray | None, *, index_type: str = "auto",
               memory_gb: float | None = None, factory: str | None = None, seed: int = 0,
               batch: int = ADD_BATCH) -> tuple[faiss.Index, dict]:
    """One part's index over ``vectors[rows][:, cols]`` (``vectors``: an array or a ``.npy`` path,
    memory-mapped), read ``batch`` rows at a time; returns (index, params incl. ``factory`` and ``reason``)."""
    if isinstance(vectors, (str, Path)):
        vectors = np.load(vectors, mmap_mode="r", allow_pickle=False)
    dim = vectors.shape[1] if cols is None else len(cols)
    kind, factory, params = plan_index(len(rows), dim, memory_gb, index_type, factory)
    sample = np.concatenate(list(_gather(vectors, rows[sample_rows(len(rows), TRAIN_SAMPLE, seed)], cols, batch)()))
    index = build_streamed(_gather(vectors, rows, cols, batch), sample, factory,
                           efConstruction=params.get("efConstruction"))
    apply_search_params(index, params)
    return index, {**params, "type": kind, "factory": factory}


def build_part_file(folder: str, part: int, options: dict, vectors: np.ndarray | None = None) -> dict:
    """Build part ``part`` of the build folder ``folder`` from its ``part-NNN.rows.npy`` /
    ``.cols.npy`` and ``vectors`` (default: the folder's ``vectors.npy``, memory-mapped); write
    ``part-NNN.faiss``. ``options``: :func:`build_part` keywords. Returns the part's params."""
    folder = Path(folder)
    rows = np.load(folder / f"part-{part:03d}.rows.npy", allow_pickle=False)
    cols = np.load(folder / f"part-{part:03d}.cols.npy", allow_pickle=False)
    if vectors is None:
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r", allow_pickle=False)
    whole = len(cols) == vectors.shape[1] and (cols == np.arange(len(cols))).all()
    index, params = build_part(vectors, rows, None if whole else cols, **options)
    faiss.write_index(index, str(folder / f"part-{part:03d}.faiss"))
    return params


def map_locally(processes: int) -> Mapper:
    """A :data:`Mapper` over a spawn-context pool of ``processes`` processes."""
    def run(jobs):
        with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=get_context("spawn")) as pool:
            return list(pool.map(build_part_file, *zip(*jobs)))
    return run


def build_parts(vectors: np.ndarray, specs: list[tuple[np.ndarray, np.ndarray | None]], folder: Path, *,
                shards: int = 1, processes: int = 1, index_type: str = "auto", memory_gb: float | None = None,
                factory: str | None = None, batch: int = ADD_BATCH, mapper: Mapper | None = None) -> dict:
    """Write the parts ``specs`` (:func:`plan_parts`) of a partitioned build into ``folder``: in
    this process, or as :func:`build_part_file` jobs through ``mapper`` (default with
    ``processes > 1``: :func:`map_locally`), which read ``folder/vectors.npy`` (saved here when
    missing). Each part gets the share of ``memory_gb`` its row count is of the total.
    Returns the ``partitions`` info entry."""
    n = len(vectors)
    jobs = []
    for i, (rows, cols) in enumerate(specs):
        np.save(folder / f"part-{i:03d}.rows.npy", rows.astype(np.int64), allow_pickle=False)
        np.save(folder / f"part-{i:03d}.cols.npy", (np.arange(vectors.shape[1]) if cols is None else cols).astype(np.int64),
                allow_pickle=False)
        share = None if memory_gb is None else memory_gb * len(rows) / n
        jobs.append((str(folder), i, {"index_type": index_type, "memory_gb": share, "factory": factory,
                                      "batch": batch}))
    if mapper is None and processes > 1 and len(jobs) > 1:
        mapper = map_locally(processes)
    if mapper is None:
        params = [build_part_file(*job, vectors=vectors) for job in jobs]
    else:
        if not (folder / VECTORS_FILE).exists():
            np.save(folder / VECTORS_FILE, np.ascontiguousarray(vectors, dtype=np.float32), allow_pickle=False)
        params = mapper(jobs)
    stored = sum(len(rows) * (vectors.shape[1] if cols is None else len(cols)) for rows, cols in specs)
    return {"count": len(specs), "shards": shards, "zero_blocks": specs[0][1] is not None,
            "bytes_per_video_before": 4 * vectors.shape[1], "bytes_per_video_after": round(4 * stored / n, 1),
            "parts": [{"rows": len(rows), "dim": vectors.shape[1] if cols is None else len(cols), **p}
                      for (rows, cols), p in zip(specs, params)]}


@dataclass
class Part:
    index: faiss.Index
    rows: np.ndarray            # [n_i] int64 global rows
    cols: np.ndarray | None     # [d_i] columns of the full vectors this part stores (None: all)


class PartitionedIndex:
    """Parts searched together with merged top-k (module doc). Has ``d`` and ``ntotal`` like a FAISS index."""

    def __init__(self, parts: list[Part], d: int):
        self.parts, self.d = parts, int(d)
        self.ntotal = int(sum(p.index.ntotal for p in parts))

    @classmethod
    def read(cls, folder: Path, count: int, d: int, io_flags: int = 0) -> "PartitionedIndex":
        parts = []
        for i in range(count):
            rows = np.load(folder / f"part-{i:03d}.rows.npy", allow_pickle=False)
            cols = np.load(folder / f"part-{i:03d}.cols.npy", allow_pickle=False)
            index = faiss.read_index(str(folder / f"part-{i:03d}.faiss"), io_flags)
            if index.ntotal != len(rows) or index.d != len(cols) or (len(cols) and cols.max() >= d):
                raise IndexFolderError(f"{folder}: part {i} holds {index.ntotal} x {index.d} vectors for "
                                       f"{len(rows)} rows and {len(cols)} columns")
            parts.append(Part(index, rows, None if len(cols) == d and (cols == np.arange(d)).all() else cols))
        return cls(parts, d)

    def reconstruct_all(self) -> np.ndarray:
        """The full vectors ``[ntotal, d]`` float32, rows in global order (zeros in the columns a part omits)."""
        out = np.zeros((self.ntotal, self.d), np.float32)
        for part in self.parts:
            cols = np.arange(self.d) if part.cols is None else part.cols
            out[np.ix_(part.rows, cols)] = reconstruct_all(part.index)
        return out

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               efSearch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over all parts: (scores ``[Q, k]``, global rows ``[Q, k]``, -1 = none)."""
        scores, rows = [], []
        for part in self.parts:
            q = queries if part.cols is None else np.ascontiguousarray(queries[:, part.cols])
            s, r = part.index.search(q, min(k, part.index.ntotal),
                                     params=search_parameters(part.index, nprobe, efSearch))
            rows.append(np.where(r >= 0, part.rows[np.maximum(r, 0)], -1))
            scores.append(np.where(r >= 0, s, -np.inf).astype(np.float32))
        scores, rows = np.concatenate(scores, 1), np.concatenate(rows, 1)
        order = np.lexsort((rows, -scores), axis=-1)[:, :k]
        return np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
