"""Moments: where in the videos a query fits, per result video and across the corpus.

Per video (search results): up to ``n`` moments of each result video from the run's moment head
(``fusion.api.MomentPredictor``, ``moments_from: "model"``) when the run has one, else from the
zero-shot heuristic over the stored frames (:meth:`retrieval.query.spans.FrameFeatures.moments`,
``moments_from: "heuristic"``).

Across the corpus (:func:`corpus_moments`, the segment / proposal / re-rank design of SPR on
TVR-Ranking): every indexed video is cut offline into fixed-length windows, whose head embeddings form a FAISS
inner-product index beside the video index (:mod:`retrieval.index.segments`). A query's head vector retrieves the top ``depth`` windows; the
videos they belong to are the candidates; the head finds its moments in each candidate video, and
the (video, moment) pairs are ranked together by the head's score. No query scans every video.

A moment is ``{"start_s", "end_s", "score"}`` in seconds with ``0 <= start_s < end_s <=`` the
video's duration.
"""
from __future__ import annotations

import numpy as np

from retrieval.index.segments import SegmentIndex

MOMENTS = 3             # moments per result video unless asked otherwise (``moments=``)
DEPTH = 100             # segments retrieved per query before the head re-ranks their videos
PER_VIDEO = 3           # moments the head proposes per candidate video


CORPUS_SPACE = ("moments: the moment head's query vector against the build's segment windows, their videos' "
                "moments re-ranked by the head")


def video_moments(predictor, frames, clip: np.ndarray | None, video_ids: list[list[str]], ns: list[int]
                  ) -> list[tuple[list[list[dict] | None], str | None]]:
    """For each query ``q``: up to ``ns[q]`` moments of each of its videos ``video_ids[q]`` and where
    they come from. ``clip [Q, D]`` (unit, CLIP space) or None. The moment head (``predictor``, a
    ``fusion.api.MomentPredictor``) answers every query's videos in one call when given, else the
    heuristic over the stored ``frames`` (:class:`retrieval.query.spans.FrameFeatures`);
    ``(None per video, None)`` for a query whose ``n`` is 0 or that neither can answer."""
    out: list[tuple[list[list[dict] | None], str | None]] = [([None] * len(v), None) for v in video_ids]
    asked = [q for q, (vids, n) in enumerate(zip(video_ids, ns)) if n > 0 and clip is not None and vids]
    if predictor is not None and asked:
        known = set(predictor.ids)
        mine = [[vid for vid in video_ids[q] if vid in known] for q in asked]
        proposed = predictor.moments_each(clip[asked], mine, max(ns[q] for q in asked))
        for q, vids, found in zip(asked, mine, proposed):
            by_video = {vid: [{"start_s": round(float(s), 3), "end_s": round(float(e), 3),
                               "score": round(float(score), 6)} for s, e, score in moments[:ns[q]]]
                        for vid, moments in zip(vids, found)}
            out[q] = [by_video.get(vid) for vid in video_ids[q]], "model"
    elif frames is not None:
        for q in asked:
            out[q] = [frames.moments(clip[q], vid, ns[q]) for vid in video_ids[q]], "heuristic"
    return out


def corpus_moments(predictor, segments: SegmentIndex, query_clip: np.ndarray, k: int, *, depth: int = DEPTH,
                   per_video: int = PER_VIDEO, allowed: set[str] | None = None) -> list[list[dict]]:
    """The ``k`` best (video, moment) pairs of each query across the corpus.

    ``predictor``: a ``fusion.api.MomentPredictor`` over the indexed videos; ``query_clip [Q, D]``:
    unit CLIP text EOT embeddings; ``allowed``: the video ids that may answer (videos removed
    since the build are hidden). Returns per query a list of ``{"video_id", "start_s", "end_s",
    "score", "segment_rank"}`` best first (``segment_rank``: where the video's best window came in
    the first stage, 1-based). The head answers every query's candidates in one call."""
    found = segments.search(predictor.query_vectors(query_clip), depth)
    known = set(predictor.ids)
    firsts: list[dict[str, int]] = []
    for hits in found:
        first: dict[str, int] = {}
        for rank, (_, vid, _, _) in enumerate(hits, 1):
            if vid in known and (allowed is None or vid in allowed):
                first.setdefault(vid, rank)
        firsts.append(first)
    proposed = predictor.moments_each(query_clip, [list(first) for first in firsts], per_video)
    out = []
    for first, per_query in zip(firsts, proposed):
        pairs = [{"video_id": vid, "start_s": s, "end_s": e, "score": float(score), "segment_rank": first[vid]}
                 for vid, moments in zip(first, per_query) for s, e, score in moments]
        pairs.sort(key=lambda p: (-p["score"], p["segment_rank"]))
        out.append(pairs[:k])
    return out
