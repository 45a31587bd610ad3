"""The names of the four modalities: feature folders (``features/<dataset>/<modality>/``), extractor
registry keys, model inputs and manifest options all use these constants, never string literals."""
from __future__ import annotations

CLIP_FRAMES = "clip_frames"   # CLIP image embeddings of sampled frames, [T, D] per video
CLIP_TEXT = "clip_text"       # CLIP text tokens of each caption, [L, D] per caption
AUDIO = "audio"               # VGGish-style log-mel embeddings, [T, 128] per video (absent without a track)
MOTION = "motion"             # SlowFast clip embeddings, [T, 2304] per video

MODALITIES: tuple[str, ...] = (CLIP_FRAMES, CLIP_TEXT, AUDIO, MOTION)
VIDEO_MODALITIES: tuple[str, ...] = (CLIP_FRAMES, AUDIO, MOTION)
