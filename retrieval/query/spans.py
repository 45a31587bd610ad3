"""The zero-shot moment heuristic, and the stored frames it reads (:class:`FrameFeatures`).

The query's clip_text EOT embedding (or an image query's CLIP image embedding) ``[D]`` and a
video's stored clip_frames features ``[T, D]`` live in one CLIP space, so their cosine per frame is
a similarity over time. A moment is the contiguous run of frames around the best frame not yet
taken whose similarity stays at or above the midpoint between the mean and the best of the frames
not yet taken; it runs from its first frame's time to its last frame's time plus one frame step,
clipped to the video's duration (seconds), scored by its best frame's cosine. Further moments are
found the same way among the frames left. This is the baseline of the trained moment head
(``fusion.api.MomentPredictor``); videos without ``ok`` frame features get no moment.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from data.store import FeatureSet, StoreError

DEFAULT_FPS = 1.0     # the clip_frames rate when the extractor did not record one


def heuristic_moments(similarity: np.ndarray, timestamps: np.ndarray, step_s: float, duration_s: float,
                      n: int) -> list[dict]:
    """Up to ``n`` ``{"start_s", "end_s", "score"}`` of one video's per-frame ``similarity [T]`` at
    ``timestamps [T]`` seconds, best first, disjoint, each with ``0 <= start_s < end_s <= duration_s``
    (``step_s``: one frame step; a moment never has zero length)."""
    taken = np.zeros(len(similarity), bool)
    out: list[dict] = []
    while len(out) < n and not taken.all():
        free = np.where(taken, -np.inf, similarity)
        best = int(np.argmax(free))
        threshold = (similarity[~taken].mean() + similarity[best]) / 2
        lo = hi = best
        while lo > 0 and not taken[lo - 1] and similarity[lo - 1] >= threshold:
            lo -= 1
        while hi < len(similarity) - 1 and not taken[hi + 1] and similarity[hi + 1] >= threshold:
            hi += 1
        taken[lo:hi + 1] = True
        start = float(min(max(timestamps[lo], 0.0), duration_s))
        end = float(min(timestamps[hi] + step_s, duration_s))
        if end > start:
            out.append({"start_s": round(start, 3), "end_s": round(end, 3), "score": round(float(similarity[best]), 6)})
    return out


class FrameFeatures:
    """The stored ``clip_frames`` rows (unit-normalised) of some videos, held for moments, image
    queries (:meth:`nearest`) and durations."""

    def __init__(self, frames: dict[str, tuple[np.ndarray, np.ndarray]], step_s: float = 1 / DEFAULT_FPS,
                 known_durations: dict[str, float] | None = None):
        """``step_s``: one frame step of a one-frame video (others: their median step)."""
        self.frames = frames
        self.step_s = float(step_s)
        self.ids = list(frames)
        means = np.stack([values.mean(axis=0) for values, _ in frames.values()]) if frames else np.zeros((0, 1))
        self.means = (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(np.float32)
        self.steps = {vid: float(np.median(np.diff(stamps))) if len(stamps) > 1 else self.step_s
                      for vid, (_, stamps) in frames.items()}
        known = known_durations or {}
        self.durations = {vid: float(known.get(vid) or float(stamps[-1]) + self.steps[vid])
                          for vid, (_, stamps) in frames.items()}

    @classmethod
    def load(cls, folder: Path, video_ids: list[str], known_durations: dict[str, float] | None = None
             ) -> "FrameFeatures | None":
        """Read ``folder`` (a clip_frames extractor folder); None when nothing is stored there.
        ``known_durations``: seconds per video where the manifest knows them (else the last frame's
        time plus one frame step, at the extractor's recorded rate)."""
        try:
            feature_set = FeatureSet(folder)
            table = feature_set.read(video_ids)
        except (StoreError, FileNotFoundError):
            return None
        frames = {}
        for i, (vid, status) in enumerate(zip(table.video_ids, table.status)):
            values, stamps = table.row(i), table.timestamps(i)
            if status == "ok" and len(values) and len(stamps) == len(values):
                unit = values / np.maximum(np.linalg.norm(values, axis=1, keepdims=True), 1e-12)
                frames[vid] = (unit.astype(np.float32), stamps)
        fps = float(feature_set.info.get("params", {}).get("fps") or DEFAULT_FPS)
        return cls(frames, 1 / fps, known_durations)

    def moments(self, query: np.ndarray, video_id: str, n: int) -> list[dict] | None:
        """Up to ``n`` moments of ``query [D]`` (unit) in ``video_id`` (:func:`heuristic_moments`);
        None when the video has no frame features or their dimension differs from the query's."""
        found = self.frames.get(video_id)
        if found is None or found[0].shape[1] != query.shape[0]:
            return None
        values, stamps = found
        return heuristic_moments(values @ query, stamps, self.steps[video_id], self.durations[video_id], n)

    def nearest(self, query: np.ndarray, k: int, allowed: set[str]) -> list[tuple[float, str]]:
        """(cosine, video id) of the ``k`` videos in ``allowed`` whose mean frame embedding (unit,
        ``[D]``) is nearest to ``query [D]`` (unit), best first, equal scores in id order of loading:
        one ``[V, D] @ [D]`` product over the held videos."""
        if not self.ids or self.means.shape[1] != query.shape[0]:
            return []
        scores = self.means @ query
        order = np.argsort(-scores, kind="stable")
        return [(float(scores[i]), self.ids[i]) for i in order if self.ids[i] in allowed][:k]
