"""``python -m retrieval.reindex <dataset> [--run R]`` (``tvr-reindex``): one re-index run
(:func:`retrieval.reindex.run.reindex`), its summary printed as lines or JSON; the exit status is
:data:`EXIT_STATUS`."""
from __future__ import annotations

import argparse
import json
import logging
import sys

import torch

from data.cli import Exit, add_version, error, guarded
from data.manifest import ManifestError
from data.names import InvalidName
from data.store import StoreError
from retrieval.index.cli import add_index_options
from retrieval.index.faiss_index import IndexFolderError
from retrieval.index.layout import ENCODE_BATCH
from retrieval.reindex.plan import ReindexError
from retrieval.reindex.run import reindex
from retrieval.runs import ZERO_SHOT, RunNotFound


EXIT_STATUS = ("Exit status: 0 when the index is up to date or rebuilt, videos whose extraction failed before "
               "included (a recorded failure is not retried until its file changes: python -m flows.extract "
               "--retry-failed retries them); 1 when the extraction of new or changed videos failed "
               "systemically (every video it attempted failed in some modality, none of them a known failure; the "
               "build is still made from the others) or when TVR_HOME cannot be written; 2 for bad input (a run "
               "that does not exist, bad options or TVR_* settings).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.reindex",
        description="Bring a dataset's index up to date with its manifest: extract and encode only new or "
                    "changed videos, drop removed ones, reuse the vectors of the rest, then swap the "
                    "index's 'current' pointer atomically. Nothing new: no model work, no new build.",
        epilog=EXIT_STATUS)
    parser.add_argument("dataset", help="dataset name under datasets/")
    parser.add_argument("--run", default=ZERO_SHOT, help="run folder, run id, or 'zero-shot' (default)")
    add_index_options(parser, like_current=True)   # none given: the new build is made like the current one
    parser.add_argument("--shard-size", type=int, default=None,
                        help="videos per extraction shard (default $TVR_SHARD_SIZE or 64)")
    parser.add_argument("--device", default=None, help="extraction device: auto, cpu, cuda (default $TVR_DEVICE)")
    parser.add_argument("--batch", type=int, default=ENCODE_BATCH,
                        help=f"videos encoded and vectors assembled and indexed per batch (default {ENCODE_BATCH})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    return add_version(parser)


@guarded(ReindexError, RunNotFound, IndexFolderError, ManifestError, StoreError, InvalidName,
         FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.shards is not None and args.shards < 1:
        return error("--shards must be at least 1")
    result = reindex(args.dataset, args.run, index_type=args.index_type, memory_gb=args.memory_gb,
                     factory=args.factory, shards=args.shards, tune_target=args.tune_target,
                     shard_size=args.shard_size, device=args.device, batch=args.batch)
    print(json.dumps(result.to_dict(), indent=2) if args.json else "\n".join(result.lines()))
    return error(result.failure, Exit.FAILED) if result.failure else Exit.OK


if __name__ == "__main__":
    sys.exit(main())
