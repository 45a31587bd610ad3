"""``python -m retrieval.serve --dataset D [--run R] [--host 127.0.0.1] [--port 8000]``

A long-running search service (FastAPI on uvicorn): the run's model, text tower and the
``current`` index build are loaded once; ``GET /`` is a search page, ``GET /api/search?q=...&k=...``
the ``retrieval.search --json`` answer plus thumbnail and video URLs, ``/healthz`` and ``/api/info``
say which build answers. A new build published by a re-index is picked up without a restart
(see :mod:`retrieval.service.core`). Listens on loopback unless ``--host`` says otherwise. The
device is ``$TVR_DEVICE`` (CUDA when present) unless ``--device`` is given.
"""
from __future__ import annotations

import argparse
import sys

from data.cli import add_version, guarded
from data.manifest import ManifestError
from data.names import InvalidName
from data.provenance import random_weights_banner
from data.settings import QUERY_PRECISION_HELP, QUERY_PRECISIONS
from retrieval.index.faiss_index import IndexFolderError
from retrieval.query.search import RERANK_DEPTH, Searcher
from retrieval.runs import RunNotFound
from retrieval.service.app import ServeSettings, create_app
from retrieval.service.core import SearchService


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.serve",
        description="Serve a search page and JSON API over the current index of a dataset and run.")
    parser.add_argument("--dataset", required=True, help="dataset name under datasets/")
    parser.add_argument("--run", default=None,
                        help="run folder, run id or 'zero-shot' (default: the dataset's serving run)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--poll", type=float, default=1.0, dest="poll_s",
                        help="seconds between checks of the 'current' build (0: no hot swaps; default 1)")
    parser.add_argument("--max-batch", type=int, default=64, help="queries encoded together at most (default 64)")
    parser.add_argument("--wait-ms", type=float, default=2.0,
                        help="how long a batch waits for more queries after its first (default 2 ms)")
    parser.add_argument("--depth", type=int, default=RERANK_DEPTH, dest="rerank_depth",
                        help=f"fine-grained models: first-stage candidates re-ranked exactly (default {RERANK_DEPTH})")
    parser.add_argument("--device", default=None, help="auto, cpu or cuda (default $TVR_DEVICE)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for encoding queries (default: torch's choice, one per core)")
    parser.add_argument("--lone-threads", type=int, default=1,
                        help="torch CPU threads for a lone query (default 1: a single short query is bound by "
                             "reading the weights, threads add synchronisation; 0 = the same as --threads)")
    parser.add_argument("--query-precision", choices=QUERY_PRECISIONS, default=None, help=QUERY_PRECISION_HELP)
    return add_version(parser)


@guarded(RunNotFound, IndexFolderError, ManifestError, FileNotFoundError, InvalidName, ValueError)
def main(argv: list[str] | None = None) -> int:
    settings = ServeSettings(**vars(build_parser().parse_args(argv)))
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    service = SearchService(
        Searcher(settings.dataset, settings.run, rerank_depth=settings.rerank_depth, device=settings.device,
                 query_precision=settings.query_precision),
        poll_s=settings.poll_s, max_batch=settings.max_batch, wait_s=settings.wait_ms / 1000,
        lone_threads=settings.lone_threads)
    import uvicorn

    health = service.health()
    print(f"serving {health['dataset']} ({health['model']}, run {health['run']}, build {health['build_id']}) "
          f"on http://{settings.host}:{settings.port}/" +
          ("\n" + random_weights_banner() if health["random_weights"] else ""), flush=True)
    uvicorn.run(create_app(settings, service), host=settings.host, port=settings.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
