"""``python -m retrieval.search "a red ball bouncing" --dataset D [--run R] [-k 10] [--json]``

Encodes the text with the run's model (``fusion.api.encode_queries``, the same text tower as the
stored captions), searches the ``current`` index build of ``indexes/<dataset>/<run>`` and prints
the top-k videos: rank, id, score (the model's own scale), path from the build's manifest
snapshot, and time spans (null: the models of ``fusion.api`` give none yet).

Refuses, with a specific message: a missing run, a missing index, an index built with other
extractor ids or for another manifest (fewer than half of its videos in the dataset), a dimension
mismatch. An index of the same collection whose manifest changed since it was built (videos
added or removed, re-indexing pending or running) still answers, with a "stale index" note and
removed videos hidden: a search during a rebuild answers from the old index.
Fine-grained models are searched by their coarse vector only (free-text queries have no exact
re-ranking through ``fusion.api``); the output says so.
"""
from __future__ import annotations

import argparse
import json
import sys

from data.cli import add_version
from data.manifest import ManifestError, read_manifest
from data.settings import Settings, get_settings
from retrieval.faiss_index import search
from retrieval.index import IndexFolderError, check_build, open_build
from retrieval.runs import ZERO_SHOT, RunNotFound, fusion_api, load, run_name

COARSE_NOTE = ("fine-grained model: ranked by its coarse vector only; exact re-ranking needs token-level "
               "query features, which fusion.api.encode_queries does not return")


def search_text(text: str, dataset: str, run: str = ZERO_SHOT, k: int = 10,
                settings: Settings | None = None) -> dict:
    """Top-``k`` videos for ``text``; the dict printed by ``--json``."""
    if not text.strip():
        raise ValueError("empty query text")
    if k < 1:
        raise ValueError(f"-k must be at least 1, got {k}")
    settings = settings or get_settings()
    loaded = load(run, dataset, settings)
    build = open_build(dataset, run_name(loaded.run_dir), settings)
    manifest = read_manifest(settings.manifest_path(dataset))
    try:
        queries = fusion_api().encode_queries(loaded, [text], settings=settings)
    except RuntimeError as err:           # the text tower could not be rebuilt or run
        raise ValueError(f"cannot encode the query with the model of run {run_name(loaded.run_dir)!r} "
                         f"(text extractor {loaded.extractor_ids.get('clip_text')}): {str(err)[:300]}") from err
    stale = check_build(build, extractor_ids=loaded.extractor_ids, manifest=manifest, dim=queries.shape[1],
                        stale_ok=True)
    present = set(manifest.video_ids)
    hidden = len(build.ids) - sum(1 for vid in build.ids if vid in present)
    scores, rows = search(build.index, queries, k + hidden)
    hits = [(float(score), build.ids[row]) for score, row in zip(scores[0], rows[0])
            if row >= 0 and build.ids[row] in present][:k]
    results = [{"rank": rank, "video_id": vid, "score": score, **build.path_of(vid), "spans": None}
               for rank, (score, vid) in enumerate(hits, 1)]
    out = {"query": text, "dataset": dataset, "run": run_name(loaded.run_dir), "model": loaded.name,
           "index": {key: build.info.get(key) for key in ("build_id", "index_type", "params", "n_vectors")},
           "results": results, "random_weights": bool(loaded.random_weights)}
    notes = [n for n in (COARSE_NOTE if loaded.fine_grained else None, stale) if n]
    if notes:
        out["note"] = "; ".join(notes)
    if loaded.random_weights:
        out["WARNING"] = "RANDOM WEIGHTS: rankings come from randomly initialised feature extractors"
    return out


def render(found: dict) -> str:
    lines = [f"!!! {found['WARNING']} !!!"] if "WARNING" in found else []
    idx = found["index"]
    lines.append(f"{found['query']!r} in {found['dataset']} ({found['model']}, run {found['run']}; "
                 f"{idx['index_type']} index {idx['build_id']}, {idx['n_vectors']} videos)")
    if "note" in found:
        lines.append(found["note"])
    for r in found["results"]:
        lines.append(f"{r['rank']:>3}  {r['score']:9.4f}  {r['video_id']}  {r['path']}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.search",
        description="Free text in, ranked videos out, from the current index of a dataset and run "
                    "(build it with python -m retrieval.index).")
    parser.add_argument("query", help="the text to search for")
    parser.add_argument("--dataset", required=True, help="dataset name under datasets/")
    parser.add_argument("--run", default=ZERO_SHOT, help="run folder, run id, or 'zero-shot' (default)")
    parser.add_argument("-k", type=int, default=10, help="how many videos (default 10)")
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    add_version(parser)
    args = parser.parse_args(argv)
    try:
        found = search_text(args.query, args.dataset, args.run, args.k)
    except (RunNotFound, IndexFolderError, ManifestError, FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(found, indent=2) if args.json else render(found), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
