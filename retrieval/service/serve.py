"""``python -m retrieval.serve --dataset D [--run R] [--index D2[/R2] ...] [--host 127.0.0.1] [--port 8000]``

A long-running search service (FastAPI on uvicorn): the run's model, text tower and the
``current`` index build are loaded once; ``GET /`` is a search page, ``GET /api/search?q=...&k=...``
the ``retrieval.search --json`` answer plus thumbnail and video URLs, ``/healthz`` and ``/api/info``
say which build answers; ``POST /api/search`` takes an image or a clip, ``?like=ID`` finds more like an
indexed video (:mod:`retrieval.service.uploads`). Several indexes are served with ``--index`` (each
hot-swapped on its own; ``/api/indexes`` lists them). A new build published by a re-index is picked up without a restart
(see :mod:`retrieval.service.core`). Listens on loopback unless ``--host`` says otherwise. The
device is ``$TVR_DEVICE`` (CUDA when present) unless ``--device`` is given. The service's limits
(queue, deadlines, thumbnails, connections, hosts, token) are flags of the same names as
:class:`~retrieval.service.settings.ServeSettings`; fatal signals are logged (``faulthandler``).
"""
from __future__ import annotations

import argparse
import faulthandler
import sys

from data.cli import add_version, guarded
from data.manifest import ManifestError
from data.names import InvalidName
from data.provenance import random_weights_banner
from data.settings import QUERY_PRECISION_HELP, QUERY_PRECISIONS
from retrieval.index.faiss_index import IndexFolderError
from retrieval.query.search import RERANK_DEPTH
from retrieval.runs import RunNotFound
from retrieval.service.app import create_app
from retrieval.service.indexes import load_services, served_line
from retrieval.service.server import uvicorn_config
from retrieval.service.settings import TOKEN_ENV, ServeSettings, token_from


def build_parser() -> argparse.ArgumentParser:
    limits = ServeSettings.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.serve",
        description="Serve a search page and JSON API over the current index of a dataset and run.",
        epilog=f"The bearer token comes from ${TOKEN_ENV} or --token-file (never a flag: command lines are "
               "visible to every user). Limits and their reasons: docs/retrieval.md, 'Service limits'.")
    parser.add_argument("--dataset", default=None, help="dataset name under datasets/ (one index)")
    parser.add_argument("--run", default=None,
                        help="run id or 'zero-shot' (default: the dataset's serving run, recorded with "
                             "python -m retrieval.index --dataset D --run R --serve; without one, zero-shot)")
    parser.add_argument("--index", action="append", default=[], dest="indexes", metavar="D[/R]",
                        help="serve this dataset's index too (its serving run, or run R); repeatable: the page "
                             "has a selector, the API takes ?index=D/R (default: the first)")
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
    group = parser.add_argument_group("limits")
    for flag, kind, text in LIMIT_FLAGS:
        name = flag[2:].replace("-", "_")
        group.add_argument(flag, type=kind, default=limits[name].default, dest=name,
                           help=f"{text} (default {limits[name].default})")
    group.add_argument("--allow-host", action="append", default=[], dest="allow_hosts", metavar="NAME",
                       help="a Host name accepted besides loopback ones (repeatable; '*': any, e.g. behind a proxy "
                            "that checks it)")
    group.add_argument("--absolute-paths", action="store_true",
                       help="results carry each video's absolute server path (default: relative to the video root)")
    group.add_argument("--token-file", default=None, help=f"a file holding the bearer token (default ${TOKEN_ENV})")
    return add_version(parser)


LIMIT_FLAGS = (   # flag, type, help: ServeSettings fields of the same name (their defaults)
    ("--max-queue", int, "queries waiting for the batcher; beyond it: 503 with Retry-After"),
    ("--request-timeout-s", float, "seconds a search may take from arrival to answer; past it: 504"),
    ("--thumb-workers", int, "threads making thumbnails (their own pool)"),
    ("--thumb-queue", int, "thumbnails waiting for a worker; beyond it: 503 with Retry-After"),
    ("--thumb-cache-mb", float, "thumbnail cache size bound in MiB (least recently used files evicted)"),
    ("--thumb-decode-s", float, "seconds of decoding to find one thumbnail's frame; past it: 503"),
    ("--header-timeout-s", float, "seconds a connection has to send a request's headers"),
    ("--keep-alive-s", float, "seconds an idle keep-alive connection stays open"),
    ("--max-connections", int, "open connections plus running requests; beyond it: 503"),
    ("--max-upload-mb", float, "largest image or clip accepted by POST /api/search, in MB; beyond it: 413"),
    ("--example-workers", int, "searches by example (decoding a clip, encoding an image) running at once"),
    ("--example-queue", int, "searches by example waiting; beyond it: 503 with Retry-After"),
    ("--example-timeout-s", float, "seconds a search by example may take; past it: 504"),
)


def exposure_warning(settings: ServeSettings) -> str | None:
    """What to tell the operator about who can reach the service, or None (loopback)."""
    if settings.loopback:
        return None
    if settings.token is None:
        return (f"WARNING: listening on {settings.host}, not loopback, WITHOUT authentication: anyone who can "
                f"reach this address can search and read the indexed videos. Set ${TOKEN_ENV} or --token-file.")
    return f"listening on {settings.host} (not loopback): the API and media need the bearer token"


def enable_fault_log() -> None:
    """A fatal signal (SIGSEGV, SIGBUS, ...) writes every thread's traceback to stderr before the end."""
    if not faulthandler.is_enabled():
        try:
            faulthandler.enable(sys.stderr, all_threads=True)
        except (OSError, ValueError):            # stderr without a file descriptor (captured)
            pass


@guarded(RunNotFound, IndexFolderError, ManifestError, FileNotFoundError, InvalidName, ValueError)
def main(argv: list[str] | None = None) -> int:
    enable_fault_log()
    args = vars(build_parser().parse_args(argv))
    token = token_from(token_file=args.pop("token_file"))
    settings = ServeSettings(**args, token=token)
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    services = load_services(settings)
    import uvicorn

    for service, (_, run) in zip(services, settings.targets()):
        print(served_line(service, run), flush=True)
    print(f"on http://{settings.host}:{settings.port}/", flush=True)
    if any(service.searcher.loaded.random_weights for service in services):
        print(random_weights_banner(), flush=True)
    warning = exposure_warning(settings)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        uvicorn.Server(uvicorn_config(create_app(settings, services), settings)).run()
    finally:
        for service in services:
            service.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
