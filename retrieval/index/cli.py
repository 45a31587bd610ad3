"""``python -m retrieval.index --dataset D [--run R]`` (``tvr-index``): encode a dataset's videos with
a run's model and write a build (:func:`retrieval.index.writer.build_from_model`), then point
``current`` at it; and :func:`add_index_options`, the index options this command and
``python -m retrieval.reindex`` share.
"""
from __future__ import annotations

import argparse
import json
import sys

from data.cli import add_version, error, guarded
from data.progress import Bars
from data.provenance import random_weights_banner
from retrieval.index.describe import describe_build
from retrieval.index.faiss_index import EXACT_UP_TO, INDEX_TYPES
from retrieval.index.layout import ENCODE_BATCH
from retrieval.index.serving import set_serving_run
from retrieval.index.writer import build_from_model
from retrieval.runs import ZERO_SHOT


def add_index_options(parser: argparse.ArgumentParser, *, like_current: bool = False) -> None:
    """``--index-type``, ``--memory-gb``, ``--factory``, ``--shards`` and ``--tune`` (dest
    ``tune_target``): how a build's index is made (``writer.stage_build``'s keywords).
    ``like_current`` (the re-index): every default is None, meaning "as the current build"."""
    same = " (default: as the current build)" if like_current else ""
    parser.add_argument("--index-type", default=None if like_current else "auto", choices=("auto",) + INDEX_TYPES,
                        help=f"auto = flat up to {EXACT_UP_TO:,} vectors, hnsw above{same}")
    parser.add_argument("--memory-gb", type=float, help="memory budget: the first of flat, HNSW, IVF-Flat, IVF-PQ "
                        "(+ exact re-ranking from stored vectors) that fits; the reason goes into info.json" + same)
    parser.add_argument("--factory", help="any FAISS index_factory string, e.g. 'IVF1024,PQ64' or "
                                          "'OPQ64,IVF4096,PQ64'" + same)
    parser.add_argument("--shards", type=int, default=None if like_current else 1,
                        help="split into this many parts by video-id hash" + (same or " (default 1)"))
    parser.add_argument("--tune", type=float, metavar="RECALL", dest="tune_target",
                        help="pick nprobe / efSearch / rerank reaching this recall@10 on held-out queries "
                             "and record the curve in info.json (stores the vectors)" + same)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.index",
        description="Encode a dataset's videos with a run's model (or zero-shot) and write a FAISS "
                    "index build under indexes/<dataset>/<run>/, then point 'current' at it.")
    parser.add_argument("--dataset", required=True, help="dataset name under datasets/")
    parser.add_argument("--run", default=ZERO_SHOT, help="run folder, run id, or 'zero-shot' (default)")
    parser.add_argument("--split", action="append", dest="splits",
                        help="split to index (repeatable; default: every split)")
    add_index_options(parser)
    parser.add_argument("--no-gpu", action="store_true", help="never use a GPU even if FAISS has one")
    parser.add_argument("--processes", type=int, default=1, help="processes building shards in parallel")
    parser.add_argument("--batch", type=int, default=ENCODE_BATCH,
                        help=f"videos encoded and added to the index per batch (default {ENCODE_BATCH})")
    parser.add_argument("--store-vectors", action="store_true", help="keep vectors.npy (exact re-ranking, reuse)")
    parser.add_argument("--serve", action="store_true",
                        help="also record this run as the dataset's serving run: the index the search service "
                             "answers from and the nightly reindex/<dataset> deployment keeps fresh")
    return add_version(parser)


@guarded(FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.shards, args.processes, args.batch) < 1:
        return error("--shards, --processes and --batch must be at least 1")
    with Bars.for_cli() as bars:
        folder = build_from_model(args.dataset, args.run, splits=args.splits, index_type=args.index_type,
                                  use_gpu=False if args.no_gpu else None, progress=bars,
                                  memory_gb=args.memory_gb, factory=args.factory, shards=args.shards,
                                  processes=args.processes, tune_target=args.tune_target, batch=args.batch,
                                  store_vectors=args.store_vectors or args.tune_target is not None)
    info = json.loads((folder / "info.json").read_text())
    print("\n".join(describe_build(folder, info)))
    if info["random_weights"]:
        print(random_weights_banner())
    if args.serve:
        record = set_serving_run(args.dataset, folder.parent.name)
        print(f"serving run of {args.dataset}: {folder.parent.name} (recorded in {record})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
