"""The decoding feed of a run: each video decoded once, in background threads, ahead of the models.

:func:`iter_decoded` turns ``(record, request)`` jobs into :class:`~extractors.base.VideoItem` s in
job order while ``workers`` threads decode up to ``prefetch`` videos ahead; each item streams its
windows through a bounded queue, so memory stays about ``(prefetch + 1) * window_queue`` windows
whatever the videos' lengths. :func:`merged_request` makes the one request that serves every
extractor of a video. Failures never escape as exceptions of the feed: a file that cannot be opened
is ``item.error``, a decode error later is raised from ``item.chunks`` (one video's failure).
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Callable, ContextManager, Iterable, Iterator

from data.manifest import ManifestError, VideoRecord, safe_video_path
from extractors.base import Extractor, VideoItem
from extractors.decode import DecodeError, DecodeRequest, stream_video


def merged_request(extractors: Iterable[Extractor]) -> DecodeRequest:
    """One decode request covering what every extractor needs."""
    request = DecodeRequest()
    for e in extractors:
        request = request.merge(e.request)
    return request


_END = object()


class _Handoff:
    """A bounded queue of one video's decode messages, from a decode thread to the consumer."""

    def __init__(self, size: int, where: str):
        self.where = where
        self.queue: queue.Queue = queue.Queue(maxsize=size)
        self.cancelled = threading.Event()

    def put(self, message) -> bool:
        """Wait for room (False: the consumer gave the video up)."""
        while not self.cancelled.is_set():
            try:
                self.queue.put(message, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def get(self):
        while True:
            try:
                return self.queue.get(timeout=0.2)
            except queue.Empty:
                if self.cancelled.is_set():
                    raise DecodeError(f"{self.where}: decoding abandoned (the next video was asked for first)") from None

    def chunks(self):
        """The windows in order; re-raises the decoder's error; cancels the producer when left early."""
        try:
            while (message := self.get()) is not _END:
                if isinstance(message, DecodeError):
                    raise message
                yield message
        finally:
            self.cancelled.set()


def iter_decoded(jobs: Iterable[tuple[VideoRecord, DecodeRequest]], video_root, *, workers: int = 1,
                 prefetch: int = 4, window_queue: int = 2,
                 guard: Callable[[VideoRecord], ContextManager] | None = None) -> Iterator[VideoItem]:
    """Decode each job once in ``workers`` background threads, up to ``prefetch`` videos ahead.

    Yields :class:`VideoItem` in job order as soon as its file is open; ``item.chunks`` streams the
    decoded windows, each decoder waiting when ``window_queue`` windows are unread (so memory is
    about ``(prefetch + 1) * window_queue`` windows, whatever the videos' lengths). A file that cannot
    be opened (or a path that leaves the video root) gives ``item.error``; a :class:`DecodeError`
    later is raised from ``item.chunks``. Jobs with an empty request are not opened at all. Consume
    (or drop) items in order. ``guard(record)`` wraps each decode (the in-progress record of
    :func:`decoding`).
    """
    def work(record: VideoRecord, request: DecodeRequest, box: _Handoff) -> None:
        path = video_root / record.path
        try:
            path = safe_video_path(video_root, record.path)
            with guard(record) if guard else nullcontext():
                with stream_video(path, request) as stream:
                    if not box.put(stream.info):
                        return
                    for chunk in stream.chunks():
                        if not box.put(chunk):
                            return
            box.put(_END)
        except DecodeError as exc:
            box.put(exc)
        except ManifestError as exc:
            box.put(DecodeError(str(exc)))
        except Exception as exc:  # noqa: BLE001 - an unforeseen decoder failure is still one video's failure
            box.put(DecodeError(f"{path}: decoding failed ({exc.__class__.__name__}: {exc})"))

    def item(record: VideoRecord, request: DecodeRequest, box: _Handoff | None) -> VideoItem:
        if box is None:
            return VideoItem(record)
        first = box.get()
        if isinstance(first, DecodeError):
            return VideoItem(record, error=str(first))
        return VideoItem(record, first, chunks=box.chunks())

    ahead: deque = deque()
    current: list = []  # the box of the item last yielded: dropped when the next one is asked for

    def next_item() -> VideoItem:
        for box in current:
            box.cancelled.set()
        record, request, box = ahead.popleft()
        current[:] = [box] if box is not None else []
        return item(record, request, box)

    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        try:
            for record, request in jobs:
                box = None if request.empty else _Handoff(window_queue, str(video_root / record.path))
                if box is not None:
                    pool.submit(work, record, request, box)
                ahead.append((record, request, box))
                if len(ahead) > prefetch:
                    yield next_item()
            while ahead:
                yield next_item()
        finally:
            for box in current + [b for _, _, b in ahead if b is not None]:
                box.cancelled.set()
