"""The search service's thumbnail cache, with its own bounded concurrency: :class:`Thumbnails`.

A thumbnail is one frame (:func:`retrieval.service.media.frame_at`), JPEG, at most
:data:`THUMB_WIDTH` pixels wide, cached under ``indexes/<dataset>/<run>/`` :data:`THUMBS_DIR`
(beside the builds, so it survives swaps), written through :func:`data.atomic.atomic_path` (fsynced,
renamed, its folder fsynced: after a power cut a cached file is whole or absent).

Key rule: the moment is CLAMPED to the video's length first (``[0, duration]``; None: the actual
middle, ``duration / 2``) and then rounded to ``step_s`` (0.1 s); the frame is taken at that
rounded moment, so one key is always one image, and t = 9000001 ... 9000060 s of a 40 s video are
one file (its last frame). The file name is :func:`cache_name`:
``<sha256(video id)[:32]>-<moment>ms-<sha256(path|size|mtime_ns)[:10]>.jpg``, 60-odd bytes
whatever the id holds, and a replaced video file gets new thumbnails.

Size bound: the files' total size stays <= ``max_bytes``; after each write the least-recently-used
files are deleted until it fits (a thumbnail larger than the whole bound is served, not cached).
Sizes and recency are kept in memory, read from the folder once at start (oldest modification
time first); a hit moves the file to the recent end and refreshes its modification time
(``os.utime``: access times may be off), so the order survives a restart.

Read-only cache: when a file cannot be written (a read-only folder, a file where the folder
should be, a full disk) the JPEG bytes are served without caching them, and the reason is
logged once (again only after a write has succeeded in between); cached files are still served.

Decode time bound: probing the duration, seeking and decoding one thumbnail get ``decode_s``
seconds of wall time together; past it :class:`~retrieval.service.media.MediaTimeout` is raised,
never a wrong frame.

Concurrency: thumbnails are made on this class's own pool of ``workers`` threads, never on the
threads of other routes; at most ``queue`` more requests wait for a worker, and a request beyond
those raises :class:`Busy` at once. A request whose key is already known (the video's duration
remembered in memory, for at most :data:`DURATIONS_KEPT` video files) and cached is answered
without taking a worker.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from data.atomic import atomic_path
from retrieval.service.media import DECODE_S, MediaError, frame_at, probe_duration

THUMB_WIDTH = 320          # pixels; the height follows the video's aspect ratio
JPEG_QUALITY = 80
THUMBS_DIR = ".thumbnails"
DURATIONS_KEPT = 4096      # video files whose duration is remembered (least recently used dropped)

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """Every thumbnail worker is busy and the queue is full; ask again after ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: int):
        super().__init__(f"thumbnails are busy; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


def file_identity(video: Path) -> str:
    """Short hash of the video file's path, size and modification time (ns)."""
    try:
        stat = video.stat()
    except OSError:
        raise MediaError(f"video file {video} is missing") from None
    key = f"{video}|{stat.st_size}|{stat.st_mtime_ns}".encode(errors="surrogatepass")
    return hashlib.sha256(key).hexdigest()[:10]


def cache_name(video_id: str, identity: str, moment_ms: int) -> str:
    """The cache file name of ``video_id`` at ``moment_ms`` (the clamped, rounded moment)."""
    id_hash = hashlib.sha256(video_id.encode(errors="surrogatepass")).hexdigest()[:32]
    return f"{id_hash}-{moment_ms}ms-{identity}.jpg"


class Thumbnails:
    """Thumbnails of videos, cached in ``cache_dir`` within ``max_bytes``, made on ``workers`` threads."""

    def __init__(self, cache_dir: Path, *, max_bytes: int, workers: int = 2, queue: int = 32,
                 decode_s: float = DECODE_S, step_s: float = 0.1):
        if max_bytes < 0 or workers < 1 or queue < 0 or decode_s <= 0 or step_s <= 0:
            raise ValueError(f"thumbnails need max_bytes >= 0, workers >= 1, queue >= 0, decode_s > 0 and "
                             f"step_s > 0; got {max_bytes}, {workers}, {queue}, {decode_s}, {step_s}")
        self.cache_dir = Path(cache_dir)
        self.max_bytes, self.workers, self.queue = max_bytes, workers, queue
        self.decode_s, self.step_s = decode_s, step_s
        self._lock = threading.Lock()
        self._files = self._scan()                              # name -> bytes, least recent first
        self._bytes = sum(self._files.values())
        self._durations: OrderedDict[str, float] = OrderedDict()  # file identity -> seconds
        self._in_flight = self._running = 0
        self._mean_s = 0.0                                      # moving average of one make(), seconds
        self._read_only = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="thumbnails")
        with self._lock:
            doomed = self._evict(keep=None)
        _unlink(self.cache_dir, doomed)

    async def get(self, video_id: str, video: Path, at_s: float | None) -> Path | bytes:
        """The thumbnail of ``video`` at ``at_s`` seconds (None: the middle).

        A Path is a cached file, the most recently used one (send it at once); bytes are a JPEG that
        could not be cached. Raises :class:`Busy` without waiting when ``workers + queue`` requests
        are in flight, :class:`~retrieval.service.media.MediaError` (``MediaTimeout``) as :meth:`make`.
        """
        known = self._known(video_id, video, at_s)
        if known is not None:
            return known
        return await asyncio.wrap_future(self._submit(video_id, video, at_s))

    def make(self, video_id: str, video: Path, at_s: float | None) -> Path | bytes:
        """:meth:`get` synchronously, on the calling thread, without admission control."""
        deadline = time.monotonic() + self.decode_s
        identity = file_identity(video)
        moment_ms = self._moment_ms(at_s, self._duration(identity, video, deadline))
        name = cache_name(video_id, identity, moment_ms)
        cached = self._hit(name)
        if cached is not None:
            return cached
        image = frame_at(video, moment_ms / 1000, decode_s=max(deadline - time.monotonic(), 0.0))
        image.thumbnail((THUMB_WIDTH, THUMB_WIDTH * 4))
        jpeg = io.BytesIO()
        image.save(jpeg, format="JPEG", quality=JPEG_QUALITY)
        return self._store(name, jpeg.getvalue())

    def stats(self) -> dict:
        """Cache size (files, bytes, bound), pool (workers, queue, running, waiting), read-only state."""
        with self._lock:
            return {"files": len(self._files), "bytes": self._bytes, "max_bytes": self.max_bytes,
                    "workers": self.workers, "queue": self.queue, "running": self._running,
                    "waiting": self._in_flight - self._running, "read_only": self._read_only}

    def close(self) -> None:
        """Cancel the waiting requests and wait for the running ones (each bounded by ``decode_s``)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _moment_ms(self, at_s: float | None, duration: float) -> int:
        wanted = duration / 2 if at_s is None else min(max(float(at_s), 0.0), duration)
        return round(round(wanted / self.step_s) * self.step_s * 1000)

    def _duration(self, identity: str, video: Path, deadline: float) -> float:
        with self._lock:
            if identity in self._durations:
                self._durations.move_to_end(identity)
                return self._durations[identity]
        seconds = probe_duration(video, decode_s=max(deadline - time.monotonic(), 0.0))
        with self._lock:
            self._durations[identity] = seconds
            while len(self._durations) > DURATIONS_KEPT:
                self._durations.popitem(last=False)
        return seconds

    def _known(self, video_id: str, video: Path, at_s: float | None) -> Path | None:
        """The cached file when the key is known without decoding (the duration is remembered)."""
        identity = file_identity(video)
        with self._lock:
            duration = self._durations.get(identity)
        if duration is None:
            return None
        return self._hit(cache_name(video_id, identity, self._moment_ms(at_s, duration)))

    def _hit(self, name: str) -> Path | None:
        """The cached file ``name`` with its recency refreshed, None when it is not cached."""
        with self._lock:
            if name not in self._files:
                return None
        path = self.cache_dir / name
        try:
            os.utime(path)
        except FileNotFoundError:          # deleted behind this index's back
            with self._lock:
                self._bytes -= self._files.pop(name, 0)
            return None
        except OSError:                    # not ours to touch: the order is kept in memory only
            pass
        with self._lock:
            if name in self._files:
                self._files.move_to_end(name)
        return path

    def _store(self, name: str, jpeg: bytes) -> Path | bytes:
        """Cache ``jpeg`` as ``name`` and evict down to the bound; the bytes when it cannot be written."""
        if len(jpeg) > self.max_bytes:
            return jpeg
        try:
            with atomic_path(self.cache_dir / name) as tmp:
                tmp.write_bytes(jpeg)
        except OSError as err:
            with self._lock:
                first, self._read_only = not self._read_only, True
            if first:
                log.warning("thumbnail cache %s cannot be written (%s); thumbnails are served without "
                            "being cached", self.cache_dir, err)
            return jpeg
        with self._lock:
            self._read_only = False
            self._bytes += len(jpeg) - self._files.pop(name, 0)
            self._files[name] = len(jpeg)
            doomed = self._evict(keep=name)
        _unlink(self.cache_dir, doomed)
        return self.cache_dir / name

    def _evict(self, keep: str | None) -> list[str]:
        """Drop least-recently-used entries but ``keep`` until the bound holds; their names (under the lock)."""
        doomed = []
        while self._bytes > self.max_bytes and self._files and next(iter(self._files)) != keep:
            name, size = self._files.popitem(last=False)
            self._bytes -= size
            doomed.append(name)
        return doomed

    def _submit(self, video_id: str, video: Path, at_s: float | None) -> Future:
        with self._lock:
            if self._in_flight >= self.workers + self.queue:
                raise Busy(max(1, math.ceil(self._mean_s * self._in_flight / self.workers)))
            self._in_flight += 1
        try:
            future = self._pool.submit(self._work, video_id, video, at_s)
        except BaseException:
            self._done(None)
            raise
        future.add_done_callback(self._done)
        return future

    def _work(self, video_id: str, video: Path, at_s: float | None) -> Path | bytes:
        with self._lock:
            self._running += 1
        started = time.monotonic()
        try:
            return self.make(video_id, video, at_s)
        finally:
            with self._lock:
                self._running -= 1
                self._mean_s += 0.2 * (time.monotonic() - started - self._mean_s)

    def _done(self, _future: Future | None) -> None:
        with self._lock:
            self._in_flight -= 1

    def _scan(self) -> OrderedDict[str, int]:
        """The cached files (not the temporary ``.*`` ones) and sizes, oldest modification first."""
        found = []
        try:
            with os.scandir(self.cache_dir) as entries:
                for entry in entries:
                    if entry.name.endswith(".jpg") and not entry.name.startswith(".") and entry.is_file():
                        stat = entry.stat()
                        found.append((stat.st_mtime_ns, entry.name, stat.st_size))
        except OSError:                    # no folder yet (or none possible): an empty cache
            pass
        return OrderedDict((name, size) for _, name, size in sorted(found))


def _unlink(folder: Path, names: list[str]) -> None:
    for name in names:
        try:
            (folder / name).unlink(missing_ok=True)
        except OSError:                    # a read-only folder: the file stays, no longer counted
            pass
