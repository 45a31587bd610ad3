"""SlowFast R50 motion features (``motion`` modality), pytorchvideo's ``create_slowfast``.

Input: the decoder's dense stream, ``dense_fps`` (default 15) frames per second, shortest side
resized to ``size`` (default 128) and centre-cropped to ``size`` x ``size`` (a cheap size for 2 CPU
cores; the Kinetics recipe uses 224 — pass ``--motion-size 224`` with pretrained weights).
Clips: consecutive non-overlapping runs of ``clip_frames`` (default 32, i.e. 2.13 s at 15 fps)
dense frames for the fast pathway; the slow pathway takes ``clip_frames / alpha`` (alpha = 4)
evenly spaced frames of the same clip. A last partial clip is kept when it holds at least half a
clip (and a video always gives at least one clip), padded by repeating its last frame. Clips are
cut from the decoder's windows as they arrive (fewer than ``clip_frames`` frames carried over), so
the dense stream of a whole video is never held or copied at once.
Normalisation: [0, 1] then mean 0.45 / std 0.225 per channel (pytorchvideo's Kinetics values;
``pytorchvideo.transforms`` does not import on this torchvision, so it is done here).

Output: the head's projection is replaced by Identity, so the model returns the 2304-d
(slow 2048 + fast 256) globally pooled features, ``[N_clips, 2304]``; timestamps are clip centres
(mean of the first and last real frame times of each clip). The head's pooling kernel follows the
input size: ``(T_slow, size/32, size/32)`` and ``(T_fast, size/32, size/32)``.

Weights file: a pytorchvideo / SlowFast state dict (``SLOWFAST_8x8_R50.pyth``-style, optionally
under ``model_state``), loaded with ``weights_only=True``; the classification projection
(``blocks.6.proj.*``) is dropped.
"""
from __future__ import annotations

import numpy as np
import torch

from data.modalities import MOTION
from data.store import FeatureRow
from extractors.base import Extractor, VideoItem
from extractors.weights import Weights, cached_local_model
from extractors.decode import DecodedChunk, DecodeRequest

ALPHA = 4
MEAN, STD = 0.45, 0.225


def clip_spans(n_frames: int, clip_frames: int) -> list[tuple[int, int]]:
    """``[(start, end)]`` frame ranges of the clips of a dense stream of ``n_frames`` frames."""
    spans = [(s, min(s + clip_frames, n_frames)) for s in range(0, n_frames, clip_frames)]
    if len(spans) > 1 and spans[-1][1] - spans[-1][0] < clip_frames / 2:
        spans.pop()
    return spans


def _build_slowfast(size: int, clip_frames: int) -> torch.nn.Module:
    """SlowFast R50 whose head pools over the whole clip and returns the 2304-d features."""
    from pytorchvideo.models.slowfast import create_slowfast

    if size % 32:
        raise ValueError(f"motion size {size}: must be a multiple of 32")
    s = size // 32
    pools = ((clip_frames // ALPHA, s, s), (clip_frames, s, s))
    model = create_slowfast(model_num_class=400, head_pool_kernel_sizes=pools)
    model.blocks[-1].proj = torch.nn.Identity()  # 2304-d pooled features instead of class logits
    return model


def _without_classifier(state: dict) -> dict:
    state = state.get("model_state", state)
    return {k: v for k, v in state.items() if not k.startswith("blocks.6.proj.")}


def load_slowfast(weights: Weights, size: int, clip_frames: int, device: torch.device, precision: str):
    """SlowFast R50 returning ``[B, 2304]`` pooled features (cached per process)."""
    return cached_local_model(MOTION, ("slowfast_r50", size, clip_frames), weights,
                              lambda: _build_slowfast(size, clip_frames), _without_classifier, device, precision)


class MotionExtractor(Extractor):
    """``motion``: ``[N_clips, 2304]`` SlowFast R50 features per ~2 s clip."""

    modality = MOTION
    code_version = "motion/1"

    def __init__(self, model_name: str, weights: Weights, device: torch.device, precision: str,
                 batch_size: int | None = None, fps: float = 15.0, size: int = 128, clip_frames: int = 32):
        if model_name != "slowfast_r50":
            raise ValueError(f"motion model {model_name!r}: only 'slowfast_r50' is implemented")
        super().__init__(model_name, weights, device, precision, batch_size or 4)
        self.fps, self.size, self.clip_frames = float(fps), int(size), int(clip_frames)
        if precision == "fp16" and device.type != "cuda":
            raise ValueError("motion: fp16 needs CUDA (avg_pool3d has no half-precision CPU kernel); use fp32")
        if self.clip_frames % ALPHA:
            raise ValueError(f"motion clip_frames {clip_frames}: must be a multiple of {ALPHA}")
        self.model = load_slowfast(weights, self.size, self.clip_frames, device, precision)
        self.slow_index = torch.linspace(0, self.clip_frames - 1, self.clip_frames // ALPHA).long().to(device)

    @property
    def dim(self) -> int:
        return 2304

    @property
    def request(self) -> DecodeRequest:
        return DecodeRequest(dense_fps=self.fps, dense_size=self.size)

    def extra_params(self) -> dict:
        return {"fps": self.fps, "size": self.size, "clip_frames": self.clip_frames, "alpha": ALPHA,
                "resize": "short side + centre crop, BILINEAR", "mean": MEAN, "std": STD}

    def units(self, item: VideoItem, chunk: DecodedChunk, state: dict) -> tuple[torch.Tensor, np.ndarray]:
        """Full clips of the carried-over + new dense frames: ``[n, clip_frames, S, S, 3]`` uint8 and
        their ``[n]`` centre times; the remainder is carried to the next window."""
        frames = np.concatenate([state["frames"], chunk.dense]) if "frames" in state else chunk.dense
        times = np.concatenate([state["times"], chunk.dense_times]) if "times" in state else chunk.dense_times
        n = len(frames) // self.clip_frames * self.clip_frames
        state["frames"], state["times"] = frames[n:].copy(), times[n:]
        state["clips"] = state.get("clips", 0) + n // self.clip_frames
        clips = frames[:n].reshape(-1, self.clip_frames, *frames.shape[1:])
        span = times[:n].reshape(-1, self.clip_frames)
        return torch.from_numpy(clips), (span[:, 0] + span[:, -1]) / 2

    def last_units(self, item: VideoItem, state: dict) -> tuple[torch.Tensor, np.ndarray]:
        """The last partial clip (kept when at least half full, or when it is the only one), padded."""
        frames, times = state.get("frames", []), state.get("times", [])
        if not len(frames) or (state.get("clips", 0) and len(frames) < self.clip_frames / 2):
            return torch.zeros(0, self.clip_frames, self.size, self.size, 3, dtype=torch.uint8), np.zeros(0)
        idx = np.minimum(np.arange(self.clip_frames), len(frames) - 1)
        return torch.from_numpy(frames[idx][None]), np.asarray([(times[0] + times[-1]) / 2])

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """``[B, T, S, S, 3]`` uint8 -> ``[B, 2304]`` float32 (CPU)."""
        fast = batch.to(self.device).permute(0, 4, 1, 2, 3).float().div_(255).sub_(MEAN).div_(STD).to(self.dtype)
        slow = fast.index_select(2, self.slow_index)
        return self.model([slow, fast]).float().cpu()  # a fresh list: the model mutates it

    def to_rows(self, item: VideoItem, outputs: list, times: np.ndarray) -> list[FeatureRow]:
        return [FeatureRow(item.video_id, torch.stack(outputs).numpy(), times)]
