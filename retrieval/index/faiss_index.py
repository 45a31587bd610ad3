"""FAISS: choose an index for a scale or a memory budget, build it in streamed batches, search it
with per-query parameters (no files: build folders are :mod:`retrieval.index.writer` and
:mod:`retrieval.index.reader`).

Index type by scale (no budget): ``flat`` (exact ``IndexFlatIP``) up to :data:`EXACT_UP_TO`
vectors, ``hnsw`` above; ``ivf`` on request. With ``memory_gb`` (:func:`plan_index`): the first of
flat (N up to :data:`EXACT_UP_TO`), HNSW, IVF-Flat, IVF-PQ (the largest code that fits) whose
estimated size fits the budget; the reason is returned with the parameters. ``factory``: any FAISS
``index_factory`` string (an invalid one is :class:`IndexFolderError`).

Building (:func:`build_streamed`): IVF / PQ are trained on a bounded random sample (at most
:data:`TRAIN_SAMPLE` vectors), then vectors are added in batches of :data:`ADD_BATCH`, so an array
on disk (``np.load(..., mmap_mode="r")``) or a generator is never held in memory at once.

Searching (:func:`search`): ``nprobe`` / ``efSearch`` per call (FAISS ``SearchParameters``, so the
index itself is never modified and concurrent searches with different values are safe), and
``rerank``: the top-``rerank`` candidates re-scored exactly from the stored vectors ``[N, D]`` (an
array or a memory-mapped ``vectors.npy``), in bounded memory (:mod:`retrieval.index.rerank`).
:func:`tune` measures recall@10 and latency over a grid of these and picks the cheapest setting
reaching a target recall.

With a FAISS build that has GPU support and a visible GPU, ``flat`` and ``ivf`` are built on the GPU
(HNSW and factory strings on the CPU); the returned index is always a CPU index.
"""
from __future__ import annotations

import math
import time
from typing import Callable, Iterable

import faiss
import numpy as np

from retrieval.index.rerank import rerank_exact

INDEX_TYPES = ("flat", "ivf", "hnsw")
EXACT_UP_TO = 200_000
TRAIN_SAMPLE = 160_000          # IVF lists are capped at TRAIN_SAMPLE / 39 (FAISS wants 39 points per list)
ADD_BATCH = 100_000
PQ_CODES = (64, 32, 16, 8)       # bytes per vector tried, largest first (PQ128 trains ~10x slower)
BUDGET_SHARE = 0.75              # of the budget for the index; the rest for the sample, a batch, searching
HNSW_QUANTIZER_FROM = 1024       # IVF coarse quantizers this large are HNSW graphs (fast assignment)
SEARCH_KEYS = ("nprobe", "efSearch", "rerank")


class IndexFolderError(ValueError):
    """An index or its folder is missing, malformed, stale, or does not fit the model / dataset it is used with."""


def choose_type(n: int, index_type: str = "auto", exact_up_to: int = EXACT_UP_TO) -> str:
    """``auto``: exact ``flat`` up to ``exact_up_to`` vectors, ``hnsw`` above."""
    if index_type == "auto":
        return "flat" if n <= exact_up_to else "hnsw"
    if index_type not in INDEX_TYPES:
        raise IndexFolderError(f"unknown index type {index_type!r}; choose from auto, {', '.join(INDEX_TYPES)}")
    return index_type


