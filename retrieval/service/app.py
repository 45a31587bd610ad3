"""The FastAPI app of the search service: :func:`create_app` (``settings`` in, app out).

The lifespan opens the model, text tower and current build once (a :class:`SearchService`, or
the one passed in: tests inject a service over a fake model) and the thumbnail cache
(:class:`~retrieval.service.thumbs.Thumbnails`), and puts them on ``app.state``; the routes only
parse the request and call them. Every request first passes :class:`~retrieval.service.guard.Guard`
(path bytes, ``Host``, bearer token, one JSON error shape). Routes::

    GET /                          the search page (static/index.html, its RANDOM WEIGHTS banner
                                   text from data.provenance; asks for the token when one is set)
    GET /api/search?q=TEXT&k=K     the retrieval.search --json dict (paths relative to the video
                                   root unless ``absolute_paths``), plus per result a thumbnail URL
                                   and a video URL
    GET /api/info, GET /healthz    what answers (build id, run, model, random weights, problems);
                                   answered on the event loop, never behind queries or thumbnails
    GET /thumbnails/<id>.jpg?t=S   a frame at S seconds (default: the middle), cached on disk
    GET /videos/<id>               the video file, with HTTP range requests (Starlette's FileResponse)

Errors are ``{"error": "..."}`` JSON naming the problem, without server paths: 400 (bad query text,
an id that breaks the id rule, a path that is not UTF-8, a refused ``Host``), 401 (token), 404 (an
id not in the index, a file gone or outside the video folder, an unknown route), 422 (a parameter
out of range, named), 503 with ``Retry-After`` (queue full, thumbnail workers busy, a damaged
build while the service falls back), 504 (a query past its deadline), 500 (a bug: logged).
"""
from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from data.names import InvalidName, name_problem
from data.provenance import random_weights_label
from retrieval.index.layout import BuildDamaged, index_root
from retrieval.query.search import MAX_K, MAX_QUERY_CHARS, QueryError, Searcher
from retrieval.service.batcher import DeadlineExceeded, Overloaded
from retrieval.service.core import SearchService
from retrieval.service.guard import Guard
from retrieval.service.media import MediaError, MediaTimeout
from retrieval.service.settings import ServeSettings
from retrieval.service.thumbs import THUMBS_DIR, Busy, Thumbnails

STATIC = Path(__file__).parent / "static"
PAGE_LABEL = "__RANDOM_WEIGHTS__"       # the page's random-weights banner text, filled in once per app
log = logging.getLogger(__name__)


class Span(BaseModel):
    start_s: float
    end_s: float
    peak_s: float
    score: float


class Hit(BaseModel):
    rank: int
    video_id: str
    score: float
    path: str | None
    abs_path: str | None = None            # only with ServeSettings.absolute_paths
    caption: str
    spans: list[Span] | None
    thumbnail: str
    video: str


class SearchResponse(BaseModel):
    query: str
    dataset: str
    run: str
    model: str
    index: dict[str, Any]
    query_precision: str
    results: list[Hit]
    random_weights: bool
    first_stage: dict[str, Any] | None = None
    note: str | None = None
    WARNING: str | None = None


class Health(BaseModel):
    status: str
    build_id: str
    dataset: str
    run: str
    model: str
    query_precision: str
    random_weights: bool
    problem: str | None
    last_error: str | None = None          # the last failed open of a new build
    next_retry_in_s: float | None = None   # when it is tried again


def get_service(request: Request) -> SearchService:
    return request.app.state.service


ServiceDep = Annotated[SearchService, Depends(get_service)]


