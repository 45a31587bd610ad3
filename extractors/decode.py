"""One PyAV pass per video: sparse frames, a dense frame stream and 16 kHz mono audio.

:func:`decode_video` opens a file once and demuxes its video and audio streams together,
producing only what the :class:`DecodeRequest` asks for:

- ``frames``: ``[T, S, S, 3]`` uint8 RGB at ``frame_fps`` (default 1 fps), for CLIP. Every
  decoded frame whose presentation time reaches the next sampling point is taken (selection by
  pts, so variable frame rate is handled; no frame is duplicated); ``frame_times`` ``[T]`` are
  the chosen frames' presentation times in seconds from the stream start. At least one frame.
- ``dense``: ``[N, s, s, 3]`` uint8 RGB on a regular ``dense_fps`` grid (sample-and-hold: each
  grid time gets the latest frame shown at that time), for SlowFast; ``dense_times`` ``[N]``.
- ``audio``: ``[n_samples]`` float32 in [-1, 1], mono, ``audio_rate`` Hz (PyAV's
  ``AudioResampler``, so any channel layout and rate works); ``has_audio``.

Frames are resized inside FFmpeg (swscale via ``VideoFrame.reformat``) straight from the decoded
picture: the shortest side goes to the target size (aspect ratio kept, sample aspect ratio
honoured), then the centre square is cropped and the rotation metadata (display matrix) applied.
No full-size frame is ever converted to an array.

Failures raise :class:`DecodeError` with the file and the reason (missing, zero bytes, not a
media file, no video stream, corrupt or truncated data, no frames). ``OPENS`` counts the
opens per path so tests can prove one decode per video per run.
"""
from __future__ import annotations

import math
import os
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import av
import numpy as np

from data.videofiles import FILE_ONLY, file_url

OPENS: Counter = Counter()  # path -> number of times decode_video opened it (tests read it)
_OPENS_LOCK = threading.Lock()


