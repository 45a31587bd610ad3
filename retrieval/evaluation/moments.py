"""Moment retrieval of one run on the evaluation protocol (docs/methods.md §7, docs/retrieval.md
"Moments"): the split's moment queries, four baselines and the run's trained moment head, each
scored by :func:`data.moment_metrics.svmr_metrics` and :func:`data.moment_metrics.vcmr_metrics`.

Queries (:func:`load_queries`): every caption of the split that has a window
(``datasets/<name>/windows.parquet``, :mod:`data.windows`), its ground truth the ``[A, 2]``
annotator windows in seconds. Its CLIP text embedding ``[D]`` (unit) is the stored clip_text EOT
row of the caption (caption datasets: the same space the service's text tower gives); when the
windows carry their own sentence (paragraph datasets: DiDeMo, ActivityNet Captions) the sentence is
encoded by the run's text tower (``fusion.api.QueryEncoder``). The run's ranking model scores every
query against every video of the split (``[Q, V]``, exact: ``fusion.api.encode_split`` or
``VideoScorer`` for fine-grained models).

Methods: each proposes moments ``(start_s, end_s)`` in seconds.

- ``whole video``: ``[0, duration]``;
- ``random span``: two uniform points of ``[0, duration]``, sorted; seeded per (seed, draw, query)
  and the metrics averaged over ``draws`` draws;
- ``prior window``: the mean training window by relative position (start / duration and
  end / duration averaged over the training split's windows), scaled by the video's duration;
- ``heuristic (frames)``: :meth:`retrieval.query.spans.FrameFeatures.moments`, the query's CLIP
  embedding against the video's stored clip_frames (the moments the service shows without a head);
- ``trained head``: the run's moment head (``fusion.api.MomentPredictor``), when it has one.

SVMR gives each method the query's own video: the whole video, the random span and the prior
window propose one moment (so their R5 equals their R1), the heuristic and the head their best
:data:`SVMR_N`, ranked by their own scores. VCMR (TVR protocol): a baseline's (video, moment) pairs
are the videos ranked by the run's ranking model, each with the baseline's (best) moment and the
video's score, the top :data:`VCMR_DEPTH` videos per query (videos tied at the cut kept; a pair
below them cannot reach R100); the head's pairs come from
:func:`retrieval.query.moments.corpus_moments` over an exact :class:`~retrieval.query.moments.SegmentIndex`
of the split's videos, the corpus search the service runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from data.manifest import VideoRecord, read_manifest
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.moment_metrics import SVMR_KS, VCMR_KS, svmr_metrics, vcmr_metrics
from data.provenance import random_weights_label
from data.settings import Settings, get_settings
from data.store import FeatureSet
from data.windows import CaptionWindow, group_windows, read_windows, windows_path
from retrieval.index.segments import STRIDE_S, WINDOW_S, SegmentIndex
from retrieval.query.moments import corpus_moments
from retrieval.query.spans import FrameFeatures
from retrieval.runs import fusion_api, run_name

WHOLE, RANDOM, PRIOR, HEURISTIC = "whole video", "random span", "prior window", "heuristic (frames)"
HEAD = "trained head"
BASELINES = (WHOLE, RANDOM, PRIOR, HEURISTIC)
RANDOM_DRAWS = 10           # random-span draws averaged per run
SVMR_N = max(SVMR_KS)       # moments the head proposes in the query's own video
VCMR_DEPTH = max(VCMR_KS)   # (video, moment) pairs ranked per query for VCMR
ENCODE_BATCH = 256          # sentences per call of the text tower (paragraph datasets)


class MomentEvalError(ValueError):
    """A dataset or split that has no moment queries to evaluate (one line, exit status 2)."""


@dataclass
class MomentQueries:
    """The moment queries of one split as one run sees them: Q queries over V videos."""

    keys: list[tuple[str, int]]   # [Q] (video_id, caption_index)
    truth: list[np.ndarray]       # [Q] the annotators' windows [A, 2], seconds
    clip: np.ndarray              # [Q, D] float32 unit CLIP text embeddings
    video_ids: list[str]          # [V] the split's videos with usable features
    own: np.ndarray               # [Q] column of each query's video
    ranking: np.ndarray           # [Q, V] the run's text-video scores
    durations: np.ndarray         # [V] seconds
    frames: FrameFeatures         # the videos' stored clip_frames (the heuristic)
    listed: int                   # queries the windows give for the split, before any was left out
    text_source: str              # where ``clip`` came from


def split_windows(dataset: str, split: str, settings: Settings) -> tuple[list[CaptionWindow], dict[str, VideoRecord]]:
    """Every window of ``dataset`` and the manifest records of ``split`` (video id -> record);
    :class:`MomentEvalError` when the dataset has no windows or none falls in the split."""
    path = windows_path(dataset, settings)
    windows = read_windows(path)
    if not windows:
        raise MomentEvalError(f"dataset {dataset!r} has no caption windows ({path}): moment retrieval needs "
                              "captions placed in time (docs/datasets.md \"Moments\"); synthetic-events has them "
                              "(python -m data.synthetic --events)")
    records = {r.video_id: r for r in read_manifest(settings.manifest_path(dataset)).records()}
    in_split = {v: r for v, r in records.items() if r.split == split}
    if not any(w.video_id in in_split for w in windows):
        raise MomentEvalError(f"dataset {dataset!r}: no caption window in split {split!r} ({path})")
    return windows, records


def stored_eot(folder: Path, video_ids: list[str]) -> dict[tuple[str, int], np.ndarray]:
    """``(video_id, caption_index) -> [D]`` unit clip_text EOT embedding of every ``ok`` caption row
    of ``video_ids`` in the clip_text extractor folder ``folder``."""
    table = FeatureSet(folder).read(video_ids)
    index, eot = table.column("caption_index"), table.column("eot_index")
    out = {}
    for i, (vid, status) in enumerate(zip(table.video_ids, table.status)):
        if status == "ok":
            vector = np.asarray(table.row(i)[int(eot[i])], np.float32)
            out[(vid, int(index[i]))] = vector / max(float(np.linalg.norm(vector)), 1e-12)
    return out


def _caption_queries(loaded, dataset: str, split: str, keys: list[tuple[str, int]],
                     records: dict[str, VideoRecord], settings: Settings):
    """Caption datasets: (kept keys, clip ``[Q, D]``, video ids ``[V]``, ranking ``[Q, V]``) from the
    stored clip_text rows and :func:`fusion.api.encode_split`."""
    encoded = fusion_api().encode_split(loaded, dataset, split, settings=settings)
    row_of = {pair: i for i, pair in enumerate(zip(encoded.query_video_ids, encoded.captions))}
    eot = stored_eot(settings.feature_dir(dataset, CLIP_TEXT, loaded.extractor_ids[CLIP_TEXT]), encoded.video_ids)
    kept = [(v, c) for v, c in keys if (v, c) in eot and c < len(records[v].captions)
            and (v, records[v].captions[c]) in row_of]
    rows = np.asarray([row_of[(v, records[v].captions[c])] for v, c in kept], np.int64)
    clip = np.stack([eot[k] for k in kept]) if kept else np.zeros((0, 0), np.float32)
    ranking = np.asarray(encoded.score(rows, np.arange(len(encoded.video_ids))), np.float32)
    return kept, clip, list(encoded.video_ids), ranking


def _sentence_queries(loaded, dataset: str, keys: list[tuple[str, int]], texts: dict[tuple[str, int], str],
                      settings: Settings):
    """Paragraph datasets: the windows' sentences encoded by the run's text tower; same return as
    :func:`_caption_queries`."""
    api = fusion_api()
    vectors, video_ids = api.encode_video_ids(loaded, dataset, sorted({v for v, _ in keys}), settings=settings)
    kept = [k for k in keys if k[0] in set(video_ids) and k in texts]
    sentences = [texts[k] for k in kept]
    encoder = api.QueryEncoder(loaded, settings=settings)
    encoded = [encoder.encode(sentences[s:s + ENCODE_BATCH]) for s in range(0, len(sentences), ENCODE_BATCH)]
    clip = np.concatenate([e.clip for e in encoded]) if encoded else np.zeros((0, 0), np.float32)
    if loaded.fine_grained:
        scorer = api.VideoScorer(loaded, dataset, video_ids, settings=settings)
        parts = [np.asarray(scorer.score(e, video_ids)) for e in encoded]
    else:
        parts = [e.vectors @ vectors.T for e in encoded]
    ranking = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, len(video_ids)), np.float32)
    return kept, clip, video_ids, ranking


def load_queries(loaded, dataset: str, split: str, windows: list[CaptionWindow], records: dict[str, VideoRecord],
                 settings: Settings) -> MomentQueries:
    """The moment queries of ``dataset/split`` for the run ``loaded`` (a ``fusion.api.LoadedModel``),
    from :func:`split_windows`'s ``windows`` and ``records``; queries whose caption or video has no
    usable features are left out (``listed`` counts all)."""
    truth = group_windows(w for w in windows if records.get(w.video_id) and records[w.video_id].split == split)
    texts = {(w.video_id, w.caption_index): w.text for w in windows if w.text}
    keys = sorted(truth)
    if texts:
        kept, clip, video_ids, ranking = _sentence_queries(loaded, dataset, keys, texts, settings)
        source = "each window's sentence encoded by the run's text tower (fusion.api.QueryEncoder)"
    else:
        kept, clip, video_ids, ranking = _caption_queries(loaded, dataset, split, keys, records, settings)
        source = "each caption's stored clip_text EOT embedding, unit-normalised"
    if not kept:
        raise MomentEvalError(f"dataset {dataset!r}, split {split!r}: none of the {len(keys)} captions with a "
                              "window has usable features (extract the dataset first: python -m flows.extract)")
    known = {v: records[v].duration_s for v in video_ids if records[v].duration_s}
    frames = FrameFeatures.load(settings.feature_dir(dataset, CLIP_FRAMES, loaded.extractor_ids[CLIP_FRAMES]),
                                video_ids, known) or FrameFeatures({})
    lacking = [v for v in video_ids if v not in known and v not in frames.durations]
    if lacking:
        raise MomentEvalError(f"video {lacking[0]!r}: no duration in the manifest and no stored frames to measure it")
    column = {v: i for i, v in enumerate(video_ids)}
    return MomentQueries(kept, [truth[k] for k in kept], clip.astype(np.float32), video_ids,
                         np.asarray([column[v] for v, _ in kept], np.int64), ranking,
                         np.asarray([frames.durations.get(v) or known[v] for v in video_ids]), frames, len(keys),
                         source)


def prior_window(windows: list[CaptionWindow], records: dict[str, VideoRecord]) -> tuple[float, float] | None:
    """Mean ``(start_s / duration, end_s / duration)`` over the training split's windows of videos
    with a known duration; None when there are none."""
    relative = [(w.start_s / d, w.end_s / d) for w in windows
                if (r := records.get(w.video_id)) and r.split == "train" and (d := r.duration_s)]
    return tuple(map(float, np.mean(relative, axis=0))) if relative else None


@dataclass
class Baseline:
    """A baseline's moments. ``propose(q, cols [n], draw) -> [n, 2]`` seconds: its one moment in each
    of the videos at columns ``cols`` for query ``q`` (NaN rows: none), what VCMR ranks;
    ``own(q, draw) -> (windows [P, 2], scores [P])``: its SVMR candidates in the query's own video
    (default: the one moment, score 1). ``draws``: independent draws averaged (random baselines)."""

    propose: Callable[[int, np.ndarray, int], np.ndarray]
    draws: int = 1
    own: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None = None


def baselines(queries: MomentQueries, prior: tuple[float, float] | None, seed: int, draws: int) -> dict[str, Baseline]:
    """The baselines over ``queries`` by name; the prior window only with a ``prior``."""
    dur = queries.durations

    def fixed(start: float, end: float) -> Callable[[int, np.ndarray, int], np.ndarray]:
        return lambda q, cols, draw: np.stack([start * dur[cols], end * dur[cols]], axis=1)

    def random_span(q: int, cols: np.ndarray, draw: int) -> np.ndarray:
        points = np.sort(np.random.default_rng([seed, draw, q]).random((len(dur), 2)), axis=1)[cols]
        return points * dur[cols, None]

    def heuristic(q: int, video: str, n: int) -> list[dict]:
        return queries.frames.moments(queries.clip[q], video, n) or []

    def heuristic_best(q: int, cols: np.ndarray, draw: int) -> np.ndarray:
        best = [heuristic(q, queries.video_ids[c], 1) for c in cols]
        return np.array([(m[0]["start_s"], m[0]["end_s"]) if m else (np.nan, np.nan) for m in best]).reshape(-1, 2)

    def heuristic_own(q: int, draw: int) -> tuple[np.ndarray, np.ndarray]:
        found = heuristic(q, queries.video_ids[queries.own[q]], SVMR_N)
        return (np.array([(m["start_s"], m["end_s"]) for m in found]).reshape(-1, 2),
                np.array([m["score"] for m in found], float))

    found = {WHOLE: Baseline(fixed(0.0, 1.0)), RANDOM: Baseline(random_span, draws)}
    if prior is not None:
        found[PRIOR] = Baseline(fixed(*prior))
    found[HEURISTIC] = Baseline(heuristic_best, own=heuristic_own)
    return found


def top_columns(scores: np.ndarray, depth: int) -> np.ndarray:
    """Columns of the ``depth`` best ``scores [V]``, every column tied with the last one included."""
    if len(scores) <= depth:
        return np.arange(len(scores))
    return np.flatnonzero(scores >= np.partition(scores, -depth)[-depth])


def baseline_metrics(queries: MomentQueries, baseline: Baseline) -> dict[str, dict[str, float]]:
    """``{"svmr": {...}, "vcmr": {...}}`` (%) of one baseline, averaged over its draws."""
    candidates = [top_columns(row, VCMR_DEPTH) for row in queries.ranking]
    per_draw = []
    for draw in range(baseline.draws):
        if baseline.own is not None:
            own = [baseline.own(q, draw) for q in range(len(queries.keys))]
        else:
            own = [(w, np.ones(len(w))) for w in (baseline.propose(q, queries.own[q:q + 1], draw)
                                                  for q in range(len(queries.keys)))]
        pairs = []
        for q, cols in enumerate(candidates):
            windows = baseline.propose(q, cols, draw)
            ok = np.isfinite(windows).all(axis=1)
            pairs.append((windows[ok], [queries.video_ids[c] for c in cols[ok]], queries.ranking[q, cols[ok]]))
        per_draw.append({"svmr": svmr_metrics([w for w, _ in own], [s for _, s in own], queries.truth),
                         "vcmr": _vcmr(queries, pairs)})
    return {task: {key: float(np.mean([d[task][key] for d in per_draw])) for key in per_draw[0][task]}
            for task in ("svmr", "vcmr")}


def _vcmr(queries: MomentQueries, pairs: list[tuple[np.ndarray, list[str], np.ndarray]]) -> dict[str, float]:
    """VCMR of per-query (windows ``[P, 2]``, their videos ``[P]``, scores ``[P]``)."""
    windows, videos, scores = zip(*pairs)
    return vcmr_metrics(list(windows), list(videos), list(scores), queries.truth,
                        [v for v, _ in queries.keys])


def head_metrics(loaded, dataset: str, queries: MomentQueries, settings: Settings) -> dict[str, dict[str, float]]:
    """``{"svmr": {...}, "vcmr": {...}}`` (%) of the run's moment head (``loaded.moments``)."""
    predictor = fusion_api().MomentPredictor(loaded, dataset, queries.video_ids, settings=settings)
    known = set(predictor.ids)
    own = [queries.video_ids[c] for c in queries.own]
    asked = [[v] if v in known else [] for v in own]
    proposed = [found[0] if found else [] for found in predictor.moments_each(queries.clip, asked, SVMR_N)]
    svmr = svmr_metrics([np.asarray([(s, e) for s, e, _ in p], float).reshape(-1, 2) for p in proposed],
                        [np.asarray([score for _, _, score in p], float) for p in proposed], queries.truth)
    segments = SegmentIndex.exact(*predictor.segment_vectors(WINDOW_S, STRIDE_S))
    found = corpus_moments(predictor, segments, queries.clip, VCMR_DEPTH, allowed=set(queries.video_ids))
    pairs = [(np.asarray([(p["start_s"], p["end_s"]) for p in hits], float).reshape(-1, 2),
              [p["video_id"] for p in hits], np.asarray([p["score"] for p in hits], float)) for hits in found]
    return {"svmr": svmr, "vcmr": _vcmr(queries, pairs)}