def _error(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def strict_query(request: Request) -> None:
    """Refuse a query string whose percent-decoded bytes are not UTF-8 (Starlette would replace them)."""
    try:
        parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                  encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise QueryError("the query string is not valid UTF-8 (send percent-encoded UTF-8 text)") from None


def with_media_urls(found: dict, absolute_paths: bool = True) -> dict:
    """Add the page's ``thumbnail`` (at the best-matching moment when known) and ``video`` URLs;
    drop ``abs_path`` unless ``absolute_paths``."""
    for hit in found["results"]:
        vid = quote(hit["video_id"], safe="/")
        at = f"?t={hit['spans'][0]['peak_s']}" if hit.get("spans") else ""
        hit["thumbnail"], hit["video"] = f"/thumbnails/{vid}.jpg{at}", f"/videos/{vid}"
        if not absolute_paths:
            hit.pop("abs_path", None)
    return found


class NotFound(LookupError):
    """An id that is not in the index, or whose file is gone or not servable (404)."""


def video_file(service: SearchService, video_id: str) -> tuple[Path, str]:
    """(file, path relative to the video root) of an indexed video, its containment re-checked now:
    the resolved file must lie inside the resolved video root (a video replaced by a symlink out of
    the folder is not served). Raises InvalidName (400) or NotFound (404)."""
    problem = name_problem(video_id, nested=True)           # the manifest's id rule (data.manifest)
    if problem is not None:
        raise InvalidName(f"video id {video_id!r} {problem}")
    state = service.searcher.state
    rel = state.build.paths.get(video_id)
    if rel is None or video_id not in state.present:
        raise NotFound(f"no video {video_id!r} in index build {state.build_id}")
    root = os.path.realpath(state.build.manifest.video_root)
    real = os.path.realpath(state.build.manifest.video_root / rel)
    if os.path.commonpath([root, real]) != root:
        log.warning("video %r: %s resolves to %s, outside the video root %s; not served", video_id, rel, real, root)
        raise NotFound(f"video {video_id!r}: its file {rel} is not available")
    if not os.path.isfile(real):
        raise NotFound(f"video {video_id!r}: its file {rel} is missing")
    return Path(real), rel


def create_app(settings: ServeSettings, service: SearchService | None = None) -> FastAPI:
    """The app; ``service``: an already loaded one (else the lifespan loads it from ``settings``)."""
    page_html = (STATIC / "index.html").read_text(encoding="utf-8").replace(PAGE_LABEL, random_weights_label())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        svc = app.state.service = service or SearchService(
            Searcher(settings.dataset, settings.run, rerank_depth=settings.rerank_depth, device=settings.device,
                     query_precision=settings.query_precision),
            poll_s=settings.poll_s, max_batch=settings.max_batch, wait_s=settings.wait_ms / 1000,
            lone_threads=settings.lone_threads, max_queue=settings.max_queue, timeout_s=settings.request_timeout_s)
        s = svc.searcher
        app.state.thumbs = Thumbnails(index_root(s.dataset, s.run, s.settings) / THUMBS_DIR,
                                      max_bytes=int(settings.thumb_cache_mb * 2 ** 20),
                                      workers=settings.thumb_workers, queue=settings.thumb_queue,
                                      decode_s=settings.thumb_decode_s)
        try:
            yield
        finally:
            app.state.thumbs.close()
            if service is None:              # a service passed in belongs to its caller
                svc.close()

    app = FastAPI(title="Text-video search", lifespan=lifespan)

    @app.exception_handler(QueryError)
    async def _bad_query(request: Request, err: QueryError):
        return _error(400, str(err))

    @app.exception_handler(InvalidName)
    async def _bad_name(request: Request, err: InvalidName):
        return _error(400, str(err))

    @app.exception_handler(RequestValidationError)
    async def _bad_params(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in err.errors())
        return _error(422, problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail) + (f": {request.url.path}" if err.status_code == 404 else ""))

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        return _error(500, f"internal error ({type(err).__name__}); the service log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/healthz", response_model=Health)
    async def healthz(service: ServiceDep) -> dict:
        return service.health()

    @app.get("/api/info")
    async def info(request: Request, service: ServiceDep) -> dict:
        return {**service.info(), "thumbnails": request.app.state.thumbs.stats()}

    @app.get("/api/search", response_model=SearchResponse, response_model_exclude_unset=True,
             dependencies=[Depends(strict_query)])
    async def api_search(service: ServiceDep,
                         q: Annotated[str, Query(description=f"the text, at most {MAX_QUERY_CHARS} characters")] = "",
                         k: Annotated[int, Query(ge=1, le=MAX_K, description="how many videos")] = 10,
                         nprobe: Annotated[int | None, Query(ge=1, le=65536, description="IVF lists searched")] = None,
                         efSearch: Annotated[int | None, Query(ge=1, le=65536, description="HNSW efSearch")] = None,
                         rerank: Annotated[int | None, Query(ge=0, le=10_000, description="exact re-rank depth")] = None):
        params = {"nprobe": nprobe, "efSearch": efSearch, "rerank": rerank}
        try:
            future = service.submit(q, k, params)
        except Overloaded as err:
            return _error(503, str(err), err.retry_after_s)
        try:
            found = await asyncio.wait_for(asyncio.wrap_future(future), timeout=service.batcher.timeout_s)
        except (asyncio.TimeoutError, DeadlineExceeded):
            return _error(504, f"the query was not answered within its deadline of "
                               f"{service.batcher.timeout_s:g} s; try again, or a smaller k / rerank")
        except BuildDamaged as err:
            return _error(503, f"{err}; the service is falling back to the newest verified build", 1)
        return with_media_urls(found, settings.absolute_paths)

    @app.get("/thumbnails/{name:path}")
    async def thumbnails(request: Request, service: ServiceDep, name: str,
                         t: Annotated[float | None, Query(ge=0, le=1e7, allow_inf_nan=False,
                                                          description="seconds")] = None):
        if not name.endswith(".jpg"):
            return _error(404, f"thumbnails are /thumbnails/<video_id>.jpg, got {name!r}")
        video_id = name[:-len(".jpg")]
        try:
            video, rel = video_file(service, video_id)
            got = await request.app.state.thumbs.get(video_id, video, t)
        except NotFound as err:
            return _error(404, str(err))
        except Busy as err:
            return _error(503, f"thumbnail workers are busy; retry in {err.retry_after_s} s", err.retry_after_s)
        except MediaTimeout as err:
            return _error(503, str(err).replace(str(video), rel))
        except MediaError as err:
            return _error(404, str(err).replace(str(video), rel))
        if isinstance(got, bytes):
            return Response(got, media_type="image/jpeg")
        return FileResponse(got, media_type="image/jpeg")

    @app.get("/videos/{video_id:path}")
    async def videos(service: ServiceDep, video_id: str):
        try:
            return FileResponse(video_file(service, video_id)[0], media_type="video/mp4")
        except NotFound as err:
            return _error(404, str(err))

    app.add_middleware(Guard, settings=settings)
    return app
