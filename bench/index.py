"""FAISS index benchmark: build time, search time and recall@10 versus exact search, for each index
type (flat, ivf, hnsw) at several collection sizes, printed side by side in one run.

    python -m bench.index [--sizes 10000,100000,1000000] [--embeddings BASE.npy | --features DIR]
    python -m bench.index --sizes 1000000,10000000 --memory-gb 2     # budget mode (:func:`bench_budget`)

Vectors: N database vectors and ``--queries`` query vectors are made by perturbing a set of base
vectors (there are not 1M real videos here). The base vectors are, in order of preference:
``--embeddings BASE.npy`` ([B, D] model embeddings), ``--features DIR`` (a feature-store folder,
e.g. ``features/<dataset>/clip_frames/<extractor-id>``: each ok video's frame embeddings
mean-pooled), else a GENERATED set (not model embeddings; labelled so in the output):
``--topics`` topic centres ~ N(0, I_D); each of B base vectors = topic + 0.7 x a draw with a
power-law spectrum (variance of dimension d proportional to 1 / (d + 1)), normalised.

Perturbation (same for every source): base b gets a random orthonormal ``[D, r]`` tangent basis
U_b (r = ``--rank``, default 8); vector = normalise(base_b + sigma * U_b z / sqrt(r) +
tau * e / sqrt(D)) with z ~ N(0, I_r), e ~ N(0, I_D), sigma = ``--sigma`` (0.25) and tau =
``--tau`` (0.05): points lie near a low-dimensional sheet around each base, as real embeddings do
(pure isotropic noise makes every approximate index look useless: in high dimensions its nearest
neighbours are hardly nearer than any other point). Queries are fresh
perturbations (not in the database). Recall@10 = |approximate top-10 ∩ exact top-10| / 10,
averaged over queries; exact = ``IndexFlatIP``.
"""
from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import faiss
import numpy as np

from data.store import FeatureSet
from retrieval.index.faiss_index import (ADD_BATCH, INDEX_TYPES, TRAIN_SAMPLE, ExactTop, build_faiss, build_streamed,
                                         plan_index, recall_at, search, tune)


def base_from_features(folder: Path) -> np.ndarray:
    """Mean-pooled ``[T, D]`` rows of a feature-store folder: ``[B, D]`` (ok rows with T > 0)."""
    table = FeatureSet(folder).read()
    rows = [table.row(i).mean(axis=0) for i, s in enumerate(table.status)
            if s == "ok" and table.lengths[i] > 0]
    if not rows:
        raise SystemExit(f"{folder}: no ok rows with features to use as base vectors")
    return np.stack(rows).astype(np.float32)


def generated_base(n: int, dim: int, topics: int, rng: np.random.Generator) -> np.ndarray:
    """The labelled fallback: clustered vectors with a power-law spectrum (see the module doc)."""
    centres = rng.normal(size=(topics, dim))
    spread = rng.normal(size=(n, dim)) / np.sqrt(np.arange(1, dim + 1))
    spread /= np.linalg.norm(spread, axis=1, keepdims=True)
    base = centres[rng.integers(0, topics, n)] / np.sqrt(dim) + 0.7 * spread
    return base.astype(np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class Perturber:
    """Draws perturbed copies of the base vectors (the module doc gives the formula)."""

    def __init__(self, base: np.ndarray, rank: int, sigma: float, tau: float, seed: int):
        self.base = _normalise(base)
        self.rank, self.sigma, self.tau = rank, sigma, tau
        rng = np.random.default_rng(seed)
        bases, dim = self.base.shape
        self.tangent = np.linalg.qr(rng.normal(size=(bases, dim, rank)))[0].astype(np.float32)  # [B, D, r]

    def draw(self, n: int, seed: int) -> np.ndarray:
        """``n`` perturbed vectors ``[n, D]`` float32; the same ``seed`` gives the same vectors.
        Vectors of one base are drawn together (one ``[D, r] @ [r, c]`` product per base)."""
        rng = np.random.default_rng(seed)
        dim = self.base.shape[1]
        which = rng.integers(0, len(self.base), n)
        z = rng.standard_normal((n, self.rank), dtype=np.float32)
        out = self.base[which] + self.tau * rng.standard_normal((n, dim), dtype=np.float32) / np.sqrt(dim)
        order = np.argsort(which, kind="stable")
        bounds = np.searchsorted(which[order], np.arange(len(self.base) + 1))
        scale = self.sigma / np.sqrt(self.rank)
        for b in np.flatnonzero(np.diff(bounds)):
            rows = order[bounds[b]:bounds[b + 1]]
            out[rows] += scale * (z[rows] @ self.tangent[b].T)
        return _normalise(out)

    def stream(self, n: int, seed: int, batch: int = ADD_BATCH) -> Iterator[np.ndarray]:
        """:meth:`draw` in batches of ``batch`` rows (batch i from seed ``(seed, i)``): never all ``n`` at once."""
        for i, start in enumerate(range(0, n, batch)):
            yield self.draw(min(batch, n - start), seed=int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))


