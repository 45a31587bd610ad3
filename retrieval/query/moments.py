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


def video_moments(predictor, frames, clip: np.ndarray | None, video_ids: list[str], n: int
                  ) -> tuple[list[list[dict] | None], str | None]:
    """Up to ``n`` moments of each of ``video_ids`` for the query ``clip [D]`` (unit, CLIP space) and
    where they come from: the moment head (``predictor``, a ``fusion.api.MomentPredictor``) when
    given, else the heuristic over the stored ``frames`` (:class:`retrieval.query.spans.FrameFeatures`);
    ``(None per video, None)`` when ``n`` is 0 or neither can answer."""
    if n == 0 or clip is None or not video_ids:
        return [None] * len(video_ids), None
    if predictor is not None:
        known = set(predictor.ids)
        asked = [vid for vid in video_ids if vid in known]
        proposed = dict(zip(asked, predictor.moments(clip[None], asked, n)[0] if asked else []))
        return [[{"start_s": round(float(s), 3), "end_s": round(float(e), 3), "score": round(float(score), 6)}
                 for s, e, score in proposed[vid]] if vid in proposed else None for vid in video_ids], "model"
    if frames is not None:
        return [frames.moments(clip, vid, n) for vid in video_ids], "heuristic"
    return [None] * len(video_ids), None


def corpus_moments(predictor, segments: SegmentIndex, query_clip: np.ndarray, k: int, *, depth: int = DEPTH,
                   per_video: int = PER_VIDEO, allowed: set[str] | None = None) -> list[list[dict]]:
    """The ``k`` best (video, moment) pairs of each query across the corpus.

    ``predictor``: a ``fusion.api.MomentPredictor`` over the indexed videos; ``query_clip [Q, D]``:
    unit CLIP text EOT embeddings; ``allowed``: the video ids that may answer (videos removed
    since the build are hidden). Returns per query a list of ``{"video_id", "start_s", "end_s",
    "score", "segment_rank"}`` best first (``segment_rank``: where the video's best window came in
    the first stage, 1-based)."""
    found = segments.search(predictor.query_vectors(query_clip), depth)
    known = set(predictor.ids)
    out = []
    for q, hits in enumerate(found):
        first: dict[str, int] = {}
        for rank, (_, vid, _, _) in enumerate(hits, 1):
            if vid in known and (allowed is None or vid in allowed):
                first.setdefault(vid, rank)
        videos = list(first)
        proposed = predictor.moments(query_clip[q:q + 1], videos, per_video)[0] if videos else []
        pairs = [{"video_id": vid, "start_s": s, "end_s": e, "score": float(score), "segment_rank": first[vid]}
                 for vid, moments in zip(videos, proposed) for s, e, score in moments]
        pairs.sort(key=lambda p: (-p["score"], p["segment_rank"]))
        out.append(pairs[:k])
    return out
