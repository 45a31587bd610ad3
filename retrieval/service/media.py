"""Frames of video files for the search page's thumbnails: seek, decode forward, within a time bound.

:func:`frame_at` returns the frame SHOWN at a moment ``t`` (seconds from the video's first frame,
clamped to ``[0, duration]``; None: the middle): the last frame whose presentation time is <= t
(the first frame when t precedes it). It SEEKS (the demuxer jumps to the keyframe at or before t)
and decodes forward from there until the next frame would be later than t, however many frames
that takes (a video with one keyframe is decoded from its start). The work is bounded in WALL
TIME, not in frames: past ``decode_s`` seconds it raises :class:`MediaTimeout`, never a wrong
frame. :func:`probe_duration` reads the length in seconds from the header or, when the header
lacks it, from the packets' timestamps (demuxed, not decoded; the same time bound). Files are
opened through the ``file`` protocol only (:data:`data.videofiles.FILE_ONLY`).
"""
from __future__ import annotations

import math
import time
from fractions import Fraction
from pathlib import Path

import av

from data.videofiles import FILE_ONLY, file_url

DECODE_S = 10.0          # default wall-time budget of one frame_at / probe_duration call, seconds


class MediaError(ValueError):
    """A video file that is missing or cannot be decoded."""


class MediaTimeout(MediaError):
    """The frame (or the duration) was not found within the wall-time budget."""


def frame_at(video: Path, at_s: float | None, *, decode_s: float = DECODE_S):
    """The frame shown at ``at_s`` seconds (None: the middle) as a PIL image (RGB, the video's size).

    Raises :class:`MediaTimeout` when seeking and decoding take more than ``decode_s`` seconds of
    wall time, :class:`MediaError` when the file is missing or cannot be decoded.
    """
    budget = _Budget(decode_s, video)
    try:
        with av.open(file_url(video), options=FILE_ONLY) as container:
            stream = _video_stream(container, video)
            duration = _header_duration(container, stream)
            if at_s is None:
                target = duration / 2 if duration else 0.0
            else:
                target = max(float(at_s), 0.0)
                target = min(target, duration) if duration else target
            last_pts = (stream.start_time or 0) + math.floor(Fraction(target) / stream.time_base)
            return _shown_at(container, stream, last_pts, budget, f"the frame at {target:.2f} s").to_image()
    except av.error.FFmpegError as err:
        raise MediaError(f"{video} cannot be decoded: {err}") from None


def probe_duration(video: Path, *, decode_s: float = DECODE_S) -> float:
    """The video stream's length in seconds: from the header, else from the last packet's end.

    Raises :class:`MediaTimeout` past ``decode_s`` seconds of demuxing, :class:`MediaError` when the
    file is missing, has no video stream or no timestamped packet.
    """
    budget = _Budget(decode_s, video)
    try:
        with av.open(file_url(video), options=FILE_ONLY) as container:
            stream = _video_stream(container, video)
            duration = _header_duration(container, stream)
            if duration:
                return duration
            end = None
            for packet in container.demux(stream):
                budget.check("its duration")
                if packet.pts is not None:
                    stop = packet.pts + (packet.duration or 0)
                    end = stop if end is None else max(end, stop)
            if end is None:
                raise MediaError(f"{video}: no timestamped video packet, the duration is unknown")
            return float((end - (stream.start_time or 0)) * stream.time_base)
    except av.error.FFmpegError as err:
        raise MediaError(f"{video} cannot be decoded: {err}") from None


class _Budget:
    """A wall-time budget of ``seconds``: :meth:`check` raises :class:`MediaTimeout` once it is spent."""

    def __init__(self, seconds: float, video: Path):
        self.seconds, self.video = seconds, video
        self.end = time.monotonic() + seconds

    def check(self, what: str) -> None:
        if time.monotonic() > self.end:
            raise MediaTimeout(f"{self.video}: {what} not found within {self.seconds:.3g} s of decoding")


def _video_stream(container, video: Path):
    if not container.streams.video:
        raise MediaError(f"{video} has no video stream")
    return container.streams.video[0]


def _header_duration(container, stream) -> float | None:
    """Seconds the header states (the container's, else the stream's), None when it states none."""
    if container.duration:
        return container.duration / av.time_base
    if stream.duration:
        return float(stream.duration * stream.time_base)
    return None


def _shown_at(container, stream, last_pts: int, budget: _Budget, what: str):
    """The last frame with ``pts <= last_pts``: seek to the keyframe before it, decode forward.

    When the seek lands past the moment (an inexact index) the stream is decoded from its start; a
    moment before the first frame gets the first frame.
    """
    first = None
    for seek_pts in dict.fromkeys((last_pts, stream.start_time or 0)):
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        first = shown = None
        for frame in container.decode(stream):
            budget.check(what)
            if frame.pts is None:
                raise MediaError(f"{budget.video}: frames without timestamps, {what} cannot be found")
            if first is None:
                first = frame
            if frame.pts > last_pts:
                break
            shown = frame
        if shown is not None:
            return shown
    if first is None:
        raise MediaError(f"{budget.video}: {what} could not be decoded (no frame)")
    return first
