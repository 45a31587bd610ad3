"""One PyAV pass per video in bounded windows (long, one idea: sampling, skipping and NVDEC share its loop).

Sparse frames, a dense stream and 16 kHz audio from one pass. :func:`stream_video` opens a file
once and demuxes its video and audio streams together; its
:meth:`VideoStream.chunks` yields :class:`DecodedChunk` windows, so the memory of one decode does
not grow with the video's length. :func:`decode_video` joins the windows into one
:class:`DecodedVideo` (tests, benchmarks, short clips). A request produces only what it asks for:

- ``frames``: ``[T, S, S, 3]`` uint8 RGB at ``frame_fps`` (default 1 fps), for CLIP. Every
  decoded frame whose time reaches the next sampling point is taken (selection by time, so
  variable frame rate is handled; no frame is duplicated); ``frame_times`` ``[T]`` in seconds from
  the stream start. At least one frame per video.
- ``dense``: ``[N, s, s, 3]`` uint8 RGB on a regular ``dense_fps`` grid (sample-and-hold: each
  grid time gets the latest frame shown at that time), for SlowFast; ``dense_times`` ``[N]``.
- ``audio``: ``[n_samples]`` float32 in [-1, 1], mono, ``audio_rate`` Hz (PyAV's
  ``AudioResampler``, so any channel layout and rate works).

**Timeline.** Frame times are the presentation times from the video stream's start, except that
a jump is clamped: a step forward of more than :data:`MAX_GAP_S` (5 s) counts as 5 s, and a step
backwards (33-bit MPEG-TS clock wrap, concatenated captures) counts as one frame interval. A
hostile gap therefore adds at most ``5 * dense_fps`` repeated dense frames (75 at 15 fps) and no
sparse frame; the times written are this clamped content time.

**Bounded memory and time.** Windows hold at most :data:`WINDOW_FRAMES` sparse frames,
:data:`WINDOW_DENSE` dense frames and :data:`WINDOW_AUDIO_S` of audio (plus one gap's worth);
pictures larger than :data:`MAX_PIXELS` are refused; a video whose decoding (time spent in the
decoder, not waiting for the models) exceeds ``DecodeOptions.budget_s`` fails with a
:class:`DecodeError` saying so.

**Fast mode** (``DecodeOptions.mode = "fast"``, the default), for streams that reorder frames
(``has_b_frames``, i.e. B-frames; other streams have next to no frame nobody refers to, and are
decoded whole): one demux pass without decoding reads the video packets' timestamps; the samplers
are run on those times to find exactly the frames they will take; then, while decoding, the
packets after the last taken frame of a closed GOP are not decoded (``skip_frame = "ALL"``:
nothing later refers to them) and the other packets skip the frames no other frame refers to
(``"NONREF"``, most B-frames). Every frame a taken frame depends on is decoded, so the taken
frames are bit-identical to the exact path's, with the same times (time error 0). Open GOPs get
only ``NONREF``; files whose timestamps need clamping (gaps, wrap-around, packets without
timestamps) use the exact path. Decoder threads (``thread_type = "AUTO"``, frame and slice
threads) are used for pictures of at least :data:`THREADED_PIXELS`; smaller ones keep one thread.
``mode = "exact"`` is the path before this (every frame decoded, one slice thread).

**GPU** (``DecodeOptions.hwaccel = "cuda"``): FFmpeg's NVDEC through PyAV's ``HWAccel``; frames
come back to system memory and are resized by the same swscale code, so sampling and times are
the CPU path's. Without a usable device the file is decoded on the CPU and a log line says so.

Frames are resized inside FFmpeg (swscale via ``VideoFrame.reformat``) from the decoded picture:
shortest side to the target size (aspect kept, sample aspect ratio honoured), centre square crop,
then the rotation metadata (display matrix). No full-size frame is ever converted to an array.

Failures raise :class:`DecodeError` with the file and the reason. ``OPENS`` counts the decodes per
path so tests can prove one decode per video per run.
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from data.videofiles import FILE_ONLY, file_url

log = logging.getLogger("tvr.decode")

OPENS: Counter = Counter()  # path -> number of decodes started (tests read it)
_OPENS_LOCK = threading.Lock()

MAX_GAP_S = 5.0                 # a forward timestamp jump counts as at most this many seconds
WINDOW_FRAMES = 32              # sparse frames per window
WINDOW_DENSE = 96               # dense frames per window
WINDOW_AUDIO_S = 10.0           # seconds of audio per window
MAX_PIXELS = 8192 * 4352        # largest picture decoded (8K DCI); bounds FFmpeg's frame buffers
THREADED_PIXELS = 640 * 360     # pictures at least this large get several decoder threads


class DecodeError(RuntimeError):
    """A video cannot be decoded; the message names the file and the reason."""


@dataclass(frozen=True)
class DecodeOptions:
    """How to decode (never what): results are identical between modes, devices and threads.

    ``mode``: ``fast`` (skip frames nothing refers to, see the module docstring) or ``exact``
    (decode every frame in one slice thread: the path before the fast one). ``threads``: FFmpeg
    threads per decoder, 0 = the machine's cores for large pictures, 1 for small ones.
    ``hwaccel``: ``None`` or ``"cuda"``. ``budget_s``: seconds of decoding allowed per video.
    """

    mode: str = "fast"
    threads: int = 0
    hwaccel: str | None = None
    budget_s: float = 900.0

    def __post_init__(self):
        if self.mode not in ("fast", "exact"):
            raise ValueError(f"decode mode {self.mode!r}: expected fast or exact")
        if self.hwaccel not in (None, "cuda"):
            raise ValueError(f"hwaccel {self.hwaccel!r}: expected none or cuda")


@dataclass(frozen=True)
class DecodeRequest:
    """What to produce from one decode; ``None`` switches a part off.

    ``frame_fps`` / ``frame_size``: sparse frames (Hz / square side in pixels);
    ``dense_fps`` / ``dense_size``: the dense stream; ``audio_rate``: audio sample rate (Hz).
    ``interpolation``: swscale filter for the sparse frames (the dense stream uses BILINEAR).
    ``options``: how to decode (not merged: the first request's options win).
    """

    frame_fps: float | None = None
    frame_size: int | None = None
    dense_fps: float | None = None
    dense_size: int | None = None
    audio_rate: int | None = None
    interpolation: str = "BICUBIC"
    options: DecodeOptions = DecodeOptions()

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
            if f.name == "options":
                out[f.name] = a
                continue
            if a is not None and b is not None and a != b:
                raise ValueError(f"decode requests disagree on {f.name}: {a} vs {b}")
            out[f.name] = a if a is not None else b
        return DecodeRequest(**out)


def _empty_images() -> np.ndarray:
    return np.zeros((0, 0, 0, 3), np.uint8)


@dataclass
class DecodedChunk:
    """One window of a decode: consecutive frames, dense frames and audio samples."""

    frames: np.ndarray = field(default_factory=_empty_images)            # [t, S, S, 3] uint8
    frame_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [t] s
    dense: np.ndarray = field(default_factory=_empty_images)             # [n, s, s, 3] uint8
    dense_times: np.ndarray = field(default_factory=lambda: np.zeros(0))  # [n] s
    audio: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [samples]


@dataclass
class DecodedVideo(DecodedChunk):
    """What one decode produced: the stream facts, plus (from :func:`decode_video`) every window joined."""

    path: str = ""
    audio_rate: int | None = None
    has_audio: bool = False
    has_video: bool = False
    video_error: str | None = None   # set when video was requested but the file has none
    rotation: int = 0                # degrees applied (counter-clockwise)
    duration_s: float = 0.0          # span covered by the decoded streams
    fast: bool = False               # decoded by the fast path (non-reference frames skipped)
    hwaccel: str | None = None       # device that decoded the video, None for the CPU
    clamped_jumps: int = 0           # timestamp jumps clamped on the timeline
    frames_decoded: int = 0          # video frames the decoder produced (fewer on the fast path)

    def as_chunk(self) -> DecodedChunk:
        return DecodedChunk(self.frames, self.frame_times, self.dense, self.dense_times, self.audio)


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


def image_frame(data: bytes, side: int, interpolation: str) -> np.ndarray:
    """An encoded still image (JPEG, PNG, WebP, ...) as the ``[side, side, 3]`` uint8 RGB frame that a
    video frame of the same picture gives: EXIF orientation applied, then the sparse frames' resize
    (shorter side to ``side`` by swscale's ``interpolation``, centre crop). Raises DecodeError for
    bytes that are not an image, or a picture over :data:`MAX_PIXELS`."""
    import io

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DecodeError(f"the image is {img.width}x{img.height}, over the {MAX_PIXELS:,} pixels accepted")
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DecodeError(f"not a readable image ({exc.__class__.__name__}: {exc})") from None
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return _FrameResizer(side, interpolation, 1.0)(frame)


class _SparseSampler:
    """Takes the first frame at or after each multiple of ``1/fps`` (no duplicates)."""

    def __init__(self, fps: float, resize):
        self.step, self.resize = 1.0 / fps, resize
        self.next_t = -math.inf
        self.images: list = []
        self.times: list[float] = []

    def push(self, frame, t: float) -> None:
        if t >= self.next_t:
            self.images.append(self.resize(frame))
            self.times.append(t)
            self.next_t = (math.floor(t / self.step + 1e-9) + 1) * self.step


class _DenseSampler:
    """Sample-and-hold onto a regular ``1/fps`` grid starting at 0."""

    def __init__(self, fps: float, resize):
        self.step, self.resize = 1.0 / fps, resize
        self.k = 0
        self.prev: tuple = None
        self.prev_img = None
        self.images: list = []
        self.times: list[float] = []

    def _emit_prev(self, until: float, inclusive: bool) -> None:
        while self.prev is not None and (self.k * self.step < until or (inclusive and self.k * self.step <= until)):
            if self.prev_img is None:
                self.prev_img = self.resize(self.prev[0])
            self.images.append(self.prev_img)
            self.times.append(self.k * self.step)
            self.k += 1

    def push(self, frame, t: float) -> None:
        if self.prev is None:
            self.prev = (frame, t)
            return
        self._emit_prev(t, inclusive=False)
        self.prev, self.prev_img = (frame, t), None

    def finish(self) -> None:
        if self.prev is not None:
            self._emit_prev(self.prev[1], inclusive=True)  # grid point 0 always gets a frame


class _Timeline:
    """Raw frame times (s from the stream start, may be None) -> clamped content time (s).

    Times pass unchanged (bit for bit) until a jump: an offset then absorbs the excess, so a step
    forward counts at most ``MAX_GAP_S`` and a step backwards one frame interval ``step``; a first
    time more than ``MAX_GAP_S`` before the start becomes 0, and times before 0 count as 0.
    """

    def __init__(self, step: float):
        self.step = step
        self.last_raw: float | None = None
        self.offset = 0.0
        self.t = 0.0
        self.jumps = 0

    def __call__(self, raw: float | None) -> float:
        if raw is None:
            return self.t
        delta = raw if self.last_raw is None else raw - self.last_raw
        if self.last_raw is None and raw < -MAX_GAP_S:  # a start far before the stream's start time
            self.offset, self.jumps = -raw, self.jumps + 1
        elif self.last_raw is not None and delta < 0:
            self.offset += self.step - delta
            self.jumps += 1
        elif delta > MAX_GAP_S:
            self.offset += MAX_GAP_S - delta
            self.jumps += 1
        self.last_raw = raw
        self.t = max(raw + self.offset, 0.0)
        return self.t


def _stack(images: list[np.ndarray], side: int | None) -> np.ndarray:
    if not images:
        return np.zeros((0, side or 0, side or 0, 3), np.uint8)
    return np.stack(images)


def _ffmpeg_reason(exc: Exception) -> str:
    return f"{exc.__class__.__name__}: {getattr(exc, 'strerror', None) or exc}"


def _open(where: str, hwaccel: str | None):
    """``(container, device used)``; a failing hardware device falls back to the CPU with a log line."""
    if hwaccel is not None:
        from av.codec.hwaccel import HWAccel

        try:
            return av.open(file_url(where), options=FILE_ONLY, metadata_errors="ignore",
                           hwaccel=HWAccel(hwaccel)), hwaccel
        except av.error.FFmpegError as exc:
            log.warning("%s: %s decoding not available (%s); decoding on the CPU", where, hwaccel, _ffmpeg_reason(exc))
    try:
        return av.open(file_url(where), options=FILE_ONLY, metadata_errors="ignore"), None
    except av.error.FFmpegError as exc:
        with open(where, "rb") as fh:
            is_mp4 = fh.read(8)[4:8] == b"ftyp"
        what = ("truncated or corrupt MP4/MOV (its index cannot be read)" if is_mp4
                else "not a media file FFmpeg can read")
        raise DecodeError(f"{where}: {what} ({_ffmpeg_reason(exc)})") from exc


def stream_video(path: str | os.PathLike, request: DecodeRequest) -> "VideoStream":
    """Open ``path`` for one decode of what ``request`` asks; raises :class:`DecodeError` when it cannot."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise DecodeError(f"{where}: file not found")
    if path.stat().st_size == 0:
        raise DecodeError(f"{where}: empty file (0 bytes)")
    with _OPENS_LOCK:
        OPENS[where] += 1
    container, device = _open(where, request.options.hwaccel if request.wants_video else None)
    try:
        return VideoStream(container, where, request, device)
    except BaseException:
        container.close()
        raise


def decode_video(path: str | os.PathLike, request: DecodeRequest) -> DecodedVideo:
    """Decode ``path`` once, every window joined into one :class:`DecodedVideo`. Raises :class:`DecodeError`."""
    with stream_video(path, request) as stream:
        chunks = list(stream.chunks())
        out = stream.info
    out.frames = _stack([c for ch in chunks for c in ch.frames], request.frame_size)
    out.frame_times = np.concatenate([c.frame_times for c in chunks]) if chunks else np.zeros(0)
    out.dense = _stack([c for ch in chunks for c in ch.dense], request.dense_size)
    out.dense_times = np.concatenate([c.dense_times for c in chunks]) if chunks else np.zeros(0)
    audio = [c.audio for c in chunks if len(c.audio)]
    out.audio = np.concatenate(audio).astype(np.float32, copy=False) if audio else np.zeros(0, np.float32)
    return out


class _RewindFailed(Exception):
    """The fast path's rewind did not land on the first packet: decode again from a fresh open."""


def _skip_modes(packets: list[tuple[int, bool]], targets: set[int]) -> list[tuple[int, str]]:
    """``[(pts, skip_frame)]`` for ``[(pts, is_keyframe)]`` in decode order (see ``VideoStream._plan``)."""
    gops: list[list[tuple[int, bool]]] = []
    for p in packets:
        if p[1] or not gops:
            gops.append([])
        gops[-1].append(p)
    open_gops = any(p < gop[0][0] for gop in gops for p, _ in gop[1:])  # leading frames refer back
    out = []
    for gop in gops:
        last = max((i for i, (p, _) in enumerate(gop) if p in targets), default=-1)
        for i, (p, _) in enumerate(gop):
            mode = "DEFAULT" if p in targets else "ALL" if i > last and not open_gops else "NONREF"
            out.append((p, mode))
    return out


class VideoStream:
    """An open video; :meth:`chunks` decodes it window by window (use as a context manager).

    ``info`` (a :class:`DecodedVideo` without arrays) holds the stream facts at once; ``rotation``,
    ``duration_s``, ``fast`` and ``clamped_jumps`` are final when :meth:`chunks` is exhausted.
    """

    def __init__(self, container, where: str, request: DecodeRequest, device: str | None):
        self.where, self.request = where, request
        self._use(container)
        self.info = DecodedVideo(path=where, has_video=self.vstream is not None, hwaccel=device)
        if request.audio_rate is not None and self.astream is not None:
            self.info.has_audio, self.info.audio_rate = True, request.audio_rate
        if request.wants_video and self.vstream is None:
            kind = "audio-only file" if self.astream is not None else "no audio either"
            self.info.video_error = f"{where}: no video stream ({kind})"
        if self.decodes_video:
            ctx = self.vstream.codec_context
            if ctx.width * ctx.height > MAX_PIXELS:
                raise DecodeError(f"{where}: {ctx.width}x{ctx.height} pictures exceed the decode memory budget "
                                  f"({MAX_PIXELS / 1e6:.0f} megapixels)")

    def _use(self, container) -> None:
        self.container = container
        self.vstream = container.streams.video[0] if container.streams.video else None
        self.astream = container.streams.audio[0] if container.streams.audio else None

    def _reopen(self) -> None:
        self.container.close()
        self._use(_open(self.where, self.info.hwaccel)[0])

    @property
    def decodes_video(self) -> bool:
        return self.request.wants_video and self.vstream is not None

    def __enter__(self) -> "VideoStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.container.close()

    # ---- setup ---------------------------------------------------------------------------------
    def _samplers(self, resize_sparse, resize_dense):
        r = self.request
        sparse = _SparseSampler(r.frame_fps, resize_sparse) if r.frame_fps is not None else None
        dense = _DenseSampler(r.dense_fps, resize_dense) if r.dense_fps is not None else None
        return sparse, dense

    def _start_and_step(self) -> tuple[float, float]:
        v = self.vstream
        start = float(v.start_time * v.time_base) if v.start_time is not None else 0.0
        rate = v.average_rate or v.guessed_rate
        return start, (1.0 / float(rate) if rate else 1 / 25)

    def _configure_threads(self) -> None:
        ctx, opts = self.vstream.codec_context, self.request.options
        threads = 1 if opts.mode == "exact" else opts.threads
        if threads == 0:
            threads = (os.cpu_count() or 1) if ctx.width * ctx.height >= THREADED_PIXELS else 1
        self.vstream.thread_type = "AUTO" if threads > 1 else "SLICE"
        ctx.thread_count = threads

    def _plan(self) -> list[tuple[int, str]] | None:
        """``[(pts, skip_frame)]`` per video packet in decode order: what to decode of each.

        One demux pass of the video packets, nothing decoded; the container is then rewound. The
        samplers run on the packets' times to find the frames they will take (``DEFAULT``); in a
        stream of closed GOPs the packets after a GOP's last taken frame are not decoded at all
        (``ALL``: nothing later refers to them); the others skip the frames nothing refers to
        (``NONREF``). Open GOPs (frames shown before their GOP's keyframe, referring back) get no
        ``ALL``. ``None``: decode every frame (timestamps missing, or needing clamps).
        """
        v = self.vstream
        start, _ = self._start_and_step()
        packets = []
        for packet in self.container.demux(v):
            if packet.size == 0:
                continue
            if packet.pts is None:
                return None
            packets.append((packet.pts, bool(packet.is_keyframe)))
        pts = sorted(p for p, _ in packets)
        times = [float(p * v.time_base) - start for p in pts]
        if not times or times[0] < 0 or times[0] > MAX_GAP_S or any(
                b - a > MAX_GAP_S for a, b in zip(times, times[1:])):
            return None
        targets: set[int] = set()
        sparse, dense = self._samplers(targets.add, targets.add)
        for p, t in zip(pts, times):
            for sampler in (sparse, dense):
                if sampler is not None:
                    sampler.push(p, t)
                    sampler.images.clear()
        if dense is not None:
            dense.finish()
        self.container.seek(v.start_time if v.start_time is not None else 0, stream=v)
        return _skip_modes(packets, targets)

    # ---- decoding ------------------------------------------------------------------------------
    def chunks(self) -> Iterator[DecodedChunk]:
        """Windows of the decode in time order; raises :class:`DecodeError` on corrupt data, no
        decodable frame, or a decode that exceeds the time budget."""
        plan = None
        if self.decodes_video and self.request.options.mode == "fast" and self.vstream.codec_context.has_b_frames:
            try:
                plan = self._plan()
            except av.error.FFmpegError:
                plan = None
            if plan is None:
                self._reopen()
        try:
            yield from self._decode(plan)
        except _RewindFailed:
            self._reopen()
            yield from self._decode(None)

    def _decode(self, plan: list[tuple[int, str]] | None) -> Iterator[DecodedChunk]:
        busy, resumed = 0.0, time.perf_counter()
        r, info = self.request, self.info
        streams, sparse, dense, ctx = [], None, None, None
        start, step = 0.0, 1 / 25
        if self.decodes_video:
            self._configure_threads()
            ctx = self.vstream.codec_context
            sar = float(self.vstream.sample_aspect_ratio or 1) or 1.0
            sparse, dense = self._samplers(
                _FrameResizer(r.frame_size, r.interpolation, sar) if r.frame_fps is not None else None,
                _FrameResizer(r.dense_size, "BILINEAR", sar) if r.dense_fps is not None else None)
            start, step = self._start_and_step()
            streams.append(self.vstream)
        resampler = None
        if info.has_audio:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=r.audio_rate)
            streams.append(self.astream)
        timeline = _Timeline(step)
        info.fast = plan is not None
        k = 0  # video packets so far
        audio: list[np.ndarray] = []
        n_audio = total_audio = n_video = windows = 0
        try:
            for packet in self.container.demux(*streams) if streams else ():
                if packet.stream.type == "video":
                    if plan is not None and packet.size:
                        if k >= len(plan) or packet.pts != plan[k][0]:
                            if windows:
                                raise DecodeError(f"{self.where}: the fast path lost its place in the file")
                            raise _RewindFailed
                        ctx.skip_frame, k = plan[k][1], k + 1
                    elif plan is not None:
                        ctx.skip_frame = "DEFAULT"  # flushing
                    for frame in packet.decode():
                        t = timeline(None if frame.time is None else frame.time - start)
                        for s in (sparse, dense):
                            if s is not None:
                                s.push(frame, t)
                        info.rotation = int(frame.rotation or 0)
                        n_video += 1
                else:
                    for frame in packet.decode():
                        for res in resampler.resample(frame):
                            audio.append(res.to_ndarray().reshape(-1))
                            n_audio += len(audio[-1])
                if _full(sparse, dense, n_audio, r.audio_rate):
                    busy = self._check_budget(busy + time.perf_counter() - resumed, n_video)
                    total_audio, windows = total_audio + n_audio, windows + 1
                    yield self._window(sparse, dense, audio)
                    audio, n_audio, resumed = [], 0, time.perf_counter()
            if resampler is not None:
                for res in resampler.resample(None):
                    audio.append(res.to_ndarray().reshape(-1))
                    n_audio += len(audio[-1])
        except av.error.FFmpegError as exc:
            raise DecodeError(f"{self.where}: corrupt or truncated data after {n_video} video frames "
                              f"({_ffmpeg_reason(exc)})") from exc
        if (sparse is not None or dense is not None) and n_video == 0:
            raise DecodeError(f"{self.where}: no video frame could be decoded (truncated or corrupt file)")
        if dense is not None:
            dense.finish()
        self._check_budget(busy + time.perf_counter() - resumed, n_video)
        info.clamped_jumps, info.frames_decoded = timeline.jumps, n_video
        info.duration_s = max(timeline.t, (total_audio + n_audio) / r.audio_rate if r.audio_rate else 0.0)
        yield self._window(sparse, dense, audio)

    def _check_budget(self, busy: float, n_video: int) -> float:
        """``busy`` (s spent decoding this video so far) if within the budget, else :class:`DecodeError`."""
        if busy > self.request.options.budget_s:
            raise DecodeError(f"{self.where}: decoding exceeded its time budget of "
                              f"{self.request.options.budget_s:g} s after {n_video} video frames")
        return busy

    def _window(self, sparse, dense, audio: list[np.ndarray]) -> DecodedChunk:
        r, out = self.request, DecodedChunk()
        if sparse is not None:
            out.frames, out.frame_times = _stack(sparse.images, r.frame_size), np.asarray(sparse.times)
            sparse.images, sparse.times = [], []
        if dense is not None:
            out.dense, out.dense_times = _stack(dense.images, r.dense_size), np.asarray(dense.times)
            dense.images, dense.times = [], []
        if audio:
            out.audio = np.concatenate(audio).astype(np.float32, copy=False)
        return out


def _full(sparse, dense, n_audio: int, rate: int | None) -> bool:
    """Whether the window being filled has reached one of its bounds."""
    return ((sparse is not None and len(sparse.images) >= WINDOW_FRAMES)
            or (dense is not None and len(dense.images) >= WINDOW_DENSE)
            or (rate is not None and n_audio >= WINDOW_AUDIO_S * rate))
