"""FAISS: choose an index type for a scale, build it, search it (no files; see :mod:`retrieval.index`).

Index type by scale (or named): ``flat`` (exact ``IndexFlatIP``) up to :data:`EXACT_UP_TO`
vectors, ``hnsw`` above; ``ivf`` on request. Parameters come from N (:func:`default_params`).
With a FAISS build that has GPU support and a visible GPU, ``flat`` and ``ivf`` are built and
searched on the GPU (HNSW has no GPU version in FAISS); the returned index is always a CPU index.
"""
from __future__ import annotations

import math

import faiss
import numpy as np

INDEX_TYPES = ("flat", "ivf", "hnsw")
EXACT_UP_TO = 200_000


class IndexFolderError(ValueError):
    """An index or its folder is missing, malformed, stale, or does not fit the model / dataset it is used with."""


def choose_type(n: int, index_type: str = "auto", exact_up_to: int = EXACT_UP_TO) -> str:
    """``auto``: exact ``flat`` up to ``exact_up_to`` vectors, ``hnsw`` above."""
    if index_type == "auto":
        return "flat" if n <= exact_up_to else "hnsw"
    if index_type not in INDEX_TYPES:
        raise IndexFolderError(f"unknown index type {index_type!r}; choose from auto, {', '.join(INDEX_TYPES)}")
    return index_type


def default_params(index_type: str, n: int) -> dict:
    """Parameters set from N: IVF ``nlist ~ 4 sqrt(N)`` (at least 39 points per list; trained on
    a random sample of 40 x nlist vectors),
    ``nprobe = max(16, nlist / 64)``; HNSW ``M = 32``, ``efConstruction = 64``, ``efSearch``
    64 up to 100k vectors, 128 above."""
    if index_type == "ivf":
        nlist = int(max(1, min(round(4 * math.sqrt(n)), n // 39)))
        return {"nlist": nlist, "nprobe": int(min(nlist, max(16, round(nlist / 64))))}
    if index_type == "hnsw":
        return {"M": 32, "efConstruction": 64, "efSearch": 64 if n <= 100_000 else 128}
    return {}


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def builds_on_gpu(index_type: str, use_gpu: bool | None = None) -> bool:
    """Whether :func:`build_faiss` builds ``index_type`` on a GPU (``use_gpu=None``: when one is available)."""
    return (gpu_available() if use_gpu is None else use_gpu) and index_type != "hnsw"


def _as_matrix(vectors: np.ndarray, what: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise IndexFolderError(f"{what}: expected a non-empty [N, D] array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        row = int(np.argwhere(~np.isfinite(vectors))[0, 0])
        raise IndexFolderError(f"{what}: row {row} holds NaN or infinite values")
    return vectors


def build_faiss(vectors: np.ndarray, index_type: str = "auto", params: dict | None = None,
                *, use_gpu: bool | None = None, seed: int = 0) -> tuple[faiss.Index, str, dict]:
    """Build an inner-product index over ``vectors [N, D]``; returns (CPU index, type, params).

    ``use_gpu=None`` uses a GPU when :func:`gpu_available`; HNSW always builds on the CPU.
    """
    vectors = _as_matrix(vectors, "video vectors")
    n, dim = vectors.shape
    index_type = choose_type(n, index_type)
    params = {**default_params(index_type, n), **(params or {})}
    gpu = builds_on_gpu(index_type, use_gpu)
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(params["nlist"]),
                                   faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexHNSWFlat(dim, int(params["M"]), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(params["efConstruction"])
    if gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    if index_type == "ivf":
        rng = np.random.default_rng(seed)
        sample = min(n, 40 * int(params["nlist"]))          # FAISS wants >= 39 points per list
        index.train(vectors[np.sort(rng.choice(n, sample, replace=False))])
    index.add(vectors)
    if gpu:
        index = faiss.index_gpu_to_cpu(index)
    apply_search_params(index, params)
    return index, index_type, params


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Set ``nprobe`` (IVF) / ``efSearch`` (HNSW) on a loaded index."""
    if "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    if "efSearch" in params:
        faiss.downcast_index(index).hnsw.efSearch = int(params["efSearch"])


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: (scores ``[Q, k]`` float32, rows ``[Q, k]`` int64, -1 = none)."""
    queries = _as_matrix(queries, "query vectors")
    if queries.shape[1] != index.d:
        raise IndexFolderError(f"dimension mismatch: query vectors have {queries.shape[1]} dimensions, "
                          f"the index holds {index.d}-dimensional vectors")
    return index.search(queries, min(int(k), index.ntotal))
