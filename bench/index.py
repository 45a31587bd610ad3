"""FAISS index benchmark: build time, search time and recall@10 versus exact search, for each index
type (flat, ivf, hnsw) at several collection sizes, printed side by side in one run.

    python -m bench.index [--sizes 10000,100000,1000000] [--embeddings BASE.npy | --features DIR]

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
(pure isotropic noise makes every approximate index look useless, STACK.md). Queries are fresh
perturbations (not in the database). Recall@10 = |approximate top-10 ∩ exact top-10| / 10,
averaged over queries; exact = ``IndexFlatIP``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

from data.store import FeatureSet
from retrieval.faiss_index import INDEX_TYPES, build_faiss


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

    def draw(self, n: int, seed: int, chunk: int = 8192) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.base.shape[1]), np.float32)
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            which = rng.integers(0, len(self.base), m)
            z = rng.normal(size=(m, self.rank, 1)).astype(np.float32)
            along = (self.tangent[which] @ z)[:, :, 0] / np.sqrt(self.rank)
            noise = rng.normal(size=(m, self.base.shape[1])).astype(np.float32) / np.sqrt(self.base.shape[1])
            out[start:start + m] = _normalise(self.base[which] + self.sigma * along + self.tau * noise)
        return out


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
    header = f"{'N':>9}  {'index':<5}  {'params':<40}  {'build s':>8}  {'search s':>8}  {'ms/query':>8}  {'recall@10':>9}"
    print(header + "\n" + "-" * len(header))
    for n in (int(s) for s in args.sizes.split(",")):
        vectors = perturb.draw(n, seed=args.seed + 2 + n)
        flat = bench_one(vectors, queries, None, "flat")          # exact: the recall reference
        for kind in args.types.split(","):
            row = flat if kind == "flat" else bench_one(vectors, queries, flat["rows"], kind)
            params = ", ".join(f"{k}={v}" for k, v in row["params"].items()) or "exact"
            print(f"{n:>9,}  {row['type']:<5}  {params:<40}  {row['build_s']:>8.2f}  {row['search_s']:>8.3f}  "
                  f"{1000 * row['search_s'] / len(queries):>8.3f}  {row['recall']:>9.3f}", flush=True)
        del vectors
    return 0


if __name__ == "__main__":
    sys.exit(main())
