"""Time and peak memory of ``data.metrics.evaluate_scores`` on N x N single-vector scores.

    python -m bench.metrics [--n 10000] [--dim 512] [--source vectors|matrix]

Text vectors are random unit vectors; each video vector is its caption's vector plus noise (so the
metrics are neither 0 nor 100). ``vectors`` streams the scores from the vectors (nothing N x N is
held); ``matrix`` first materialises S [N, N] (float32, not timed) and ranks it.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time

import numpy as np

from data.metrics import CHUNK_BYTES, V2T_PROTOCOLS, VectorScores, evaluate_scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--noise", type=float, default=10.0)
    parser.add_argument("--source", choices=("vectors", "matrix"), default="vectors")
    parser.add_argument("--chunk-mb", type=int, default=CHUNK_BYTES // 2**20)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    text = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    video = text + args.noise * rng.normal(size=text.shape).astype(np.float32) / np.sqrt(args.dim)
    ids = [str(i) for i in range(args.n)]
    scores = VectorScores(text, video) if args.source == "vectors" else text @ video.T
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = evaluate_scores(scores, ids, ids, v2t_protocols=V2T_PROTOCOLS, chunk_bytes=args.chunk_mb * 2**20)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.n:,} x {args.n:,} ({args.source}, dim {args.dim}, chunk {args.chunk_mb} MB): {seconds:.2f} s "
          f"for t2v + both v2t protocols; peak RSS {peak:.0f} MB (inputs ready, S included for matrix: {before:.0f} MB)")
    print("t2v", {k: round(v, 2) for k, v in result["t2v"].items()}, "| ties:", result["protocol"]["ties"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
