"""The moment head's time grid: each video's stored features resampled onto fixed steps in seconds.

A video of duration d (the manifest's ``duration_s`` when known, else its last frame time plus one
frame step) gets ``K = ceil(d / s - 0.001)`` steps of ``s = max(step_s, d / max_steps)`` seconds:
step k covers ``[k s, (k + 1) s)`` and sits at ``(k + 0.5) s``, except the last, which ends at d
(so it lasts between 0.001 and 1.001 steps). Every modality is resampled onto the step centres with
:func:`fusion.layers.interval_weights` (each step averages the stored steps inside its interval, or
takes the nearest one), so 1 fps frames, 0.96 s audio windows and 2.1 s motion clips meet on one
grid. Frames are unit-normalised first. A moment is a pair of steps ``(s, e)``, ``s <= e``, i.e.
seconds ``[s * step, (e + 1) * step]`` (``d`` when e is the last step; :func:`step_edges`), so
``0 <= start < end <= d`` always holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from data.manifest import read_manifest
from data.modalities import CLIP_FRAMES
from data.settings import Settings
from fusion.features import DatasetFeatures
from fusion.layers import interval_weights, l2norm


@dataclass
class GridBatch:
    """B videos on their grids, padded to the longest (K steps). Masks are True on real steps."""

    inputs: dict[str, torch.Tensor]     # modality -> [B, K, C] resampled values
    present: dict[str, torch.Tensor]    # modality -> [B] bool: the video has it (frames: always)
    mask: torch.Tensor                  # [B, K] bool
    step_s: torch.Tensor                # [B] step length (s)

    def to(self, device) -> "GridBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {k: ({m: t.to(device) for m, t in v.items()} if isinstance(v, dict) else v.to(device))
                 for k, v in moved.items()}
        return replace(self, **moved)


def grid_steps(duration_s: np.ndarray, step_s: float, max_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(step [V] s, n_steps [V])`` of videos lasting ``duration_s [V]`` seconds."""
    duration = np.asarray(duration_s, np.float64)
    step = np.maximum(step_s, duration / max_steps)
    return step, np.maximum(1, np.ceil(duration / step - 1e-3)).astype(np.int64)


def step_edges(n_steps: int, step_s: float, duration_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Start and end ``([K], [K])`` float64 seconds of each step of one video (the last ends at its
    duration)."""
    start = torch.arange(n_steps, dtype=torch.float64) * step_s
    end = start + step_s
    end[-1] = duration_s
    return start, end


def video_durations(feats: DatasetFeatures, settings: Settings) -> np.ndarray:
    """``[V]`` seconds per video of ``feats``: the manifest's ``duration_s`` when known and positive,
    else the last frame time plus one frame step (``1 / fps`` of the clip_frames extractor)."""
    table = read_manifest(settings.manifest_path(feats.dataset)).table
    listed = dict(zip(table.column("video_id").to_pylist(), table.column("duration_s").to_pylist()))
    frame_step = 1.0 / float(feats.infos[CLIP_FRAMES].get("params", {}).get("fps", 1.0))
    out = np.empty(len(feats.video_ids))
    for i, vid in enumerate(feats.video_ids):
        known = listed.get(vid)
        if known is not None and known > 0:
            out[i] = known
        else:
            start = int(feats.frames.starts[i])
            out[i] = float(feats.frames.times[start: start + int(feats.frames.lengths[i])].max()) + frame_step
    return out


def frame_statistics(feats: DatasetFeatures, split: str, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean [D], std [D])`` of the unit frame vectors of ``split``'s videos (float64 sums over
    ``chunk`` videos at a time), as :meth:`DatasetFeatures.input_statistics` gives for audio / motion."""
    rows = torch.as_tensor(feats.split_videos(split), dtype=torch.int64)
    total = torch.zeros(feats.frames.flat.shape[1], dtype=torch.float64)
    squares, count = torch.zeros_like(total), 0
    for a in range(0, len(rows), chunk):
        values, mask, _ = feats.frames.pad(rows[a: a + chunk])
        unit = l2norm(values)[mask].double()
        total += unit.sum(0)
        squares += (unit * unit).sum(0)
        count += len(unit)
    mean = total / max(count, 1)
    return mean.float(), (squares / max(count, 1) - mean * mean).clamp(min=0).sqrt().float()


def grid_batch(feats: DatasetFeatures, rows: np.ndarray, duration_s: np.ndarray, step_s: float, max_steps: int,
               modalities: tuple[str, ...]) -> GridBatch:
    """The grid inputs of the feature rows ``rows`` ``[B]`` (``duration_s [B]`` seconds): frames and
    ``modalities`` (``audio`` / ``motion``) resampled onto the step centres."""
    rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
    step, n = grid_steps(duration_s, step_s, max_steps)
    k = int(n.max()) if len(n) else 1
    mask = torch.arange(k)[None] < torch.as_tensor(n)[:, None]
    step_t = torch.as_tensor(step, dtype=torch.float32)
    centres = (torch.arange(k, dtype=torch.float32)[None] + 0.5) * step_t[:, None] * mask
    inputs, present = {}, {}
    sources = [(CLIP_FRAMES, feats.frames, torch.ones(len(feats.video_ids), dtype=torch.bool))]
    sources += [(m, getattr(feats, m), getattr(feats, f"has_{m}")) for m in modalities]
    for name, ragged, has in sources:
        values, src_mask, src_t = ragged.pad(rows_t)
        if name == CLIP_FRAMES:
            values = l2norm(values)
        has = has[rows_t]
        inputs[name] = interval_weights(centres, mask, src_t, src_mask & has[:, None]) @ values
        present[name] = has
    return GridBatch(inputs, present, mask, step_t)


def window_steps(bounds_s: np.ndarray, step_s: np.ndarray, n_steps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last step ``([N], [N])`` int64 of windows ``bounds_s [N, 2]`` (s) on grids of
    ``step_s [N]`` seconds and ``n_steps [N]`` steps: the nearest step edges, at least one step."""
    bounds = np.asarray(bounds_s, np.float64).reshape(-1, 2)
    last = np.asarray(n_steps) - 1
    start = np.clip(np.round(bounds[:, 0] / step_s), 0, last).astype(np.int64)
    end = np.clip(np.round(bounds[:, 1] / step_s) - 1, start, last).astype(np.int64)
    return start, end


def segment_windows(duration_s: float, window_s: float, stride_s: float) -> list[tuple[float, float]]:
    """Fixed-length windows ``(start_s, end_s)`` every ``stride_s`` seconds until one reaches the end
    (clipped to ``duration_s``); a video shorter than ``window_s`` gets one window."""
    if window_s <= 0 or stride_s <= 0:
        raise ValueError(f"segment windows need window_s > 0 and stride_s > 0 (got {window_s}, {stride_s})")
    count = 1 + max(0, math.ceil((duration_s - window_s) / stride_s - 1e-9))
    return [(i * stride_s, min(i * stride_s + window_s, duration_s)) for i in range(count)
            if i == 0 or i * stride_s < duration_s]
