"""Search a dataset's index: :class:`Searcher` (free text; video-space vectors; image embeddings
against the stored frames) and :func:`search_text`; the command line is :mod:`retrieval.query.cli`.

``python -m retrieval.search "a red ball bouncing" --dataset D`` encodes the text with the run's model (``fusion.api.QueryEncoder``: the same text tower as the
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

import logging
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from data.devices import resolve_device
from data.manifest import read_manifest
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.names import InvalidName, name_problem
from data.provenance import random_weights_label
from data.settings import Settings, get_settings
from retrieval.index.faiss_index import SEARCH_KEYS, IndexFolderError, search
from retrieval.index.layout import IndexBuild
from retrieval.index.reader import check_build, current_build_id, open_build
from retrieval.index.serving import serving_run
from retrieval.query.moments import CORPUS_SPACE, MOMENTS, corpus_moments, video_moments
from retrieval.query.spans import FrameFeatures
from retrieval.runs import fusion_api, load, run_name

log = logging.getLogger(__name__)
MAX_K = 1000
MAX_QUERY_CHARS = 1000
RERANK_DEPTH = 100
# what each kind of query is compared with (the response's "space")
QUERY_KINDS = {"text": "text-video: the model's text vector against the video index",
               "clip": "video-video: the model's video vector of the clip against the video index",
               "like": "video-video: the indexed video's own vector against the video index",
               "image": "frames: the CLIP image embedding against each video's mean clip_frames embedding"}
# name: (min, max); "moments": moments per result video (default MOMENTS, 0: none)
SEARCH_PARAMS = {"nprobe": (1, 65536), "efSearch": (1, 65536), "rerank": (0, 10_000), "moments": (0, 20)}
MODES = ("videos", "moments")   # "mode": videos ranked (each with its moments), or moments ranked across videos


class QueryError(ValueError):
    """A query that cannot be answered as given (empty, too long, k out of range)."""


class NotIndexed(LookupError):
    """A video id that is not in the answering build, or whose file is gone or not servable."""


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
    """Per-query search parameters, validated: only :data:`SEARCH_PARAMS` names, whole numbers in
    range, and ``mode`` one of :data:`MODES`."""
    out = {}
    for name, value in (params or {}).items():
        if value is None:
            continue
        if name == "mode":
            if value not in MODES:
                raise QueryError(f"mode must be one of {', '.join(MODES)}, got {value!r}")
            out[name] = value
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
    predictor: object | None = None         # fusion.api.MomentPredictor of a run with a moment head

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
        known = {vid: d for vid, d in zip(snapshot.column("video_id").to_pylist(),
                                          snapshot.column("duration_s").to_pylist()) if d}
        frames = (FrameFeatures.load(self.settings.feature_dir(self.dataset, CLIP_FRAMES, frames_id), build.ids, known)
                  if frames_id else None)
        predictor = (fusion_api().MomentPredictor(self.loaded, self.dataset, build.ids, settings=self.settings)
                     if getattr(self.loaded, "moments", None) is not None else None)
        info = {key: build.info.get(key) for key in ("build_id", "index_type", "params", "n_vectors")}
        return BuildState(build, present, sum(1 for vid in build.ids if vid not in present),
                          [n for n in (build.warning, stale) if n], captions, scorer, frames, info,
                          build.stored_vectors(), pointer, predictor)

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
        corpus = [q for q, p in enumerate(per) if p.get("mode") == "moments"]
        if not corpus:
            return self._answer(queries.vectors, ks, per, state, queries.clip, list(texts), queries=queries)
        out: list = [None] * len(texts)
        for q, found in zip(corpus, self._corpus(queries.clip[corpus], [ks[q] for q in corpus], state)):
            out[q] = self._envelope(texts[q], "moments", state, found, "moments")
        rest = sorted(set(range(len(texts))) - set(corpus))
        if rest:
            answered = self._answer(queries.vectors[rest], [ks[q] for q in rest], [per[q] for q in rest], state,
                                    queries.clip[rest], [texts[q] for q in rest],
                                    queries=queries.select(rest))
            for q, found in zip(rest, answered):
                out[q] = found
        return out

    def search_vector(self, vector: np.ndarray, k: int, *, query: str, kind: str, clip: np.ndarray | None,
                      exclude: str | None = None, state: BuildState | None = None) -> dict:
        """Videos nearest to a video-space ``vector [E]`` (a clip's, or an indexed video's own: a
        search by example), first stage only (a fine-grained model's exact score needs text);
        ``clip [D]`` (unit, clip_frames space) finds the moments; ``exclude``: a video id left out."""
        check_query(query, k)
        state = state or self.state
        vectors = np.asarray(vector, np.float32)[None]
        return self._answer(vectors, [k], [{}], state, None if clip is None else clip[None], [query],
                            kind=kind, exclude=exclude)[0]

    def video_path(self, video_id: str, state: BuildState | None = None) -> tuple[Path, str]:
        """(file, path relative to the video root) of an indexed video, its containment checked now:
        the resolved file must lie inside the resolved video root (a video replaced by a symlink out
        of the folder is refused). Raises InvalidName (a broken id) or :class:`NotIndexed`."""
        problem = name_problem(video_id, nested=True)           # the manifest's id rule (data.manifest)
        if problem is not None:
            raise InvalidName(f"video id {video_id!r} {problem}")
        state = state or self.state
        rel = state.build.paths.get(video_id)
        if rel is None or video_id not in state.present:
            raise NotIndexed(f"no video {video_id!r} in index build {state.build_id}")
        root = os.path.realpath(state.build.manifest.video_root)
        real = os.path.realpath(state.build.manifest.video_root / rel)
        if os.path.commonpath([root, real]) != root:
            log.warning("video %r: %s resolves to %s, outside the video root %s; not served", video_id, rel, real, root)
            raise NotIndexed(f"video {video_id!r}: its file {rel} is not available")
        if not os.path.isfile(real):
            raise NotIndexed(f"video {video_id!r}: its file {rel} is missing")
        return Path(real), rel

    def search_frames(self, clip: np.ndarray, k: int, *, query: str, state: BuildState | None = None) -> dict:
        """Videos whose mean stored clip_frames embedding is nearest to ``clip [D]`` (unit; an image
        query's CLIP image embedding: the frames are what that tower can reach), exactly, by cosine."""
        check_query(query, k)
        state = state or self.state
        if state.frames is None or not state.frames.ids:
            raise QueryError(f"run {self.run!r} of {self.dataset!r} has no stored clip_frames features to "
                             f"search an image against")
        found = state.frames.nearest(clip, k, state.present)
        (moments,) = video_moments(None, state.frames, clip[None], [[vid for _, vid in found]], [MOMENTS])
        return self._result(query, found, moments, state, None, "image")

    def _answer(self, vectors: np.ndarray, ks: list[int], per: list[dict], state: BuildState, clip, labels: list[str],
                *, queries=None, kind: str = "text", exclude: str | None = None) -> list[dict]:
        """Results of query ``vectors [Q, E]``: the index's first stage, then (text queries of a
        fine-grained model) the exact re-rank; ``clip [Q, D]`` or None: the spans' query vectors."""
        dim = vectors.shape[1]
        if dim != state.build.index.d:
            raise IndexFolderError(f"dimension mismatch: the model's query vectors have {dim} dimensions, index "
                                   f"{state.build.folder} holds {state.build.index.d}-dimensional vectors; rebuild "
                                   f"with: python -m retrieval.index --dataset {self.dataset} --run {self.run}")
        reranked = state.scorer is not None and queries is not None
        wanted = [kq + (exclude is not None) for kq in ks]
        depths = [max(kq, self.rerank_depth) if reranked else kq for kq in wanted]
        hits: list = [None] * len(vectors)
        for setting in {tuple(sorted(p.items())) for p in per}:          # one FAISS call per setting
            group = [q for q, p in enumerate(per) if tuple(sorted(p.items())) == setting]
            found = self._first_stage(vectors[group], max(depths[q] for q in group), dict(setting), state)
            for q, row in zip(group, found):
                hits[q] = [(score, vid) for score, vid in row[:depths[q]] if vid != exclude]
        if reranked:
            hits = self._rerank(queries, hits, state)
        hits = [found[:kq] for found, kq in zip(hits, ks)]
        moments = video_moments(state.predictor if kind == "text" else None, state.frames, clip,
                                [[vid for _, vid in found] for found in hits], [p.get("moments", MOMENTS) for p in per])
        return [self._result(label, found, found_moments, state, depth if reranked else None, kind)
                for label, found, found_moments, depth in zip(labels, hits, moments, depths)]

    def _corpus(self, clip: np.ndarray, ks: list[int], state: BuildState) -> list[list[dict]]:
        """The corpus moment mode (:func:`retrieval.query.moments.corpus_moments`) of queries ``clip [Q, D]``."""
        segments = state.build.segments
        if state.predictor is None or segments is None:
            raise QueryError(f"run {self.run!r} has no moment head (or build {state.build_id} no segment index): "
                             f"the moments mode needs a run trained on a dataset with caption windows")
        found = corpus_moments(state.predictor, segments, clip, max(ks), allowed=state.present)
        return [[{"rank": rank, **pair, **state.build.path_of(pair["video_id"]),
                  "caption": state.captions.get(pair["video_id"], ""),
                  "duration_s": state.predictor.durations.get(pair["video_id"])}
                 for rank, pair in enumerate(pairs[:kq], 1)] for pairs, kq in zip(found, ks)]

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

    def _result(self, text: str, found: list[tuple[float, str]], answer: tuple[list, str | None], state: BuildState,
                depth: int | None, kind: str) -> dict:
        """The ``--json`` dict of one query; ``kind`` (:data:`QUERY_KINDS`) also names the space
        searched; ``answer``: the result videos' moments and where they come from
        (:func:`~retrieval.query.moments.video_moments`)."""
        moments, source = answer
        durations = state.predictor.durations if state.predictor is not None else \
            (state.frames.durations if state.frames is not None else {})
        results = [{"rank": rank, "video_id": vid, "score": score, **state.build.path_of(vid),
                    "caption": state.captions.get(vid, ""), "duration_s": durations.get(vid), "moments": found_moments}
                   for rank, ((score, vid), found_moments) in enumerate(zip(found, moments), 1)]
        out = self._envelope(text, kind, state, results, "videos", source)
        if depth is not None:
            out["first_stage"] = {"depth": depth, "ranking": "FAISS top-depth by the coarse vector, re-ranked "
                                                             "by the model's exact score"}
        return out

    def _envelope(self, text: str, kind: str, state: BuildState, results: list[dict], mode: str,
                  moments_from: str | None = "model") -> dict:
        """What every answer says around its ``results``: the query, the space searched, the mode,
        where the moments come from, the run, model and build, notes and the RANDOM WEIGHTS label."""
        out = {"query": text, "query_kind": kind, "space": QUERY_KINDS[kind] if mode == "videos" else CORPUS_SPACE,
               "mode": mode, "moments_from": moments_from, "dataset": self.dataset,
               "run": self.run, "model": self.loaded.name, "index": dict(state.info),
               "query_precision": self.encoder.precision, "results": results,
               "random_weights": bool(self.loaded.random_weights)}
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
