"""Thumbnails and video files for the search page.

A thumbnail is one frame, JPEG, at most :data:`THUMB_WIDTH` pixels wide, taken at a given moment
(the best-matching frame of a result) or the middle of the video. It is made by SEEKING: the
demuxer jumps to the keyframe before the moment and only the frames from there to the moment
are decoded (at most :data:`MAX_DECODED` of them), never the whole video. Thumbnails are cached
under ``indexes/<dataset>/<run>/.thumbnails/`` (beside the builds, so they survive swaps; the
name holds the video id, the moment in milliseconds and a hash of the file's path, size and
modification time, so a replaced file gets a new thumbnail), written to a temporary name and renamed.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import av

from data.atomic import atomic_path

THUMB_WIDTH = 320
MAX_DECODED = 600
THUMBS_DIR = ".thumbnails"


class MediaError(ValueError):
    """A video file that is missing or cannot be decoded."""


def thumbnail_path(cache: Path, video_id: str, video: Path, at_s: float | None) -> Path:
    """Where the thumbnail of ``video`` at ``at_s`` (None: the middle) is cached."""
    try:
        stat = video.stat()
    except OSError:
        raise MediaError(f"video file {video} is missing") from None
    key = hashlib.sha256(f"{video}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    moment = "mid" if at_s is None else f"{int(round(at_s * 1000))}ms"
    return cache / f"{video_id}-{moment}-{key}.jpg"


def thumbnail(cache: Path, video_id: str, video: Path, at_s: float | None = None) -> Path:
    """The cached thumbnail file, made first when missing."""
    out = thumbnail_path(cache, video_id, video, at_s)
    if not out.is_file():
        image = frame_at(video, at_s)
        image.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
        with atomic_path(out) as tmp:
            image.save(tmp, format="JPEG", quality=80)
    return out


def frame_at(video: Path, at_s: float | None):
    """The frame shown at ``at_s`` seconds (None: the middle) as a PIL image, found by seeking."""
    try:
        with av.open(str(video)) as container:
            if not container.streams.video:
                raise MediaError(f"{video} has no video stream")
            stream = container.streams.video[0]
            duration = container.duration / av.time_base if container.duration else None
            target = (duration / 2 if duration else 0.0) if at_s is None else float(at_s)
            if duration:
                target = min(max(target, 0.0), max(duration - 0.05, 0.0))
            container.seek(int(target * av.time_base), backward=True, any_frame=False)
            chosen = None
            for count, frame in enumerate(container.decode(stream)):
                chosen = frame
                if (frame.time is not None and frame.time >= target) or count >= MAX_DECODED:
                    break
            if chosen is None:
                raise MediaError(f"{video}: no frame could be decoded at {target:.2f} s")
            return chosen.to_image()
    except av.error.FFmpegError as err:
        raise MediaError(f"{video} cannot be decoded: {err}") from None
