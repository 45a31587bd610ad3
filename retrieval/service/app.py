"""The FastAPI app of the search service: :func:`create_app` (``settings`` in, app out).

The lifespan opens the model, text tower and current build once (a :class:`SearchService`, or
the one passed in: tests inject a service over a fake model) and puts it on ``app.state``; the
routes only parse the request and call the service. Routes::

    GET /                          the search page (static/index.html, its RANDOM WEIGHTS banner
                                   text from data.provenance)
    GET /api/search?q=TEXT&k=K     the retrieval.search --json dict, plus per result a thumbnail
                                   URL and a video URL
    GET /api/info, GET /healthz    what answers (build id, run, model, random weights, problems)
    GET /thumbnails/<id>.jpg?t=S   a frame at S seconds (default: the middle), cached on disk
    GET /videos/<id>               the video file, with HTTP range requests (Starlette's FileResponse)

Bad input gets a 4xx JSON ``{"error": "..."}`` naming the problem: an empty or too long query,
``k`` not a whole number from 1 to 1000, a query string that is not UTF-8, an id that is not one
safe path component (400); an id not in the index (404).
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from data.names import InvalidName, check_name
from data.provenance import random_weights_label
from data.settings import QueryPrecision
from retrieval.index.layout import index_root
from retrieval.query.search import MAX_K, MAX_QUERY_CHARS, RERANK_DEPTH, QueryError, Searcher
from retrieval.service.core import SearchService
from retrieval.service.media import THUMBS_DIR, MediaError, thumbnail

STATIC = Path(__file__).parent / "static"
PAGE_LABEL = "__RANDOM_WEIGHTS__"       # the page's random-weights banner text, filled in once per app


class ServeSettings(BaseModel):
    """What ``python -m retrieval.serve`` is told; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid")
    dataset: str
    run: str | None = None                 # None: the dataset's serving run
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    poll_s: float = Field(1.0, ge=0)       # how often `current` is checked (0: never)
    max_batch: int = Field(64, ge=1)
    wait_ms: float = Field(2.0, ge=0)      # how long a batch waits for more queries after its first
    rerank_depth: int = Field(RERANK_DEPTH, ge=1)
    device: str | None = None              # None: $TVR_DEVICE
    threads: int | None = Field(None, ge=1)  # torch CPU threads of the query encoder (None: torch's choice)
    lone_threads: int | None = Field(1, ge=0)  # torch threads for a batch of one query (0 / None: as threads)
    query_precision: QueryPrecision | None = None   # None: $TVR_QUERY_PRECISION (data.settings)

    @field_validator("lone_threads")
    @classmethod
    def _zero_is_none(cls, value: int | None) -> int | None:
        return value or None

    @field_validator("dataset", "run")
    @classmethod
    def _one_path_part(cls, value: str | None, info) -> str | None:
        return None if value is None else check_name(value, info.field_name)


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
    abs_path: str | None
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


def get_service(request: Request) -> SearchService:
    return request.app.state.service


ServiceDep = Annotated[SearchService, Depends(get_service)]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def strict_query(request: Request) -> None:
    """Refuse a query string whose percent-decoded bytes are not UTF-8 (Starlette would replace them)."""
    try:
        parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                  encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise QueryError("the query string is not valid UTF-8 (send percent-encoded UTF-8 text)") from None


def with_media_urls(found: dict) -> dict:
    """Add the page's ``thumbnail`` (at the best-matching moment when known) and ``video`` URLs."""
    for hit in found["results"]:
        vid = quote(hit["video_id"], safe="")
        at = f"?t={hit['spans'][0]['peak_s']}" if hit.get("spans") else ""
        hit["thumbnail"], hit["video"] = f"/thumbnails/{vid}.jpg{at}", f"/videos/{vid}"
    return found


class NotFound(LookupError):
    """An id that is not in the index, or whose file is gone (404)."""


def _video_file(service: SearchService, video_id: str) -> Path:
    """The file of an indexed video; raises InvalidName (400) or NotFound (404)."""
    check_name(video_id, "video id")
    state = service.searcher.state
    rel = state.build.paths.get(video_id)
    if rel is None or video_id not in state.present:
        raise NotFound(f"no video {video_id!r} in index build {state.build_id}")
    path = state.build.manifest.abs_path(rel)
    if not path.is_file():
        raise NotFound(f"video {video_id!r}: its file {rel} is missing")
    return path


def create_app(settings: ServeSettings, service: SearchService | None = None) -> FastAPI:
    """The app; ``service``: an already loaded one (else the lifespan loads it from ``settings``)."""
    page_html = (STATIC / "index.html").read_text(encoding="utf-8").replace(PAGE_LABEL, random_weights_label())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.service = service or SearchService(
            Searcher(settings.dataset, settings.run, rerank_depth=settings.rerank_depth, device=settings.device),
            poll_s=settings.poll_s, max_batch=settings.max_batch, wait_s=settings.wait_ms / 1000)
        try:
            yield
        finally:
            app.state.service.close()

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

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/healthz", response_model=Health)
    def healthz(service: ServiceDep) -> dict:
        return service.health()

    @app.get("/api/info")
    def info(service: ServiceDep) -> dict:
        return service.info()

    @app.get("/api/search", response_model=SearchResponse, response_model_exclude_unset=True,
             dependencies=[Depends(strict_query)])
    async def api_search(service: ServiceDep,
                         q: Annotated[str, Query(description=f"the text, at most {MAX_QUERY_CHARS} characters")] = "",
                         k: Annotated[int, Query(ge=1, le=MAX_K, description="how many videos")] = 10,
                         nprobe: Annotated[int | None, Query(ge=1, le=65536, description="IVF lists searched")] = None,
                         efSearch: Annotated[int | None, Query(ge=1, le=65536, description="HNSW efSearch")] = None,
                         rerank: Annotated[int | None, Query(ge=0, le=10_000, description="exact re-rank depth")] = None) -> dict:
        params = {"nprobe": nprobe, "efSearch": efSearch, "rerank": rerank}
        found = await asyncio.wrap_future(service.submit(q, k, params))
        return with_media_urls(found)

    @app.get("/thumbnails/{name}")
    def thumbnails(service: ServiceDep, name: str,
                   t: Annotated[float | None, Query(ge=0, le=1e7, description="seconds")] = None):
        if not name.endswith(".jpg"):
            return _error(404, f"thumbnails are /thumbnails/<video_id>.jpg, got {name!r}")
        video_id = name[:-len(".jpg")]
        try:
            video = _video_file(service, video_id)
            s = service.searcher
            cache = index_root(s.dataset, s.run, s.settings) / THUMBS_DIR
            return FileResponse(thumbnail(cache, video_id, video, t), media_type="image/jpeg")
        except (NotFound, MediaError) as err:
            return _error(404, str(err))

    @app.get("/videos/{video_id}")
    def videos(service: ServiceDep, video_id: str):
        try:
            return FileResponse(_video_file(service, video_id), media_type="video/mp4")
        except NotFound as err:
            return _error(404, str(err))

    return app
