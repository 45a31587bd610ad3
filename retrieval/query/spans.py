"""Matching moments: where in a video a query fits best, from the stored frame features.

The query's clip_text EOT embedding ``[D]`` and a video's stored clip_frames features ``[T, D]``
live in one CLIP space, so their cosine per frame is a similarity over time. The span is the
contiguous run of frames around the best one whose similarity stays at or above the midpoint
between the video's mean and its best similarity; it runs from the first frame's timestamp to
the last one's plus one frame step (seconds). Videos without ``ok`` frame features get no span.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.store import FeatureSet, StoreError


def best_span(similarity: np.ndarray, timestamps: np.ndarray) -> dict:
    """``{"start_s", "end_s", "peak_s", "score"}`` of one video's per-frame ``similarity [T]`` at
    ``timestamps [T]`` seconds (``score``: the best frame's cosine)."""
    best = int(np.argmax(similarity))
    threshold = (similarity.mean() + similarity[best]) / 2
    lo = hi = best
    while lo > 0 and similarity[lo - 1] >= threshold:
        lo -= 1
    while hi < len(similarity) - 1 and similarity[hi + 1] >= threshold:
        hi += 1
    step = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 0.0
    return {"start_s": round(float(timestamps[lo]), 3), "end_s": round(float(timestamps[hi]) + step, 3),
            "peak_s": round(float(timestamps[best]), 3), "score": round(float(similarity[best]), 6)}


class FrameFeatures:
    """The stored ``clip_frames`` rows (unit-normalised) of some videos, held for span look-ups."""

    def __init__(self, frames: dict[str, tuple[np.ndarray, np.ndarray]]):
        self.frames = frames

    @classmethod
    def load(cls, folder: Path, video_ids: list[str]) -> "FrameFeatures | None":
        """Read ``folder`` (a clip_frames extractor folder); None when nothing is stored there."""
        try:
            table = FeatureSet(folder).read(video_ids)
        except (StoreError, FileNotFoundError):
            return None
        frames = {}
        for i, (vid, status) in enumerate(zip(table.video_ids, table.status)):
            values, stamps = table.row(i), table.timestamps(i)
            if status == "ok" and len(values) and len(stamps) == len(values):
                unit = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
                frames[vid] = (unit.astype(np.float32), stamps)
        return cls(frames)

    def spans(self, query: np.ndarray, video_id: str) -> list[dict] | None:
        """The best span of ``query [D]`` (unit) in ``video_id``, as a one-element list; None
        when the video has no frame features or their dimension differs from the query's."""
        found = self.frames.get(video_id)
        if found is None or found[0].shape[1] != query.shape[0]:
            return None
        values, stamps = found
        return [best_span(values @ query, stamps)]
