"""``python -m retrieval.search "a red ball bouncing" --dataset D [--run R] [-k 10] [--json]``

Encodes the text with the run's model (``fusion.api.QueryEncoder``: the same text tower as the
stored captions), searches the ``current`` index build of ``indexes/<dataset>/<run>`` (default
run: the dataset's serving run, :mod:`retrieval.index.serving`) and prints the top-k videos: rank, id,
score (the model's own scale), path from the build's manifest snapshot, the video's first caption,
and ``spans``: the best-matching moment in seconds, from the cosine of the query's clip_text
embedding with the video's stored clip_frames features (:mod:`retrieval.query.spans`; null when the
video has no stored frame features).

Fine-grained models (HCMI, any model whose exact score is not one inner product) answer in two
stages: FAISS top-``depth`` by the coarse vector, then the model's exact score re-ranks those
candidates (``first_stage`` in the JSON states the depth); with a depth covering the collection
the ranking equals the exact ranking over every video.

Search-time parameters (:data:`SEARCH_PARAMS`): ``nprobe`` (IVF), ``efSearch`` (HNSW and HNSW coarse
quantizers) and ``rerank`` (candidates re-scored exactly from the build's stored vectors) can be
given per query; unset ones take the build's tuned defaults (``info.json["params"]``).

Refuses, with a specific message: a missing run, a missing index, an index built with other
extractor ids or for another manifest (fewer than half of its videos in the dataset), a dimension
mismatch, an empty query, ``k`` outside 1..1000, a query over :data:`MAX_QUERY_CHARS` characters.
An index of the same collection whose manifest changed since it was built (videos added or
removed, re-indexing pending or running) still answers, with a "stale index" note and removed
videos hidden; a damaged ``current`` build is replaced by the newest verified one, with a note.

:class:`Searcher` loads the model, text tower and build once and answers many batches of queries
(the search service, :mod:`retrieval.service`, holds one); :func:`search_text` is one query.
"""
from __future__ import annotations

import argparse
import json
import sys
import unicodedata
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from data.cli import add_version, guarded
from data.devices import resolve_device
from data.manifest import ManifestError, read_manifest
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.provenance import random_weights_banner, random_weights_label
from data.settings import QUERY_PRECISION_HELP, QUERY_PRECISIONS, Settings, get_settings
from retrieval.index.faiss_index import SEARCH_KEYS, IndexFolderError, search
from retrieval.index.layout import IndexBuild
from retrieval.index.reader import check_build, current_build_id, open_build
from retrieval.index.serving import serving_run
from retrieval.query.spans import FrameFeatures
from retrieval.runs import RunNotFound, fusion_api, load, run_name

MAX_K = 1000
MAX_QUERY_CHARS = 1000
RERANK_DEPTH = 100
SEARCH_PARAMS = {"nprobe": (1, 65536), "efSearch": (1, 65536), "rerank": (0, 10_000)}   # name: (min, max)


class QueryError(ValueError):
    """A query that cannot be answered as given (empty, too long, k out of range)."""


