"""Moments of free-text queries in stored videos, from a run's trained moment head
(:class:`MomentPredictor`, exported by :mod:`fusion.api`; docs/methods.md §8).

Per (query, video): the start / end log-probabilities ``log p_s(s) + log p_e(e)`` over step pairs
``s <= e`` pick the :data:`CANDIDATES` best windows; each is then scored
``log p_s(s) + log p_e(e) + cos(m, window) / temperature`` (the head's window-query match, a logit
trained against windows of other videos, so scores rank (video, moment) pairs across a corpus), and
greedy non-maximum suppression drops every window whose IoU with a better one is >= :data:`NMS_IOU`.
"""
from __future__ import annotations

import numpy as np
import torch

from data.settings import Settings, get_settings
from fusion.encoding import model_device
from fusion.features import DatasetFeatures, load_features
from fusion.layers import l2norm
from fusion.moments.grid import grid_batch, grid_steps, segment_windows, step_edges, video_durations
from fusion.moments.head import MomentHead, one_thread, window_vectors

NMS_IOU = 0.5
CANDIDATES = 32          # boundary pairs per (query, video) re-scored with the match (at least 4 n)
ENCODE_CHUNK = 64        # videos per grid batch when encoding
QUERY_CHUNK = 256        # queries per detector pass

Moment = tuple[float, float, float]   # (start_s, end_s, score)


