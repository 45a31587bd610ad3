"""Searches by example in the service: ``POST /api/search`` with an image or a clip as the request
body, and the worker pool every search by example runs in (:class:`ExampleGate`).

``POST /api/search?k=K&index=NAME&name=FILE`` with the file as the body: ``Content-Type: image/*``
is searched as an image, ``video/*`` as a clip (:mod:`retrieval.query.examples`). Refused, each with
one message: another content type (415), an empty body (400), a body over ``max_upload_mb`` (413,
read no further), bytes that are not an image or a decodable clip (400). A clip is written to a
private temporary folder for the decoder and removed when its search ends, answered or not; an
image stays in memory. Nothing of an upload is cached.

Decoding a clip takes seconds, so searches by example run in their own ``example_workers``
threads, never in the text queries' batcher or the thumbnail workers: beyond ``example_workers +
example_queue`` searches waiting, 503 with ``Retry-After``; past ``example_timeout_s``, 504.
"""
from __future__ import annotations

import asyncio
import re
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Callable

from fastapi import APIRouter, Query, Request

from retrieval.query.search import MAX_K, QueryError
from retrieval.service.indexes import IndexDep
from retrieval.service.responses import SearchResponse, error, with_media_urls
from retrieval.service.settings import ServeSettings

KINDS = {"image": "image", "video": "clip"}     # Content-Type's main type -> what is searched
CLIP_SUFFIX = {"video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov", "video/x-matroska": ".mkv"}


class ExampleBusy(RuntimeError):
    """Too many searches by example waiting (503 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ExampleTimeout(TimeoutError):
    """A search by example past its deadline (504)."""


class ExampleGate:
    """The searches by example's own bounded thread pool (see the module docstring)."""

    def __init__(self, settings: ServeSettings):
        self.pool = ThreadPoolExecutor(settings.example_workers, thread_name_prefix="example")
        self.limit = settings.example_workers + settings.example_queue
        self.timeout_s = settings.example_timeout_s
        self.pending = 0
        self._lock = threading.Lock()

    def _done(self, _future) -> None:
        with self._lock:
            self.pending -= 1

    async def run(self, call: Callable[[], dict]) -> dict:
        """``call()`` in the pool; raises ExampleBusy, ExampleTimeout, or what ``call`` raises."""
        with self._lock:
            if self.pending >= self.limit:
                raise ExampleBusy(f"{self.pending} searches by example are running or waiting; retry shortly", 2)
            self.pending += 1
        future = self.pool.submit(call)
        future.add_done_callback(self._done)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=self.timeout_s)
        except asyncio.TimeoutError:
            raise ExampleTimeout(f"the search by example was not answered within {self.timeout_s:g} s; "
                                 f"try a shorter clip or a window of it") from None

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def upload_label(name: str | None, kind: str) -> str:
    """A printable short label for an upload (its file name without folders, else ``upload``)."""
    base = re.sub(r"[^\w.\- ]", "_", Path(name or "").name)[:100].strip()
    return base or f"uploaded {kind}"


class TooLarge(QueryError):
    """An upload over the size limit (413)."""

    def __init__(self, size: int, limit: int):
        super().__init__(f"the upload is over {size / 2 ** 20:.1f} MB; at most {limit / 2 ** 20:g} MB "
                         f"(the service's --max-upload-mb)")


async def read_body(request: Request, limit_bytes: int) -> bytes:
    """The request body; :class:`TooLarge` as soon as it passes ``limit_bytes`` (nothing more is read)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit_bytes:
        raise TooLarge(int(declared), limit_bytes)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit_bytes:
            raise TooLarge(len(data), limit_bytes)
    return bytes(data)


def upload_router(settings: ServeSettings) -> APIRouter:
    router = APIRouter()
    limit = int(settings.max_upload_mb * 2 ** 20)

    @router.post("/api/search", response_model=SearchResponse, response_model_exclude_unset=True)
    async def search_upload(request: Request, served: IndexDep,
                            k: Annotated[int, Query(ge=1, le=MAX_K, description="how many videos")] = 10,
                            name: Annotated[str | None, Query(max_length=255, description="the file's name")] = None):
        content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
        kind = KINDS.get(content_type.split("/")[0])
        if kind is None:
            return error(415, f"send an image (Content-Type image/...) or a clip (video/...) as the body, "
                              f"got {content_type or 'no Content-Type'}")
        try:
            data = await read_body(request, limit)
        except TooLarge as err:
            return error(413, str(err))
        if not data:
            return error(400, f"the {kind} upload is empty")
        label = upload_label(name, kind)
        gate: ExampleGate = request.app.state.examples
        if kind == "image":
            found = await gate.run(lambda: served.examples.image(data, k, name=label))
        else:
            with tempfile.TemporaryDirectory(prefix="tvr-example-") as folder:
                path = Path(folder) / f"clip{CLIP_SUFFIX.get(content_type, '')}"
                path.write_bytes(data)
                found = await gate.run(lambda: served.examples.clip(path, k, name=label))
        return with_media_urls(found, settings.absolute_paths, served.name)

    return router
