"""``python -m retrieval.search`` (``tvr-search``): free text, an image, a clip or an indexed video in,
ranked videos out, from the ``current`` index of a dataset and run (:mod:`retrieval.query.search`).

Exactly one query: the text, ``--image FILE``, ``--clip FILE`` (a window with ``--start-s`` /
``--end-s``), ``--video-id ID`` (an indexed video's file, or a window of it) or ``--like ID``
("more like this": its own vector, itself left out). Searches by example say which space was
searched (:mod:`retrieval.query.examples`). ``--json`` prints the dict the service answers with.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from data.cli import add_version, guarded
from data.manifest import ManifestError
from data.names import InvalidName
from data.provenance import random_weights_banner
from data.settings import QUERY_PRECISION_HELP, QUERY_PRECISIONS
from retrieval.index.faiss_index import IndexFolderError
from retrieval.query.examples import ExampleSearch
from retrieval.query.search import MAX_K, RERANK_DEPTH, NotIndexed, QueryError, Searcher, check_params, check_query
from retrieval.runs import RunNotFound


def _seconds(moment: dict) -> str:
    return f"{moment['start_s']:.1f}-{moment['end_s']:.1f} s"


def render(found: dict) -> str:
    """The human-readable answer: header, notes, then one line per result with its moments."""
    lines = [random_weights_banner(found["WARNING"])] if "WARNING" in found else []
    idx = found["index"]
    lines.append(f"{found['query']!r} ({found['space']}) in {found['dataset']} ({found['model']}, run {found['run']}; "
                 f"{idx['index_type']} index {idx['build_id']}, {idx['n_vectors']} videos)")
    if "first_stage" in found:
        lines.append(f"first stage: top {found['first_stage']['depth']} by the coarse vector, re-ranked exactly")
    if "note" in found:
        lines.append(found["note"])
    if found["moments_from"]:
        lines.append(f"moments from the {'moment head' if found['moments_from'] == 'model' else 'zero-shot heuristic'}")
    for r in found["results"]:
        if found["mode"] == "moments":
            lines.append(f"{r['rank']:>3}  {r['score']:9.4f}  {r['video_id']}  {_seconds(r)}  {r['path']}")
            continue
        shown = ", ".join(f"{_seconds(m)} ({m['score']:.3f})" for m in r["moments"] or ())
        lines.append(f"{r['rank']:>3}  {r['score']:9.4f}  {r['video_id']}  {r['path']}" + (f"  {shown}" if shown else ""))
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.search",
        description="Free text, an image, a clip or an indexed video in, ranked videos out, from the current "
                    "index of a dataset and run (build it with python -m retrieval.index).")
    parser.add_argument("query", nargs="?", default=None, help="the text to search for")
    example = parser.add_argument_group("search by example (instead of text)")
    example.add_argument("--image", type=Path, help="an image file (JPEG, PNG, ...): compared with each video's frames")
    example.add_argument("--clip", type=Path, help="a video file: encoded like the indexed videos, video-to-video")
    example.add_argument("--video-id", help="an indexed video's file as the clip")
    example.add_argument("--start-s", type=float, help="with --clip / --video-id: the window's start (seconds)")
    example.add_argument("--end-s", type=float, help="with --clip / --video-id: the window's end (seconds)")
    example.add_argument("--like", metavar="VIDEO_ID", help="more like this indexed video (itself left out)")
    parser.add_argument("--dataset", required=True, help="dataset name under datasets/")
    parser.add_argument("--run", default=None,
                        help="run folder, run id, or 'zero-shot' (default: the dataset's serving run)")
    parser.add_argument("-k", type=int, default=10, help=f"how many videos (default 10, at most {MAX_K})")
    parser.add_argument("--depth", type=int, default=RERANK_DEPTH,
                        help=f"fine-grained models: first-stage candidates re-ranked exactly (default {RERANK_DEPTH})")
    parser.add_argument("--nprobe", type=int, help="IVF lists searched (default: the build's tuned value)")
    parser.add_argument("--ef-search", type=int, dest="efSearch", help="HNSW efSearch (default: the build's)")
    parser.add_argument("--rerank", type=int, help="candidates re-scored exactly from stored vectors (default: the build's)")
    parser.add_argument("--moments", type=int, default=None,
                        help="moments per result video (default 3; 0: none): the run's moment head, else the "
                             "zero-shot heuristic")
    parser.add_argument("--mode", choices=("videos", "moments"), default="videos",
                        help="videos (default), or moments ranked across videos (a run with a moment head)")
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.add_argument("--query-precision", choices=QUERY_PRECISIONS, default=None,
                        help=QUERY_PRECISION_HELP)
    return add_version(parser)


def answer(args: argparse.Namespace) -> dict:
    """The result dict of the one query the arguments give (QueryError when none or several)."""
    given = [name for name in ("query", "image", "clip", "video_id", "like") if getattr(args, name) is not None]
    if len(given) != 1:
        raise QueryError("give exactly one query: the text, --image, --clip, --video-id or --like"
                         + (f" (got {', '.join(given)})" if given else ""))
    windowed = args.start_s is not None or args.end_s is not None
    if windowed and given[0] not in ("clip", "video_id"):
        raise QueryError("--start-s / --end-s are a window of --clip or --video-id")
    params = check_params({"nprobe": args.nprobe, "efSearch": args.efSearch, "rerank": args.rerank,
                           "moments": args.moments, "mode": args.mode})
    if args.mode == "moments" and args.query is None:
        raise QueryError("--mode moments takes a text query")
    if args.query is not None:
        check_query(args.query, args.k)
    searcher = Searcher(args.dataset, args.run, rerank_depth=args.depth, query_precision=args.query_precision)
    examples = ExampleSearch(searcher)
    if args.image is not None:
        return examples.image(args.image.read_bytes(), args.k, name=args.image.name)
    if args.clip is not None:
        return examples.clip(args.clip, args.k, start_s=args.start_s, end_s=args.end_s)
    if args.video_id is not None:
        return examples.video_window(args.video_id, args.k, args.start_s, args.end_s)
    if args.like is not None:
        return examples.like(args.like, args.k)
    return searcher.search([args.query], args.k, params=params)[0]


@guarded(RunNotFound, IndexFolderError, ManifestError, FileNotFoundError, InvalidName, NotIndexed, ValueError)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    found = answer(args)
    print(json.dumps(found, indent=2) if args.json else render(found), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