def check_query(text: str, k: int) -> str:
    """``text`` when it and ``k`` are acceptable, else :class:`QueryError` naming the problem."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError("empty query text: type some words to search for")
    if any(unicodedata.category(ch) in ("Cc", "Cs") and ch not in "\t\n\r" for ch in text):
        raise QueryError("the query contains a control character (NUL, ...) or an unpaired surrogate; "
                         "send plain text")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query too long: {len(text)} characters, at most {MAX_QUERY_CHARS}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise QueryError(f"k must be a whole number from 1 to {MAX_K}, got {k!r}")
    return text


def check_params(params: dict | None) -> dict:
    """Per-query search parameters, validated: only :data:`SEARCH_PARAMS` names, whole numbers in range."""
    out = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        if name not in SEARCH_PARAMS:
            raise QueryError(f"unknown search parameter {name!r}; choose from {', '.join(SEARCH_PARAMS)}")
        low, high = SEARCH_PARAMS[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise QueryError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        out[name] = value
    return out


@dataclass
class BuildState:
    """One opened build and everything answering from it needs; replaced as a whole on a swap."""

    build: IndexBuild
    present: set[str]
    hidden: int
    notes: list[str]
    captions: dict[str, str]
    scorer: object | None = None            # fusion.api.VideoScorer of a fine-grained model
    frames: FrameFeatures | None = None
    info: dict = field(default_factory=dict)
    vectors: np.ndarray | None = None       # stored vectors (in memory, or mapped when large) for exact re-ranking
    pointer: str | None = None              # what ``current`` named just BEFORE this build was opened

    @property
    def build_id(self) -> str:
        return self.build.build_id


class Searcher:
    """The model, its text tower and one index build, loaded once; :meth:`search` answers batches.

    ``run``: a run folder / id or ``zero-shot`` (default: the dataset's serving run). ``device``:
    ``auto`` / ``cpu`` / ``cuda`` (default ``$TVR_DEVICE``). ``rerank_depth``: first-stage depth of
    fine-grained models (at least ``k``). ``query_precision``: the text tower's weights
    (``data.settings.QUERY_PRECISIONS``; default ``$TVR_QUERY_PRECISION``, else ``stored``).
    """

    def __init__(self, dataset: str, run: str | None = None, *, settings: Settings | None = None,
                 device: str | None = None, rerank_depth: int = RERANK_DEPTH, query_precision: str | None = None):
        self.settings = settings or get_settings()
        self.dataset = dataset
        self.loaded = load(run or serving_run(dataset, self.settings), dataset, self.settings)
        self.run = run_name(self.loaded.run_dir)
        self.device = str(resolve_device(device or self.settings.device))   # "cpu", "cuda", "cuda:N"
        if self.loaded.model is not None and self.device != "cpu":
            self.loaded.model.to(self.device)
        try:
            self.encoder = fusion_api().QueryEncoder(self.loaded, settings=self.settings, device=self.device,
                                                     precision=query_precision)
        except RuntimeError as err:           # the text tower could not be rebuilt
            raise ValueError(f"cannot rebuild the text tower of run {self.run!r} (text extractor "
                             f"{self.loaded.extractor_ids.get(CLIP_TEXT)}): {str(err)[:300]}") from err
        self.rerank_depth = int(rerank_depth)
        self.state = self.open()

    def open(self) -> BuildState:
        """Open the ``current`` build (or the newest verified one) with what answering needs; the
        pointer is read first, so a build published while this one is verified is seen as new."""
        pointer = current_build_id(self.dataset, self.run, self.settings)
        build = open_build(self.dataset, self.run, self.settings)
        manifest = read_manifest(self.settings.manifest_path(self.dataset))
        stale = check_build(build, extractor_ids=self.loaded.extractor_ids, manifest=manifest,
                            dim=build.index.d, stale_ok=True)
        present = set(manifest.video_ids)
        snapshot = build.manifest.table
        captions = {vid: (caps[0] if caps else "") for vid, caps in
                    zip(snapshot.column("video_id").to_pylist(), snapshot.column("captions").to_pylist())}
        scorer = (fusion_api().VideoScorer(self.loaded, self.dataset, build.ids, settings=self.settings)
                  if self.loaded.fine_grained else None)
        frames_id = self.loaded.extractor_ids.get(CLIP_FRAMES)
        frames = (FrameFeatures.load(self.settings.feature_dir(self.dataset, CLIP_FRAMES, frames_id), build.ids)
                  if frames_id else None)
        info = {key: build.info.get(key) for key in ("build_id", "index_type", "params", "n_vectors")}
        return BuildState(build, present, sum(1 for vid in build.ids if vid not in present),
                          [n for n in (build.warning, stale) if n], captions, scorer, frames, info,
                          build.stored_vectors(), pointer)

    def search(self, texts: list[str], k: int | Sequence[int] = 10, state: BuildState | None = None,
               params: dict | Sequence[dict | None] | None = None) -> list[dict]:
        """One result dict (the ``--json`` output) per text, all answered from one build; ``k``: one
        for all texts or one per text (the service batches queries with different ``k``); ``params``:
        search parameters (:data:`SEARCH_PARAMS`) for all texts or one dict per text."""
        ks = [k] * len(texts) if isinstance(k, int) else list(k)
        per = [params] * len(texts) if params is None or isinstance(params, dict) else list(params)
        for text, kq in zip(texts, ks, strict=True):
            check_query(text, kq)
        per = [check_params(p) for p in per]
        state = state or self.state
        try:
            queries = self.encoder.encode(list(texts))
        except RuntimeError as err:
            raise ValueError(f"cannot encode the query with the model of run {self.run!r}: {str(err)[:300]}") from err
        dim = queries.vectors.shape[1]
        if dim != state.build.index.d:
            raise IndexFolderError(f"dimension mismatch: the model's query vectors have {dim} dimensions, index "
                                   f"{state.build.folder} holds {state.build.index.d}-dimensional vectors; rebuild "
                                   f"with: python -m retrieval.index --dataset {self.dataset} --run {self.run}")
        depths = [max(kq, self.rerank_depth) if state.scorer is not None else kq for kq in ks]
        hits: list = [None] * len(texts)
        for setting in {tuple(sorted(p.items())) for p in per}:          # one FAISS call per setting
            group = [q for q, p in enumerate(per) if tuple(sorted(p.items())) == setting]
            found = self._first_stage(queries.vectors[group], max(depths[q] for q in group), dict(setting), state)
            for q, row in zip(group, found):
                hits[q] = row[:depths[q]]
        if state.scorer is not None:
            hits = self._rerank(queries, hits, state)
        return [self._result(text, found[:kq], queries.clip[q], state, depth)
                for q, (text, found, kq, depth) in enumerate(zip(texts, hits, ks, depths))]

    def _first_stage(self, vectors: np.ndarray, depth: int, setting: dict, state: BuildState) -> list:
        """(score, video id) lists from the index, removed videos hidden; ``setting`` over the build's defaults."""
        defaults = {key: value for key, value in (state.build.info.get("params") or {}).items() if key in SEARCH_KEYS}
        merged = {**defaults, **setting}
        scores, rows = search(state.build.index, vectors, depth + state.hidden, nprobe=merged.get("nprobe"),
                              efSearch=merged.get("efSearch"), rerank=merged.get("rerank"),
                              vectors=state.vectors if merged.get("rerank") else None)
        return [[(float(s), state.build.ids[r]) for s, r in zip(srow, rrow)
                 if r >= 0 and state.build.ids[r] in state.present] for srow, rrow in zip(scores, rows)]

    def _rerank(self, queries, hits: list[list[tuple[float, str]]], state: BuildState) -> list:
        """Exact scores of each query's candidates; candidates sorted by them (stable)."""
        union = sorted({vid for found in hits for _, vid in found if vid in state.scorer.row})
        column = {vid: j for j, vid in enumerate(union)}
        exact = state.scorer.score(queries, union) if union else np.zeros((len(hits), 0), np.float32)
        out = []
        for q, found in enumerate(hits):
            scored = [(float(exact[q, column[vid]]), vid) for _, vid in found if vid in column]
            out.append(sorted(scored, key=lambda pair: -pair[0]))
        return out

    def _result(self, text: str, found: list[tuple[float, str]], clip: np.ndarray, state: BuildState,
                depth: int) -> dict:
        results = [{"rank": rank, "video_id": vid, "score": score, **state.build.path_of(vid),
                    "caption": state.captions.get(vid, ""),
                    "spans": state.frames.spans(clip, vid) if state.frames is not None else None}
                   for rank, (score, vid) in enumerate(found, 1)]
        out = {"query": text, "dataset": self.dataset, "run": self.run, "model": self.loaded.name,
               "index": dict(state.info), "query_precision": self.encoder.precision, "results": results,
               "random_weights": bool(self.loaded.random_weights)}
        if state.scorer is not None:
            out["first_stage"] = {"depth": depth, "ranking": "FAISS top-depth by the coarse vector, re-ranked "
                                                             "by the model's exact score"}
        if state.notes:
            out["note"] = "; ".join(state.notes)
        if self.loaded.random_weights:
            out["WARNING"] = random_weights_label()
        return out


def search_text(text: str, dataset: str, run: str | None = None, k: int = 10,
                settings: Settings | None = None, rerank_depth: int = RERANK_DEPTH, params: dict | None = None,
                query_precision: str | None = None) -> dict:
    """Top-``k`` videos for ``text``; the dict printed by ``--json``."""
    check_query(text, k)
    params = check_params(params)
    return Searcher(dataset, run, settings=settings, rerank_depth=rerank_depth,
                    query_precision=query_precision).search([text], k, params=params)[0]


def render(found: dict) -> str:
    lines = [random_weights_banner(found["WARNING"])] if "WARNING" in found else []
    idx = found["index"]
    lines.append(f"{found['query']!r} in {found['dataset']} ({found['model']}, run {found['run']}; "
                 f"{idx['index_type']} index {idx['build_id']}, {idx['n_vectors']} videos)")
    if "first_stage" in found:
        lines.append(f"first stage: top {found['first_stage']['depth']} by the coarse vector, re-ranked exactly")
    if "note" in found:
        lines.append(found["note"])
    for r in found["results"]:
        span = r["spans"][0] if r["spans"] else None
        moment = f"  {span['start_s']:.1f}-{span['end_s']:.1f} s" if span else ""
        lines.append(f"{r['rank']:>3}  {r['score']:9.4f}  {r['video_id']}  {r['path']}{moment}")
    return "\n".join(lines) + "\n"


@guarded(RunNotFound, IndexFolderError, ManifestError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.search",
        description="Free text in, ranked videos out, from the current index of a dataset and run "
                    "(build it with python -m retrieval.index).")
    parser.add_argument("query", help="the text to search for")
    parser.add_argument("--dataset", required=True, help="dataset name under datasets/")
    parser.add_argument("--run", default=None,
                        help="run folder, run id, or 'zero-shot' (default: the dataset's serving run)")
    parser.add_argument("-k", type=int, default=10, help=f"how many videos (default 10, at most {MAX_K})")
    parser.add_argument("--depth", type=int, default=RERANK_DEPTH,
                        help=f"fine-grained models: first-stage candidates re-ranked exactly (default {RERANK_DEPTH})")
    parser.add_argument("--nprobe", type=int, help="IVF lists searched (default: the build's tuned value)")
    parser.add_argument("--ef-search", type=int, dest="efSearch", help="HNSW efSearch (default: the build's)")
    parser.add_argument("--rerank", type=int, help="candidates re-scored exactly from stored vectors (default: the build's)")
    parser.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parser.add_argument("--query-precision", choices=QUERY_PRECISIONS, default=None,
                        help=QUERY_PRECISION_HELP)
    add_version(parser)
    args = parser.parse_args(argv)
    found = search_text(args.query, args.dataset, args.run, args.k, rerank_depth=args.depth,
                        params={"nprobe": args.nprobe, "efSearch": args.efSearch, "rerank": args.rerank},
                        query_precision=args.query_precision)
    print(json.dumps(found, indent=2) if args.json else render(found), end="\n" if args.json else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