def bench_one(vectors: np.ndarray, queries: np.ndarray, exact_rows: np.ndarray | None, kind: str,
              k: int = 10) -> dict:
    start = time.perf_counter()
    index, kind, params = build_faiss(vectors, kind, use_gpu=False)
    build = time.perf_counter() - start
    start = time.perf_counter()
    _, rows = index.search(queries, k)
    search = time.perf_counter() - start
    recall = 1.0 if exact_rows is None else float(np.mean(
        [len(set(a) & set(b)) / k for a, b in zip(rows, exact_rows)]))
    return {"type": kind, "params": params, "build_s": build, "search_s": search, "recall": recall,
            "rows": rows}


def peak_rss_gb() -> float:
    """This process's peak resident set so far (``getrusage(RUSAGE_SELF).ru_maxrss``, KiB on Linux), GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


def bench_budget(n: int, perturb: Perturber, queries: np.ndarray, held_out: np.ndarray, args) -> None:
    """One streamed build under ``--memory-gb`` (or ``--factory``) at size ``n``; prints each figure.

    Each batch of :data:`ADD_BATCH` vectors is generated, merged into the exact top-10 of the test and
    held-out queries, appended to ``vectors.npy`` (exact re-ranking) and added; nothing N-sized is
    held. Tuning (:func:`retrieval.index.faiss_index.tune`) uses the held-out queries only; the test
    queries then measure ms/query at 1 and 2 threads and recall@10 with the chosen setting."""
    dim = perturb.base.shape[1]
    kind, factory, params = plan_index(n, dim, args.memory_gb, factory=args.factory)
    print(f"\n== N={n:,} x {dim}: {factory} ({params['reason']})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.workdir))
    try:
        keep = None
        if args.rerank_store:          # plain writes (a writable memory map would count its pages as RSS)
            keep = open(work / "vectors.npy", "wb")
            np.lib.format.write_array_header_2_0(keep, {"descr": "<f4", "fortran_order": False, "shape": (n, dim)})
        exact = ExactTop(np.concatenate([queries, held_out]))
        clock = {"generate": 0.0, "exact": 0.0, "store": 0.0}

        def batches() -> Iterator[np.ndarray]:
            start = time.perf_counter()
            for block in perturb.stream(n, seed=args.seed + 2 + n):
                clock["generate"] += time.perf_counter() - start
                start = time.perf_counter()
                exact.add(block)
                clock["exact"] += time.perf_counter() - start
                if keep is not None:
                    start = time.perf_counter()
                    keep.write(np.ascontiguousarray(block, dtype="<f4").tobytes())
                    clock["store"] += time.perf_counter() - start
                yield block
                start = time.perf_counter()

        def progress(added: int) -> None:
            if added % (10 * ADD_BATCH) == 0 or added == n:
                print(f"   added {added:,}/{n:,} at {time.perf_counter() - begin:.0f} s, "
                      f"peak RSS {peak_rss_gb():.2f} GB", flush=True)

        begin = time.perf_counter()
        sample = perturb.draw(min(n, TRAIN_SAMPLE), seed=args.seed + 3 + n)     # i.i.d. draws: a random sample
        index = build_streamed(batches, sample, factory, progress=progress)
        del sample
        build_s = time.perf_counter() - begin
        rss = peak_rss_gb()
        path = work / "index.faiss"
        faiss.write_index(index, str(path))
        if keep is not None:
            keep.close()
        size = path.stat().st_size
        other = clock["generate"] + clock["exact"] + clock["store"]
        print(f"build {build_s:.1f} s wall (of which generating {clock['generate']:.1f} s, exact answers "
              f"{clock['exact']:.1f} s, writing stored vectors {clock['store']:.1f} s; index training + adding "
              f"{build_s - other:.1f} s); peak RSS {rss:.2f} GB; index.faiss {size / 1e9:.3f} GB "
              f"({size / n:.1f} bytes/vector)", flush=True)
        truth, truth_held = exact.rows[:len(queries)], exact.rows[len(queries):]
        vectors = np.load(work / "vectors.npy", mmap_mode="r") if keep is not None else None
        tuned = tune(index, held_out, truth_held, target=args.target, vectors=vectors)
        print(f"tuned on {len(held_out)} held-out queries for recall@10 >= {args.target}: {tuned['chosen']}"
              f" (reached: {tuned['reached']}); curve: " +
              "; ".join(f"{ {k: v for k, v in c.items() if k not in ('recall', 'ms_per_query')} } "
                        f"{c['recall']:.3f} {c['ms_per_query']:.2f} ms" for c in tuned["curve"]), flush=True)
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            search(index, queries[:50], 10, vectors=vectors, **tuned["chosen"])          # warm-up
            start = time.perf_counter()
            _, rows = search(index, queries, 10, vectors=vectors, **tuned["chosen"])
            ms = 1000 * (time.perf_counter() - start) / len(queries)
            print(f"search {len(queries)} test queries, {threads} thread(s), {tuned['chosen']}: {ms:.3f} ms/query, "
                  f"recall@10 {recall_at(rows, truth):.3f} vs exact", flush=True)
        faiss.omp_set_num_threads(args.threads)
        print(f"final peak RSS {peak_rss_gb():.2f} GB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.index", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="How the vectors are made: see docs/retrieval.md or this module's docstring.")
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated N (add 1000000 for 1M)")
    parser.add_argument("--types", default=",".join(INDEX_TYPES), help="comma-separated index types")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--embeddings", type=Path, help="[B, D] .npy of model embeddings to perturb")
    parser.add_argument("--features", type=Path, help="feature-store folder to mean-pool into base vectors")
    parser.add_argument("--bases", type=int, default=2000, help="generated base vectors (fallback only)")
    parser.add_argument("--topics", type=int, default=50, help="generated topic centres (fallback only)")
    parser.add_argument("--dim", type=int, default=512, help="generated dimension (fallback only)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--sigma", type=float, default=0.25)
    parser.add_argument("--tau", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads")
    parser.add_argument("--memory-gb", type=float, help="streamed build of the index this budget picks "
                        "(retrieval.index.faiss_index.plan_index) instead of the per-type table")
    parser.add_argument("--factory", help="streamed build of this FAISS index_factory string")
    parser.add_argument("--no-rerank-store", dest="rerank_store", action="store_false",
                        help="budget mode: do not keep the vectors on disk for exact re-ranking")
    parser.add_argument("--target", type=float, default=0.9, help="budget mode: recall@10 the tuning aims for")
    parser.add_argument("--held-out", type=int, default=500, help="budget mode: queries used for tuning only")
    parser.add_argument("--workdir", default=None, help="budget mode: where the index and vectors are written")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    if args.embeddings:
        base = np.load(args.embeddings, allow_pickle=False).astype(np.float32)
        source = f"model embeddings from {args.embeddings}"
    elif args.features:
        base = base_from_features(args.features)
        source = f"mean-pooled features from {args.features}"
    else:
        base = generated_base(args.bases, args.dim, args.topics, rng)
        source = (f"GENERATED base vectors (NOT model embeddings): {args.bases} from {args.topics} topics, "
                  f"power-law spectrum")
    perturb = Perturber(base, args.rank, args.sigma, args.tau, args.seed)
    print(f"base: {source}; {len(base)} x {base.shape[1]}")
    print(f"perturbation: rank-{args.rank} tangent sigma={args.sigma}, isotropic tau={args.tau}; "
          f"{args.queries} fresh queries; FAISS {faiss.__version__}, {args.threads} threads, CPU")
    queries = perturb.draw(args.queries, seed=args.seed + 1)
    if args.memory_gb is not None or args.factory:
        held_out = perturb.draw(args.held_out, seed=args.seed + 4)
        print(f"budget mode: {args.memory_gb} GB / factory {args.factory}; vectors streamed in batches of "
              f"{ADD_BATCH:,}; exact top-10 of {args.queries} test + {args.held_out} held-out queries merged "
              f"block by block; peak RSS = getrusage(RUSAGE_SELF).ru_maxrss of this process")
        for n in (int(s) for s in args.sizes.split(",")):
            bench_budget(n, perturb, queries, held_out, args)
        return 0
    header = (f"{'N':>9}  {'index':<5}  {'factory':<20}  {'params':<36}  {'build s':>8}  {'search s':>8}  "
              f"{'ms/query':>8}  {'recall@10':>9}")
    print(header + "\n" + "-" * len(header))
    for n in (int(s) for s in args.sizes.split(",")):
        vectors = perturb.draw(n, seed=args.seed + 2 + n)
        flat = bench_one(vectors, queries, None, "flat")          # exact: the recall reference
        for kind in args.types.split(","):
            row = flat if kind == "flat" else bench_one(vectors, queries, flat["rows"], kind)
            params = ", ".join(f"{k}={v}" for k, v in row["params"].items() if k not in ("reason", "factory"))
            print(f"{n:>9,}  {row['type']:<5}  {row['params']['factory']:<20}  {params or 'exact':<36}  "
                  f"{row['build_s']:>8.2f}  {row['search_s']:>8.3f}  "
                  f"{1000 * row['search_s'] / len(queries):>8.3f}  {row['recall']:>9.3f}", flush=True)
        del vectors
    return 0


if __name__ == "__main__":
    sys.exit(main())
