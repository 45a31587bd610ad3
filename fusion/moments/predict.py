"""Moments of free-text queries in stored videos, from a run's trained moment head
(:class:`MomentPredictor`, exported by :mod:`fusion.api`; docs/methods.md §8).

Per (query, video): the start / end log-probabilities ``log p_s(s) + log p_e(e)`` over step pairs
``s <= e`` pick the :data:`CANDIDATES` best windows; each is then scored
``log p_s(s) + log p_e(e) + cos(m, window) / temperature`` (the head's window-query match, a logit
trained against windows of other videos, so scores rank (video, moment) pairs across a corpus), and
greedy non-maximum suppression drops every window whose IoU with a better one is >= :data:`NMS_IOU`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from data.settings import Settings, get_settings
from fusion.encoding import model_device
from fusion.features import DatasetFeatures, load_features
from fusion.layers import l2norm
from fusion.moments.grid import grid_batch, grid_steps, segment_windows, step_edges, video_durations
from fusion.moments.head import MomentHead, one_thread, window_vectors

NMS_IOU = 0.5
CANDIDATES = 32          # boundary pairs per (query, video) re-scored with the match (at least 4 n)
ENCODE_CHUNK = 64        # videos per grid batch when encoding
PAIR_CELLS = 1 << 22     # (pair, start, end) cells per detector pass: bounds its [P, K, K] scores

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
        step_s, n_steps = grid_steps(durations, cfg["step_s"], cfg["max_steps"])
        self._steps: list[torch.Tensor] = []    # per video: step encodings h [K, W]
        self._match: list[torch.Tensor] = []    # per video: unit match vectors z [K, W]
        self._edges: list[tuple[torch.Tensor, torch.Tensor]] = []   # per video: step start, end [K] (s)
        for a in range(0, len(rows), ENCODE_CHUNK):
            grid = grid_batch(feats, rows[a: a + ENCODE_CHUNK], durations[a: a + ENCODE_CHUNK], cfg["step_s"],
                              cfg["max_steps"], head.modalities).to(device)
            x, h = head.encode_steps(grid)
            z = head.match_steps(x)
            for i, n in enumerate(n_steps[a: a + ENCODE_CHUNK]):
                self._steps.append(h[i, :n])
                self._match.append(z[i, :n])
                self._edges.append(step_edges(int(n), float(step_s[a + i]), float(durations[a + i])))

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
            lo, hi = self._edges[i]
            windows = segment_windows(duration, window_s, stride_s)
            bounds = torch.tensor(windows, dtype=torch.float64)
            overlap = (torch.minimum(bounds[:, 1:], hi[None]) - torch.maximum(bounds[:, :1], lo[None])).clamp(min=0)
            vectors.append(l2norm(overlap.to(z.dtype).to(z.device) @ z).cpu())
            where += [(vid, float(a), float(b)) for a, b in windows]
        if not vectors:
            return np.zeros((0, self.head.meta["config"]["width"]), np.float32), []
        return torch.cat(vectors).numpy().astype(np.float32), where

    def moments(self, query_clip: np.ndarray, video_ids: list[str], n: int) -> list[list[list[Moment]]]:
        """:meth:`moments_each` of every query in every video of ``video_ids``."""
        return self.moments_each(query_clip, [video_ids] * len(query_clip), n)

    @torch.no_grad()
    @one_thread()
    def moments_each(self, query_clip: np.ndarray, video_ids: Sequence[list[str]], n: int
                     ) -> list[list[list[Moment]]]:
        """For each query ``q`` of ``query_clip [Q, D]`` (unit clip_text EOT embeddings) and each of
        its videos ``video_ids[q]`` (all in :attr:`ids`): up to ``n`` ``(start_s, end_s, score)`` best
        first, no two with IoU >= 0.5, ``0 <= start_s < end_s <= duration``; scores are comparable
        across videos. All (query, video) pairs are answered together, in padded detector passes of
        similar-length videos (:meth:`_groups`)."""
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        if len(video_ids) != len(query_clip):
            raise ValueError(f"video_ids: one list per query expected, got {len(video_ids)} for {len(query_clip)}")
        missing = [v for vids in video_ids for v in vids if v not in self.row]
        if missing:
            raise ValueError(f"{len(missing)} videos have no moment encodings here (e.g. {missing[0]!r}); "
                             f"ask for videos of .ids")
        match = self.head.match_query(self._queries(query_clip))
        pairs = [(q, self.row[v]) for q, vids in enumerate(video_ids) for v in vids]
        found: list[list[Moment]] = [[] for _ in pairs]
        for group in self._groups([row for _, row in pairs]):
            rows = [pairs[p][1] for p in group]
            for p, moments in zip(group, self._best(rows, match[[pairs[p][0] for p in group]], n)):
                found[p] = moments
        out, at = [], 0
        for vids in video_ids:
            out.append(found[at: at + len(vids)])
            at += len(vids)
        return out

    def _groups(self, rows: list[int]) -> list[list[int]]:
        """Positions in ``rows`` (one video per pair) packed into groups, shortest videos first, each
        of at most :data:`PAIR_CELLS` (pair, start step, end step) cells once padded."""
        groups: list[list[int]] = []
        for p in sorted(range(len(rows)), key=lambda p: len(self._steps[rows[p]])):
            k = len(self._steps[rows[p]])        # the group's longest so far: sorted ascending
            if not groups or (len(groups[-1]) + 1) * k * k > PAIR_CELLS:
                groups.append([])
            groups[-1].append(p)
        return groups

    def _best(self, rows: list[int], match: torch.Tensor, n: int) -> list[list[Moment]]:
        """The top ``n`` moments of P pairs: match query ``match[p]`` (``[P, W]``) in video ``rows[p]``.
        One detector pass over the pairs' videos padded to the longest (K steps)."""
        unique, inverse = np.unique(np.asarray(rows, np.int64), return_inverse=True)
        pick = torch.as_tensor(inverse.reshape(-1), device=match.device)

        def padded(tensors: list[torch.Tensor]) -> torch.Tensor:
            return pad_sequence(tensors, batch_first=True).to(match.device)[pick]

        h, z = padded([self._steps[i] for i in unique]), padded([self._match[i] for i in unique])   # [P, K, W]
        lo_s, hi_s = (padded([self._edges[i][e] for i in unique]) for e in (0, 1))                   # [P, K] s
        p, k = h.shape[:2]
        steps = torch.as_tensor([len(self._steps[i]) for i in rows], device=h.device)
        mask = torch.arange(k, device=h.device)[None] < steps[:, None]                             # [P, K]
        logp = torch.log_softmax(self.head.boundary_logits(h, z, mask, match).float(), 1)          # [P, K, 2]
        valid = mask[:, :, None] & mask[:, None] & torch.ones(k, k, dtype=torch.bool, device=h.device).triu()
        pairs = (logp[:, :, None, 0] + logp[:, None, :, 1]).masked_fill(~valid, float("-inf"))      # [P, K, K]
        top, flat = pairs.flatten(1).topk(min(max(CANDIDATES, 4 * n), k * (k + 1) // 2), dim=1)     # [P, M]
        start, end = flat // k, flat % k
        pair = torch.arange(p, device=h.device)[:, None].expand_as(start)
        windows = window_vectors(z, pair.flatten(), start.flatten(), end.flatten()).view(*start.shape, -1)
        score = top + (windows * match[:, None]).sum(-1) / self.head.temperature
        score = score.masked_fill(torch.isinf(top), float("-inf"))      # a short video's unused candidates
        order = score.argsort(1, descending=True)
        score, start, end = (t.gather(1, order) for t in (score, start, end))
        lo, hi = lo_s.gather(1, start), hi_s.gather(1, end)
        keep = nms(lo, hi) & torch.isfinite(score)
        keep &= keep.cumsum(1) <= n
        lo, hi, score, keep = (t.cpu().numpy() for t in (lo, hi, score, keep))
        durations = [self.durations[self.ids[i]] for i in rows]
        return [[(round(float(lo[j, c]), 6), min(round(float(hi[j, c]), 6), durations[j]), float(score[j, c]))
                 for c in np.flatnonzero(keep[j])] for j in range(p)]


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