class MomentPredictor:
    """The head over the stored features of ``video_ids`` (those with frames: :attr:`ids`), encoded
    once. ``loaded``: a :class:`fusion.loaded.LoadedModel` whose ``moments`` holds the run's head."""

    def __init__(self, loaded, dataset: str, video_ids: list[str], *, settings: Settings | None = None):
        head = loaded.moments
        if head is None:
            raise ValueError(f"run {loaded.run_dir or loaded.name!r} has no moment head (one is trained with the "
                             f"ranking model when the dataset has caption windows: docs/models.md \"Moment head\")")
        settings = settings or get_settings()
        feats = load_features(dataset, head.modalities, extractors=head.meta["extractor_ids"], settings=settings,
                              val_holdout=loaded.config.get("val_holdout", 0.1))
        position = {v: i for i, v in enumerate(feats.video_ids)}
        rows = np.asarray([position[v] for v in video_ids if v in position], np.int64)
        self._encode(head, feats, rows, video_durations(feats, settings)[rows])

    @classmethod
    def from_features(cls, head: MomentHead, feats: DatasetFeatures, rows: np.ndarray,
                      durations: np.ndarray) -> "MomentPredictor":
        """The head over feature rows ``rows [V]`` of ``feats`` lasting ``durations [V]`` seconds."""
        predictor = cls.__new__(cls)
        predictor._encode(head, feats, np.asarray(rows, np.int64), np.asarray(durations, np.float64))
        return predictor

    @torch.no_grad()
    @one_thread()
    def _encode(self, head: MomentHead, feats: DatasetFeatures, rows: np.ndarray, durations: np.ndarray) -> None:
        self.head = head.eval()
        self.ids: list[str] = [feats.video_ids[int(r)] for r in rows]
        self.durations: dict[str, float] = {v: float(d) for v, d in zip(self.ids, durations)}
        self.row = {v: i for i, v in enumerate(self.ids)}
        self.random_weights = feats.random_weights
        cfg, device = head.meta["config"], model_device(head)
        self._step_s, n_steps = grid_steps(durations, cfg["step_s"], cfg["max_steps"])
        self._steps: list[torch.Tensor] = []    # per video: step encodings h [K, W]
        self._match: list[torch.Tensor] = []    # per video: unit match vectors z [K, W]
        for a in range(0, len(rows), ENCODE_CHUNK):
            grid = grid_batch(feats, rows[a: a + ENCODE_CHUNK], durations[a: a + ENCODE_CHUNK], cfg["step_s"],
                              cfg["max_steps"], head.modalities).to(device)
            x, h = head.encode_steps(grid)
            z = head.match_steps(x)
            for i, n in enumerate(n_steps[a: a + ENCODE_CHUNK]):
                self._steps.append(h[i, :n])
                self._match.append(z[i, :n])

    def _queries(self, query_clip: np.ndarray) -> torch.Tensor:
        q = np.asarray(query_clip, np.float32)
        dim = self.head.meta["text_dim"]
        if q.ndim != 2 or q.shape[1] != dim:
            raise ValueError(f"query_clip: expected [Q, {dim}] clip_text embeddings, got shape {q.shape}")
        return l2norm(torch.from_numpy(q).to(model_device(self.head)))

    @torch.no_grad()
    @one_thread()
    def query_vectors(self, query_clip: np.ndarray) -> np.ndarray:
        """Unit match queries ``[Q, W]`` float32 of ``query_clip [Q, D]`` (for :meth:`segment_vectors`)."""
        return self.head.match_query(self._queries(query_clip)).cpu().numpy().astype(np.float32)

    @torch.no_grad()
    @one_thread()
    def segment_vectors(self, window_s: float, stride_s: float) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
        """Unit match vectors ``[S, W]`` float32 of fixed windows of every video in :attr:`ids`
        (``window_s`` long every ``stride_s`` seconds, the last clipped to the duration; one window
        for a video shorter than ``window_s``) and their ``(video_id, start_s, end_s)``. A window's
        vector is the overlap-weighted mean of its steps' match vectors, normalised:
        ``query_vectors @ segment_vectors.T`` is the head's window-query cosine."""
        vectors, where = [], []
        for i, vid in enumerate(self.ids):
            duration, z = self.durations[vid], self._match[i]
            lo, hi = step_edges(len(z), float(self._step_s[i]), duration)
            windows = segment_windows(duration, window_s, stride_s)
            bounds = torch.tensor(windows, dtype=torch.float64)
            overlap = (torch.minimum(bounds[:, 1:], hi[None]) - torch.maximum(bounds[:, :1], lo[None])).clamp(min=0)
            vectors.append(l2norm(overlap.to(z.dtype).to(z.device) @ z).cpu())
            where += [(vid, float(a), float(b)) for a, b in windows]
        if not vectors:
            return np.zeros((0, self.head.meta["config"]["width"]), np.float32), []
        return torch.cat(vectors).numpy().astype(np.float32), where

    @torch.no_grad()
    @one_thread()
    def moments(self, query_clip: np.ndarray, video_ids: list[str], n: int) -> list[list[list[Moment]]]:
        """For each query of ``query_clip [Q, D]`` (unit clip_text EOT embeddings) and each of
        ``video_ids`` (all in :attr:`ids`): up to ``n`` ``(start_s, end_s, score)`` best first, no two
        with IoU >= 0.5, ``0 <= start_s < end_s <= duration``; scores are comparable across videos."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        missing = [v for v in video_ids if v not in self.row]
        if missing:
            raise ValueError(f"{len(missing)} videos have no moment encodings here (e.g. {missing[0]!r}); "
                             f"ask for videos of .ids")
        match = self.head.match_query(self._queries(query_clip))
        out: list[list[list[Moment]]] = [[[] for _ in video_ids] for _ in range(len(match))]
        for j, vid in enumerate(video_ids):
            for a in range(0, len(match), QUERY_CHUNK):
                found = self._best(self.row[vid], match[a: a + QUERY_CHUNK], n)
                for k, moments in enumerate(found):
                    out[a + k][j] = moments
        return out

    def _best(self, i: int, match: torch.Tensor, n: int) -> list[list[Moment]]:
        """The top ``n`` moments of match queries ``[Q, W]`` in video ``i``."""
        h, z = self._steps[i], self._match[i]
        k = len(h)
        mask = torch.ones(1, k, dtype=torch.bool, device=h.device)
        logp = torch.log_softmax(self.head.boundary_logits(h[None], z[None], mask, match).float(), 1)   # [Q, K, 2]
        pairs = logp[:, :, None, 0] + logp[:, None, :, 1]                                               # [Q, K, K]
        pairs = pairs.masked_fill(~torch.ones(k, k, dtype=torch.bool, device=h.device).triu(), float("-inf"))
        top, flat = pairs.flatten(1).topk(min(max(CANDIDATES, 4 * n), k * (k + 1) // 2), dim=1)       # [Q, M]
        start, end = flat // k, flat % k
        windows = window_vectors(z[None], torch.zeros_like(start).flatten(), start.flatten(), end.flatten())
        score = top + (windows.view(*start.shape, -1) * match[:, None]).sum(-1) / self.head.temperature
        order = score.argsort(1, descending=True)
        score, start, end = (t.gather(1, order) for t in (score, start, end))
        duration = self.durations[self.ids[i]]
        step_lo, step_hi = (t.to(h.device) for t in step_edges(k, float(self._step_s[i]), duration))
        lo, hi = step_lo[start], step_hi[end]
        keep = nms(lo, hi)
        out = []
        for q in range(len(match)):
            chosen = keep[q].nonzero().flatten()[:n].tolist()
            out.append([(round(float(lo[q, c]), 6), min(round(float(hi[q, c]), 6), duration), float(score[q, c]))
                        for c in chosen])
        return out


def nms(start: torch.Tensor, end: torch.Tensor, iou: float = NMS_IOU) -> torch.Tensor:
    """Greedy non-maximum suppression of windows ``[Q, M]`` (s) sorted best first: ``[Q, M]`` bool,
    True for the windows kept (no kept window has IoU >= ``iou`` with a better kept one)."""
    overlap = torch.minimum(end[:, :, None], end[:, None]) - torch.maximum(start[:, :, None], start[:, None])
    overlap = overlap.clamp(min=0)
    length = end - start
    union = length[:, :, None] + length[:, None] - overlap
    clash = overlap / union.clamp(min=1e-12) >= iou                                             # [Q, M, M]
    keep = torch.zeros_like(start, dtype=torch.bool)
    for j in range(start.shape[1]):
        keep[:, j] = ~(keep & clash[:, :, j]).any(1)
    return keep
