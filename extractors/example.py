"""Features of one query example, computed in memory exactly as extraction computes a stored video's.

A search by example (an uploaded image, a clip file, or a window of an indexed video) must land in
the space the corpus was encoded in, so :class:`ExampleExtractor` re-creates the run's extractors
from their stored ``_extractor.json`` (:meth:`~extractors.config.ExtractConfig.from_infos`; a
rebuilt extractor-id that differs from the stored one is refused) and runs them on the example:

- :meth:`ExampleExtractor.image`: the ``clip_frames`` image tower on the picture resized as a
  video frame is (:func:`~extractors.decode.image_frame`), ``[D]`` float32;
- :meth:`ExampleExtractor.clip`: one decode of the file feeding every video modality (the same
  windows, batching and decode options as a run), per modality ``(values [T, D] float32,
  times [T] s)``, restricted to the steps whose time lies in ``[start_s, end_s)`` when given.

Nothing is written to the store. One example is extracted at a time (the extractors' batch queues
are not shared between threads).
"""
from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from data.manifest import VideoRecord
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from extractors.base import VideoItem, push_video
from extractors.clip import ClipFramesExtractor
from extractors.config import ExtractConfig
from extractors.decode import DecodeError, image_frame, stream_video
from extractors.reader import merged_request

Features = dict[str, tuple[np.ndarray, np.ndarray]]     # modality -> (values [T, D], times [T] s)


class ExampleExtractor:
    """The run's video extractors, rebuilt from ``infos`` (modality -> stored ``_extractor.json``;
    ``clip_text`` is left out), on ``device``."""

    def __init__(self, infos: dict[str, dict], device: str = "auto"):
        video = {m: info for m, info in infos.items() if m != CLIP_TEXT}
        if CLIP_FRAMES not in video:
            raise ValueError("a search by example needs the run's clip_frames extractor")
        configs = ExtractConfig.from_infos(video, device)
        self.extractors = [e for config in configs for e in config.build()]
        wrong = [f"{e.modality}: rebuilt {e.extractor_id}, stored {video[e.modality]['extractor_id']}"
                 for e in self.extractors if e.extractor_id != video[e.modality]["extractor_id"]]
        if wrong:
            raise ValueError(f"the stored extractors cannot be re-created here ({'; '.join(wrong)})")
        self.options = configs[0].decode_options()
        self.frames: ClipFramesExtractor = next(e for e in self.extractors if e.modality == CLIP_FRAMES)
        self._lock = threading.Lock()

    def image(self, data: bytes) -> np.ndarray:
        """The ``[D]`` float32 clip_frames embedding (not normalised) of an encoded image; DecodeError
        when the bytes are not a readable image."""
        frame = image_frame(data, self.frames.size, self.frames.interpolation)
        with self._lock, torch.no_grad():
            return self.frames.forward(torch.from_numpy(frame[None]))[0].numpy().astype(np.float32)

    def clip(self, path: Path, start_s: float | None = None, end_s: float | None = None) -> tuple[Features, float]:
        """Every video modality of the file (those it has: no audio track, no audio row), and the
        decoded duration in seconds. DecodeError when the file cannot be decoded or has no frame in
        the window."""
        request = replace(merged_request(self.extractors), options=self.options)
        with self._lock:
            with stream_video(path, request) as stream:
                item = VideoItem(VideoRecord("example", str(path), "query", ()), decoded=stream.info,
                                 chunks=stream.chunks())
                rows = push_video(self.extractors, item)
                duration = float(stream.info.duration_s)
            for e in self.extractors:
                rows[e.modality] += e.flush()
        out: Features = {}
        for modality, found in rows.items():
            for row in found:
                if row.status == "failed":
                    raise DecodeError(row.error or f"{modality} extraction failed")
                if row.status == "ok" and len(row.values):
                    keep = _in_window(np.asarray(row.timestamps_s, np.float64), start_s, end_s)
                    if keep.any():
                        out[modality] = (np.asarray(row.values, np.float32)[keep],
                                         np.asarray(row.timestamps_s, np.float32)[keep])
        if CLIP_FRAMES not in out:
            raise DecodeError("no video frame in the clip" + (f" between {start_s:g} and {end_s:g} s"
                                                             if start_s is not None else ""))
        return out, duration


def _in_window(times: np.ndarray, start_s: float | None, end_s: float | None) -> np.ndarray:
    """``[T]`` bool: the steps at ``times`` (s) inside ``[start_s, end_s)`` (all when no window)."""
    keep = np.ones(len(times), bool)
    if start_s is not None:
        keep &= times >= start_s
    if end_s is not None:
        keep &= times < end_s
    return keep