def evaluate_moments(loaded, dataset: str, split: str = "test", *, settings: Settings | None = None,
                     draws: int = RANDOM_DRAWS, seed: int = 0) -> dict:
    """Every method's SVMR and VCMR for the run ``loaded`` on ``dataset/split``:
    ``{"methods": {name: {"svmr", "vcmr"}}, "protocol", "model", "random_weights"[, "WARNING"]}``.
    The trained head is left out (``protocol.head`` says so) when the run has none."""
    settings = settings or get_settings()
    if draws < 1:
        raise MomentEvalError(f"random-span draws: {draws}; expected at least 1")
    windows, records = split_windows(dataset, split, settings)
    queries = load_queries(loaded, dataset, split, windows, records, settings)
    prior = prior_window(windows, records)
    methods = {name: baseline_metrics(queries, baseline)
               for name, baseline in baselines(queries, prior, seed, draws).items()}
    has_head = loaded.moments is not None
    if has_head:
        methods[HEAD] = head_metrics(loaded, dataset, queries, settings)
    protocol = {
        "dataset": dataset, "split": split, "n_queries": len(queries.keys), "n_queries_listed": queries.listed,
        "n_videos": len(queries.video_ids), "queries": queries.text_source, "ties": "averaged",
        "svmr": f"the query's own video; whole video, random span and prior window propose one moment (R5 = R1), "
                f"the heuristic and the head their best {SVMR_N}",
        "vcmr": f"baselines: the top {VCMR_DEPTH} videos of the run's ranking model, each with the baseline's "
                f"moment and the video's score; head: corpus_moments over an exact segment index "
                f"({WINDOW_S:g} s windows every {STRIDE_S:g} s)",
        "random_span": f"{draws} draws (seed {seed}), metrics averaged",
        "prior_window": (None if prior is None else
                         f"[{prior[0]:.3f}, {prior[1]:.3f}] x duration (mean training window by relative position)"),
        "head": "the run's moment head" if has_head else "the run has no moment head: row left out",
    }
    result = {"methods": methods, "protocol": protocol,
              "model": {"name": loaded.name, "run": run_name(loaded.run_dir), "dataset": dataset,
                        "extractor_ids": dict(loaded.extractor_ids)},
              "random_weights": bool(loaded.random_weights)}
    if loaded.random_weights:
        result["WARNING"] = random_weights_label()
    return result