class DecodeError(RuntimeError):
    """A video cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class DecodeRequest:
    """What to produce from one decode; ``None`` switches a part off.

    ``frame_fps`` / ``frame_size``: sparse frames (Hz / square side in pixels);
    ``dense_fps`` / ``dense_size``: the dense stream; ``audio_rate``: audio sample rate (Hz).
    ``interpolation``: swscale filter for the sparse frames (the dense stream uses BILINEAR).
    """

    frame_fps: float | None = None
    frame_size: int | None = None
    dense_fps: float | None = None
    dense_size: int | None = None
    audio_rate: int | None = None
    interpolation: str = "BICUBIC"

    @property
    def wants_video(self) -> bool:
        return self.frame_fps is not None or self.dense_fps is not None

    @property
    def empty(self) -> bool:
        return not self.wants_video and self.audio_rate is None

    def merge(self, other: "DecodeRequest") -> "DecodeRequest":
        """Union of two requests; conflicting values for the same part raise ValueError."""
        out = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if f.name == "interpolation":
                out[f.name] = a if other.frame_fps is None else b
                continue
            if a is not None and b is not None and a != b:
                raise ValueError(f"decode requests disagree on {f.name}: {a} vs {b}")
            out[f.name] = a if a is not None else b
        return DecodeRequest(**out)


@dataclass
class DecodedVideo:
    """Everything one decode produced (arrays are empty for parts not requested)."""

    path: str
    frames: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dense: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))
    dense_times: np.ndarray = field(default_factory=lambda: np.zeros(0))
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    audio_rate: int | None = None
    has_audio: bool = False
    has_video: bool = False
    video_error: str | None = None   # set when video was requested but the file has none
    rotation: int = 0                # degrees applied (counter-clockwise)
    duration_s: float = 0.0          # span covered by the decoded streams


def resized_dims(width: int, height: int, short_side: int, sar: float = 1.0) -> tuple[int, int]:
    """(w, h) with the shorter displayed side equal to ``short_side`` and aspect kept."""
    disp_w = width * sar
    scale = short_side / min(disp_w, height)
    return max(short_side, int(round(disp_w * scale))), max(short_side, int(round(height * scale)))


def _centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    y, x = (h - side) // 2, (w - side) // 2
    return img[y:y + side, x:x + side]


class _FrameResizer:
    """Turns a decoded ``av.VideoFrame`` into a ``[side, side, 3]`` uint8 RGB array."""

    def __init__(self, side: int, interpolation: str, sar: float):
        self.side, self.interpolation, self.sar = side, interpolation, sar

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        w, h = resized_dims(frame.width, frame.height, self.side, self.sar)
        img = frame.reformat(w, h, format="rgb24", interpolation=self.interpolation).to_ndarray()
        img = _centre_crop(img, self.side)
        k = int(round((frame.rotation or 0) / 90)) % 4
        return np.ascontiguousarray(np.rot90(img, k)) if k else img


class _SparseSampler:
    """Takes the first frame at or after each multiple of ``1/fps`` (no duplicates)."""

    def __init__(self, fps: float, resize: _FrameResizer):
        self.step, self.resize = 1.0 / fps, resize
        self.next_t = -math.inf
        self.images: list[np.ndarray] = []
        self.times: list[float] = []

    def push(self, frame: av.VideoFrame, t: float) -> None:
        if t >= self.next_t:
            self.images.append(self.resize(frame))
            self.times.append(t)
            self.next_t = (math.floor(t / self.step + 1e-9) + 1) * self.step


class _DenseSampler:
    """Sample-and-hold onto a regular ``1/fps`` grid starting at 0."""

    def __init__(self, fps: float, resize: _FrameResizer):
        self.step, self.resize = 1.0 / fps, resize
        self.k = 0
        self.prev: tuple[av.VideoFrame, float] | None = None
        self.prev_img: np.ndarray | None = None
        self.images: list[np.ndarray] = []
        self.times: list[float] = []

    def _emit_prev(self, until: float, inclusive: bool) -> None:
        while self.prev is not None and (self.k * self.step < until or (inclusive and self.k * self.step <= until)):
            if self.prev_img is None:
                self.prev_img = self.resize(self.prev[0])
            self.images.append(self.prev_img)
            self.times.append(self.k * self.step)
            self.k += 1

    def push(self, frame: av.VideoFrame, t: float) -> None:
        if self.prev is None:
            self.prev = (frame, t)
            return
        self._emit_prev(t, inclusive=False)
        self.prev, self.prev_img = (frame, t), None

    def finish(self) -> None:
        if self.prev is not None:
            self._emit_prev(self.prev[1], inclusive=True)  # grid point 0 always gets a frame


def _stack(images: list[np.ndarray], side: int | None) -> np.ndarray:
    if not images:
        return np.zeros((0, side or 0, side or 0, 3), np.uint8)
    return np.stack(images)


def _seconds(obj_time: float | None, start: float) -> float | None:
    return None if obj_time is None else float(obj_time) - start


def decode_video(path: str | os.PathLike, request: DecodeRequest, threads: int = 1) -> DecodedVideo:
    """Decode ``path`` once and return what ``request`` asks for. Raises :class:`DecodeError`.

    ``threads``: FFmpeg decoding threads for the video stream (1 keeps the cores for the model).
    """
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DecodeError(f"{where}: file not found")
    if path.stat().st_size == 0:
        raise DecodeError(f"{where}: empty file (0 bytes)")
    with _OPENS_LOCK:
        OPENS[where] += 1
    try:
        container = av.open(file_url(where), options=FILE_ONLY, metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        with open(where, "rb") as fh:
            is_mp4 = fh.read(8)[4:8] == b"ftyp"
        what = ("truncated or corrupt MP4/MOV (its index cannot be read)" if is_mp4
                else "not a media file FFmpeg can read")
        raise DecodeError(f"{where}: {what} ({exc.__class__.__name__}: "
                          f"{getattr(exc, 'strerror', None) or exc})") from exc
    with container:
        return _decode_open(container, where, request, threads)


def _decode_open(container, where: str, request: DecodeRequest, threads: int) -> DecodedVideo:
    out = DecodedVideo(path=where)
    vstream = container.streams.video[0] if container.streams.video else None
    astream = container.streams.audio[0] if container.streams.audio else None
    out.has_video = vstream is not None
    streams = []
    sparse = dense = None
    if request.wants_video:
        if vstream is None:
            kind = "audio-only file" if astream is not None else "no audio either"
            out.video_error = f"{where}: no video stream ({kind})"
        else:
            vstream.thread_type = "AUTO" if threads > 1 else "SLICE"
            vstream.codec_context.thread_count = threads
            sar = float(vstream.sample_aspect_ratio or 1) or 1.0
            if request.frame_fps is not None:
                sparse = _SparseSampler(request.frame_fps,
                                        _FrameResizer(request.frame_size, request.interpolation, sar))
            if request.dense_fps is not None:
                dense = _DenseSampler(request.dense_fps, _FrameResizer(request.dense_size, "BILINEAR", sar))
            streams.append(vstream)
    resampler = None
    chunks: list[np.ndarray] = []
    if request.audio_rate is not None and astream is not None:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=request.audio_rate)
        streams.append(astream)
        out.has_audio = True
    v_start = float(vstream.start_time * vstream.time_base) if vstream is not None and vstream.start_time is not None else 0.0
    last_t, n_video = 0.0, 0
    try:
        for packet in container.demux(*streams) if streams else ():
            for frame in packet.decode():
                if packet.stream.type == "video":
                    t = _seconds(frame.time, v_start)
                    t = last_t if t is None else max(t, 0.0)
                    if sparse is not None:
                        sparse.push(frame, t)
                    if dense is not None:
                        dense.push(frame, t)
                    out.rotation = int(frame.rotation or 0)
                    last_t, n_video = max(last_t, t), n_video + 1
                else:
                    for res in resampler.resample(frame):
                        chunks.append(res.to_ndarray().reshape(-1))
        if resampler is not None:
            for res in resampler.resample(None):
                chunks.append(res.to_ndarray().reshape(-1))
    except av.error.FFmpegError as exc:
        raise DecodeError(f"{where}: corrupt or truncated data after {n_video} video frames "
                          f"({exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc})") from exc
    if (sparse is not None or dense is not None) and n_video == 0:
        raise DecodeError(f"{where}: no video frame could be decoded (truncated or corrupt file)")
    if dense is not None:
        dense.finish()
    if sparse is not None:
        out.frames, out.frame_times = _stack(sparse.images, request.frame_size), np.asarray(sparse.times)
    if dense is not None:
        out.dense, out.dense_times = _stack(dense.images, request.dense_size), np.asarray(dense.times)
    if resampler is not None:
        out.audio = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, np.float32)
        out.audio_rate = request.audio_rate
    audio_span = len(out.audio) / request.audio_rate if request.audio_rate else 0.0
    out.duration_s = max(last_t, audio_span)
    return out