def _nlist(n: int) -> int:
    return int(max(1, min(round(4 * math.sqrt(n)), n // 39, TRAIN_SAMPLE // 39)))


def default_params(index_type: str, n: int) -> dict:
    """Parameters set from N: IVF ``nlist ~ 4 sqrt(N)`` (at least 39 points per list, at most
    ``TRAIN_SAMPLE / 39`` lists), ``nprobe = max(16, nlist / 64)``; HNSW ``M = 32``,
    ``efConstruction = 64``, ``efSearch`` 64 up to 100k vectors, 128 above."""
    if index_type == "ivf":
        nlist = _nlist(n)
        return {"nlist": nlist, "nprobe": int(min(nlist, max(16, round(nlist / 64))))}
    if index_type == "hnsw":
        return {"M": 32, "efConstruction": 64, "efSearch": 64 if n <= 100_000 else 128}
    return {}


def estimated_bytes(kind: str, n: int, dim: int, params: dict) -> int:
    """Approximate in-memory size of an index: vectors or codes, 8-byte ids for IVF, the HNSW graph
    (2M int32 neighbours per vector at level 0), IVF centroids."""
    if kind == "flat":
        return 4 * n * dim
    if kind == "hnsw":
        return n * (4 * dim + 8 * params["M"] + 16)
    lists = params["nlist"] * (4 * dim + (8 * 32 if params["nlist"] >= HNSW_QUANTIZER_FROM else 0))
    code = 4 * dim if kind == "ivf" else params["pq"] + 4 * 256 * dim // max(n, 1)
    return n * (code + 8) + lists


def _factory(kind: str, params: dict) -> str:
    if kind == "flat":
        return "Flat"
    if kind == "hnsw":
        return f"HNSW{params['M']}"
    coarse = f"IVF{params['nlist']}" + ("_HNSW32" if params["nlist"] >= HNSW_QUANTIZER_FROM else "")
    return coarse + (",Flat" if kind == "ivf" else f",PQ{params['pq']}")


def plan_index(n: int, dim: int, memory_gb: float | None = None, index_type: str = "auto",
               factory: str | None = None) -> tuple[str, str, dict]:
    """(type, factory string, params incl. ``reason``) for ``n`` vectors of ``dim`` under the budget.

    Without a budget: :func:`choose_type`. With one: the first of flat (``n <= EXACT_UP_TO``), hnsw,
    ivf, ivfpq (``PQ_CODES``, largest first; ``sqrt(N)`` lists) whose :func:`estimated_bytes` is at most
    ``BUDGET_SHARE`` x the budget; ivfpq searches re-rank ``rerank`` candidates exactly from stored
    vectors when a build has them. ``factory`` overrides the choice (type ``factory``).
    """
    if factory:
        return "factory", factory, {"reason": f"FAISS index_factory string {factory!r} given"}
    if memory_gb is None:
        kind = choose_type(n, index_type)
        params = default_params(kind, n)
        why = f"{kind}: " + ("chosen by name" if index_type != "auto" else
                             f"{'at most' if kind == 'flat' else 'more than'} {EXACT_UP_TO:,} vectors")
        return kind, _factory(kind, params) if kind != "flat" else "Flat", {**params, "reason": why}
    if memory_gb <= 0:
        raise IndexFolderError(f"memory budget must be positive, got {memory_gb} GB")
    budget = BUDGET_SHARE * memory_gb * 2**30
    ivf = default_params("ivf", n)
    options = ([("flat", {})] if n <= EXACT_UP_TO else []) + [("hnsw", default_params("hnsw", n)), ("ivf", ivf)]
    lists = int(max(1, min(round(math.sqrt(n)), n // 39, TRAIN_SAMPLE // 39)))   # sqrt(N): cheap k-means
    options += [("ivfpq", {"nlist": lists, "nprobe": int(min(lists, 16)), "pq": m, "rerank": 100})
                for m in PQ_CODES if dim % m == 0]
    rejected = []
    for kind, params in options:
        size = estimated_bytes(kind, n, dim, params)
        if size <= budget:
            why = (f"{kind}: estimated {size / 2**30:.3f} GiB fits {BUDGET_SHARE:.0%} of the "
                   f"{memory_gb} GB budget" + (f" ({'; '.join(rejected)} did not)" if rejected else ""))
            return kind, _factory(kind, params), {**params, "estimated_bytes": size, "reason": why}
        rejected.append(f"{_factory(kind, params)} {size / 2**30:.2f} GiB")
    raise IndexFolderError(f"no index of {n:,} x {dim} vectors fits {memory_gb} GB: {'; '.join(rejected)}")


def new_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index from a FAISS factory string; a clear error for an invalid one."""
    try:
        return faiss.index_factory(int(dim), str(factory), faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1][:200]
        raise IndexFolderError(f"invalid FAISS index factory string {factory!r} for {dim}-d vectors: {reason}; "
                               f"see https://github.com/facebookresearch/faiss/wiki/The-index-factory") from None


def gpu_available() -> bool:
    """True when this FAISS build has GPU support and sees at least one GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def builds_on_gpu(index_type: str, use_gpu: bool | None = None) -> bool:
    """Whether :func:`build_faiss` builds ``index_type`` on a GPU (``use_gpu=None``: when one is available)."""
    return (gpu_available() if use_gpu is None else use_gpu) and index_type in ("flat", "ivf")


def _as_matrix(vectors: np.ndarray, what: str) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise IndexFolderError(f"{what}: expected a non-empty [N, D] array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        row = int(np.argwhere(~np.isfinite(vectors))[0, 0])
        raise IndexFolderError(f"{what}: row {row} holds NaN or infinite values")
    return vectors


def sample_rows(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``min(n, size)`` sorted distinct random row numbers (sorted: cheap reads from a memory map)."""
    return np.sort(np.random.default_rng(seed).choice(n, min(n, size), replace=False))


def build_streamed(batches: Callable[[], Iterable[np.ndarray]], sample: np.ndarray, factory: str, *,
                   ids: Iterable[np.ndarray] | None = None, use_gpu: bool = False,
                   efConstruction: int | None = None,
                   progress: Callable[[int], None] | None = None) -> faiss.Index:
    """Train ``factory`` on ``sample [S, D]`` (when it needs training), then add every batch that
    ``batches()`` yields (``[b, D]`` each; with ``ids``, one int64 array per batch: the rows the
    vectors are stored under). ``progress(added)`` after each batch. Returns a CPU index."""
    sample = _as_matrix(sample, "training sample")
    index = new_index(sample.shape[1], factory)
    if ids is not None and not isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        index = faiss.IndexIDMap2(index)
    hnsw = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap2) else index)
    if efConstruction and isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efConstruction = int(efConstruction)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = 10              # k-means iterations (FAISS default 25): bounded training cost
    coded = faiss.downcast_index(ivf) if ivf is not None else hnsw
    if getattr(coded, "pq", None) is not None:   # PQ: 10 iterations on at most 64 points per centroid,
        coded.pq.cp.niter, coded.pq.cp.max_points_per_centroid = 10, 64
        if hasattr(coded, "do_polysemous_training"):  # and no polysemous training (minutes; unused here)
            coded.do_polysemous_training = False
    if use_gpu:
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    if not index.is_trained:
        try:
            index.train(sample)
        except RuntimeError as err:
            reason = str(err).strip().splitlines()[-1].split("failed: ")[-1][:200]
            raise IndexFolderError(f"cannot train {factory!r} on {len(sample)} vectors: {reason}") from None
    added = 0
    rows = iter(ids) if ids is not None else None
    for batch in batches():
        batch = _as_matrix(batch, f"video vectors {added}..{added + len(batch)}")
        if batch.shape[1] != sample.shape[1]:
            raise IndexFolderError(f"batch of {batch.shape[1]}-d vectors for a {sample.shape[1]}-d index")
        if rows is None:
            index.add(batch)
        else:
            index.add_with_ids(batch, np.ascontiguousarray(next(rows), dtype=np.int64))
        added += len(batch)
        if progress:
            progress(added)
    return faiss.index_gpu_to_cpu(index) if use_gpu else index


def array_batches(vectors: np.ndarray, batch: int = ADD_BATCH) -> Callable[[], Iterable[np.ndarray]]:
    """Batches of an array or memory map, read one at a time."""
    return lambda: (vectors[s:s + batch] for s in range(0, len(vectors), batch))


def build_faiss(vectors: np.ndarray, index_type: str = "auto", params: dict | None = None,
                *, use_gpu: bool | None = None, seed: int = 0, memory_gb: float | None = None,
                factory: str | None = None, batch: int = ADD_BATCH) -> tuple[faiss.Index, str, dict]:
    """Build an inner-product index over ``vectors [N, D]`` (an array or a memory map, read
    ``batch`` rows at a time); returns (CPU index, type, params). Params hold the build's search defaults
    (``nprobe`` / ``efSearch`` / ``rerank``), ``factory`` and ``reason`` (why this index).

    ``use_gpu=None`` uses a GPU when :func:`gpu_available` (flat and ivf only).
    """
    if vectors.ndim != 2 or len(vectors) == 0:
        raise IndexFolderError(f"video vectors: expected a non-empty [N, D] array, got shape {vectors.shape}")
    n, dim = vectors.shape
    kind, factory, planned = plan_index(n, dim, memory_gb, index_type, factory)
    params = {**planned, **(params or {})}
    if kind == "ivf" and "nlist" in (params or {}):
        factory = _factory("ivf", params)
    if kind == "hnsw":
        factory = _factory("hnsw", params)
    sample = vectors[sample_rows(n, TRAIN_SAMPLE, seed)]
    index = build_streamed(array_batches(vectors, batch), sample, factory, use_gpu=builds_on_gpu(kind, use_gpu),
                           efConstruction=params.get("efConstruction"))
    apply_search_params(index, params)
    params["factory"] = factory
    return index, kind, params


def search_parameters(index: faiss.Index, nprobe: int | None = None,
                      efSearch: int | None = None) -> faiss.SearchParameters | None:
    """FAISS ``SearchParameters`` for one search: ``nprobe`` for IVF indexes, ``efSearch`` for HNSW
    indexes and HNSW coarse quantizers; through pre-transforms (OPQ) and id maps. None: defaults."""
    if nprobe is None and efSearch is None:
        return None
    inner = faiss.downcast_index(index)
    if isinstance(inner, faiss.IndexPreTransform):
        sub = search_parameters(inner.index, nprobe, efSearch)
        return None if sub is None else faiss.SearchParametersPreTransform(index_params=sub)
    if isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return search_parameters(inner.index, nprobe, efSearch)
    if isinstance(inner, faiss.IndexIVF):
        out = faiss.SearchParametersIVF(nprobe=int(nprobe or inner.nprobe))
        if efSearch is not None and isinstance(faiss.downcast_index(inner.quantizer), faiss.IndexHNSW):
            out.quantizer_params = faiss.SearchParametersHNSW(efSearch=int(efSearch))
        return out
    if isinstance(inner, faiss.IndexHNSW) and efSearch is not None:
        return faiss.SearchParametersHNSW(efSearch=int(efSearch))
    return None


def apply_search_params(index: faiss.Index, params: dict) -> None:
    """Set the build's default ``nprobe`` (IVF) / ``efSearch`` (HNSW) on a loaded index (per-call
    values are passed to :func:`search` instead)."""
    if getattr(index, "parts", None) is not None:
        for part in index.parts:
            apply_search_params(part.index, params)
        return
    ivf = faiss.try_extract_index_ivf(index)
    if "nprobe" in params and ivf is not None:
        ivf.nprobe = int(params["nprobe"])
    hnsw = faiss.downcast_index(index.index if isinstance(index, faiss.IndexIDMap) else index)
    if "efSearch" in params and isinstance(hnsw, faiss.IndexHNSW):
        hnsw.hnsw.efSearch = int(params["efSearch"])


def search(index, queries: np.ndarray, k: int, *, nprobe: int | None = None, efSearch: int | None = None,
           rerank: int | None = None, vectors: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` by inner product: (scores ``[Q, k]`` float32, rows ``[Q, k]`` int64, -1 = none).

    ``index``: a FAISS index or a :class:`retrieval.index.shards.PartitionedIndex`. ``nprobe`` /
    ``efSearch``: this call only (None: the index's defaults). ``rerank`` with ``vectors``: the
    top-``max(k, rerank)`` candidates re-scored exactly from the stored vectors.
    """
    queries = _as_matrix(queries, "query vectors")
    if queries.shape[1] != index.d:
        raise IndexFolderError(f"dimension mismatch: query vectors have {queries.shape[1]} dimensions, "
                               f"the index holds {index.d}-dimensional vectors")
    k = min(int(k), index.ntotal)
    depth = min(max(k, int(rerank or 0)), index.ntotal) if vectors is not None else k
    if getattr(index, "parts", None) is not None:
        scores, rows = index.search(queries, depth, nprobe=nprobe, efSearch=efSearch)
    else:
        scores, rows = index.search(queries, depth, params=search_parameters(index, nprobe, efSearch))
    if vectors is not None and rerank:
        return rerank_exact(queries, rows, vectors, k)
    return scores[:, :k], rows[:, :k]


class ExactTop:
    """Exact top-``k`` rows of each query ``[Q, D]``, merged block by block as the database streams
    past (:meth:`add`, in row order); columns are scored ``chunk`` at a time, so memory stays
    ``Q x chunk``. Ties: lower row first. :attr:`rows` ``[Q, k]``."""

    def __init__(self, queries: np.ndarray, k: int = 10, chunk: int = 16_384):
        self.queries, self.k, self.chunk, self.seen = np.asarray(queries, np.float32), int(k), int(chunk), 0
        self.scores = np.full((len(queries), 0), -np.inf, np.float32)
        self.rows = np.zeros((len(queries), 0), np.int64)

    def add(self, block: np.ndarray) -> None:
        for s in range(0, len(block), self.chunk):
            part = np.asarray(block[s:s + self.chunk], np.float32)
            scores = self.queries @ part.T                                      # [Q, chunk]
            kk = min(self.k, scores.shape[1])
            top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([self.scores, np.take_along_axis(scores, top, 1)], 1)
            cand_r = np.concatenate([self.rows, top + self.seen], 1)
            order = np.lexsort((cand_r, -cand_s), axis=-1)[:, :self.k]
            self.scores, self.rows = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_r, order, 1)
            self.seen += len(part)


def exact_top(queries: np.ndarray, blocks: Iterable[np.ndarray], k: int = 10) -> np.ndarray:
    """Exact top-``k`` rows ``[Q, k]`` over vectors arriving in blocks (:class:`ExactTop`)."""
    top = ExactTop(queries, k)
    for block in blocks:
        top.add(block)
    return top.rows


def recall_at(rows: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    """Mean |approximate top-k ∩ exact top-k| / k."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(rows, exact)]))


def tune(index, queries: np.ndarray, exact: np.ndarray, *, target: float = 0.9, k: int = 10,
         vectors: np.ndarray | None = None, grid: dict | None = None) -> dict:
    """Recall@k (against ``exact [Q, k]``) and ms per query for each setting of ``grid`` (default:
    nprobe 1..nlist in powers of 2 for IVF, efSearch 16..512 for HNSW; rerank 0 / 50 / 100 / 200
    with stored ``vectors``; also 400). Returns ``{"target", "chosen": setting or None, "curve": [...]}``: the
    fastest setting reaching ``target`` (else the most accurate, with ``"reached": False``)."""
    grid = grid or default_grid(index, vectors is not None)
    settings = [{}]
    for key, values in grid.items():
        settings = [{**s, key: v} for s in settings for v in values]
    curve = []
    for setting in settings:
        start = time.perf_counter()
        _, rows = search(index, queries, k, vectors=vectors, **setting)
        ms = 1000 * (time.perf_counter() - start) / len(queries)
        curve.append({**setting, "recall": round(recall_at(rows, exact, k), 4), "ms_per_query": round(ms, 4)})
    good = [c for c in curve if c["recall"] >= target]
    best = min(good, key=lambda c: c["ms_per_query"]) if good else max(curve, key=lambda c: c["recall"])
    chosen = {key: best[key] for key in grid}
    return {"target": target, "k": k, "queries": len(queries), "chosen": chosen, "reached": bool(good),
            "curve": curve}


def default_grid(index, with_vectors: bool) -> dict:
    """The settings :func:`tune` tries for this index (see there)."""
    first = index.parts[0].index if getattr(index, "parts", None) is not None else index
    grid = {}
    ivf = faiss.try_extract_index_ivf(first)
    if ivf is not None:
        grid["nprobe"] = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p <= ivf.nlist]
    elif isinstance(faiss.downcast_index(first), faiss.IndexHNSW):
        grid["efSearch"] = [16, 32, 64, 128, 256, 512]
    if with_vectors:
        grid["rerank"] = [0, 50, 100, 200, 400]
    return grid


def reconstruct_all(index: faiss.Index) -> np.ndarray:
    """Every vector of ``index`` ``[ntotal, d]`` float32 (flat and HNSW directly, IVF through a direct map)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal).astype(np.float32)
