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
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from data.names import InvalidName
from data.provenance import random_weights_label
from retrieval.index.layout import BuildDamaged
from retrieval.query.search import MAX_K, MAX_QUERY_CHARS, NotIndexed, QueryError
from retrieval.service.batcher import DeadlineExceeded, Overloaded
from retrieval.service.core import SearchService
from retrieval.service.guard import Guard
from retrieval.service.indexes import (IndexDep, ServedIndex, ServedIndexes, UnknownIndex, attach_thumbnails,
                                       load_services)
from retrieval.service.media import MediaError, MediaTimeout
from retrieval.service.responses import Health, SearchResponse, error, with_media_urls
from retrieval.service.settings import ServeSettings
from retrieval.service.thumbs import Busy
from retrieval.service.uploads import ExampleBusy, ExampleGate, ExampleTimeout, upload_router

STATIC = Path(__file__).parent / "static"
PAGE_LABEL = "__RANDOM_WEIGHTS__"       # the page's random-weights banner text, filled in once per app
log = logging.getLogger(__name__)


def strict_query(request: Request) -> None:
    """Refuse a query string whose percent-decoded bytes are not UTF-8 (Starlette would replace them)."""
    try:
        parse_qsl(request.scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                  encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise QueryError("the query string is not valid UTF-8 (send percent-encoded UTF-8 text)") from None


def create_app(settings: ServeSettings, service: SearchService | list[SearchService] | None = None) -> FastAPI:
    """The app; ``service``: already loaded search service(s), one per index (else the lifespan
    loads every index of ``settings.targets()``); services passed in belong to the caller."""
    page_html = (STATIC / "index.html").read_text(encoding="utf-8").replace(PAGE_LABEL, random_weights_label())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        given = [service] if isinstance(service, SearchService) else service
        served = ServedIndexes([ServedIndex(svc) for svc in (given or load_services(settings))])
        for one in served:
            attach_thumbnails(one, settings)
        app.state.indexes = served
        app.state.examples = ExampleGate(settings)
        try:
            yield
        finally:
            app.state.examples.close()
            for one in served:
                one.thumbs.close()
                if given is None:
                    one.service.close()

    app = FastAPI(title="Text-video search", lifespan=lifespan)

    def answered_with(status: int):
        async def handler(request: Request, err: Exception):
            return error(status, str(err))
        return handler

    # refusals whose message is the whole answer: a bad query or id (400), an unknown index or video (404)
    for kind, status in ((QueryError, 400), (InvalidName, 400), (UnknownIndex, 404), (NotIndexed, 404)):
        app.add_exception_handler(kind, answered_with(status))

    @app.exception_handler(ExampleBusy)
    async def _busy(request: Request, err: ExampleBusy):
        return error(503, str(err), err.retry_after_s)

    @app.exception_handler(ExampleTimeout)
    async def _slow(request: Request, err: ExampleTimeout):
        return error(504, str(err))

    @app.exception_handler(RequestValidationError)
    async def _bad_params(request: Request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in err.errors())
        return error(422, problems)

    @app.exception_handler(StarletteHTTPException)
    async def _httperror(request: Request, err: StarletteHTTPException):
        return error(err.status_code, str(err.detail) + (f": {request.url.path}" if err.status_code == 404 else ""))

    @app.exception_handler(Exception)
    async def _bug(request: Request, err: Exception):
        log.exception("unexpected error answering %s", request.url.path)
        return error(500, f"internal error ({type(err).__name__}); the service log has the details")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/healthz", response_model=Health)
    async def healthz(request: Request) -> dict:
        """The default index's health; ``status`` is ``degraded`` when any served index is."""
        served = list(request.app.state.indexes)
        states = {one.name: one.service.health() for one in served}
        first = states[served[0].name]
        worst = "degraded" if any(h["status"] != "ok" for h in states.values()) else "ok"
        return {**first, "status": worst, "indexes": {name: h["status"] for name, h in states.items()}}

    @app.get("/api/info")
    async def info(served: IndexDep) -> dict:
        return {**served.service.info(), "index_name": served.name, "thumbnails": served.thumbs.stats()}

    @app.get("/api/indexes")
    @app.get("/indexes", include_in_schema=False)
    async def indexes(request: Request) -> dict:
        """Every served index, the default first."""
        return {"default": request.app.state.indexes.default.name,
                "indexes": [one.describe() for one in request.app.state.indexes]}

    @app.get("/api/search", response_model=SearchResponse, response_model_exclude_unset=True,
             dependencies=[Depends(strict_query)])
    async def api_search(request: Request, served: IndexDep,
                         q: Annotated[str, Query(description=f"the text, at most {MAX_QUERY_CHARS} characters")] = "",
                         k: Annotated[int, Query(ge=1, le=MAX_K, description="how many videos")] = 10,
                         like: Annotated[str | None, Query(description="more like this indexed video")] = None,
                         video_id: Annotated[str | None, Query(description="search with this indexed video "
                                                                           "(a window of it with start_s / end_s)")] = None,
                         start_s: Annotated[float | None, Query(ge=0, le=1e7, allow_inf_nan=False)] = None,
                         end_s: Annotated[float | None, Query(ge=0, le=1e7, allow_inf_nan=False)] = None,
                         nprobe: Annotated[int | None, Query(ge=1, le=65536, description="IVF lists searched")] = None,
                         efSearch: Annotated[int | None, Query(ge=1, le=65536, description="HNSW efSearch")] = None,
                         rerank: Annotated[int | None, Query(ge=0, le=10_000, description="exact re-rank depth")] = None,
                         moments: Annotated[int | None, Query(ge=0, le=20, description="moments per video (0: none)")] = None,
                         mode: Annotated[Literal["videos", "moments"], Query(
                             description="videos, or moments ranked across videos (text queries)")] = "videos"):
        asked = [name for name, value in (("q", q), ("like", like), ("video_id", video_id)) if value]
        if len(asked) > 1:
            raise QueryError(f"give one of q, like and video_id, not {' and '.join(asked)}")
        if mode == "moments" and not q:
            raise QueryError("the moments mode takes a text query (q)")
        if (start_s is not None or end_s is not None) and not video_id:
            raise QueryError("start_s / end_s are a window of video_id: give video_id too")
        if like:
            found = await request.app.state.examples.run(lambda: served.examples.like(like, k))
        elif video_id:
            found = await request.app.state.examples.run(
                lambda: served.examples.video_window(video_id, k, start_s, end_s))
        else:
            found = await text_search(served.service, q, k, {"nprobe": nprobe, "efSearch": efSearch, "rerank": rerank,
                                                              "moments": moments, "mode": mode})
        if isinstance(found, Response):
            return found
        return with_media_urls(found, settings.absolute_paths, served.name)

    @app.get("/thumbnails/{name:path}")
    async def thumbnails(served: IndexDep, name: str,
                         t: Annotated[float | None, Query(ge=0, le=1e7, allow_inf_nan=False,
                                                          description="seconds")] = None):
        if not name.endswith(".jpg"):
            return error(404, f"thumbnails are /thumbnails/<video_id>.jpg, got {name!r}")
        video_id = name[:-len(".jpg")]
        video, rel = served.service.searcher.video_path(video_id)
        try:
            got = await served.thumbs.get(video_id, video, t)
        except Busy as err:
            return error(503, f"thumbnail workers are busy; retry in {err.retry_after_s} s", err.retry_after_s)
        except MediaTimeout as err:
            return error(503, str(err).replace(str(video), rel))
        except MediaError as err:
            return error(404, str(err).replace(str(video), rel))
        if isinstance(got, bytes):
            return Response(got, media_type="image/jpeg")
        return FileResponse(got, media_type="image/jpeg")

    @app.get("/videos/{video_id:path}")
    async def videos(served: IndexDep, video_id: str):
        return FileResponse(served.service.searcher.video_path(video_id)[0], media_type="video/mp4")

    app.include_router(upload_router(settings))
    app.add_middleware(Guard, settings=settings)
    return app


async def text_search(service: SearchService, q: str, k: int, params: dict) -> dict | Response:
    """A free-text query through the index's micro-batcher, with its deadline."""
    try:
        future = service.submit(q, k, params)
    except Overloaded as err:
        return error(503, str(err), err.retry_after_s)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout=service.batcher.timeout_s)
    except (asyncio.TimeoutError, DeadlineExceeded):
        return error(504, f"the query was not answered within its deadline of "
                           f"{service.batcher.timeout_s:g} s; try again, or a smaller k / rerank")
    except BuildDamaged as err:
        return error(503, f"{err}; the service is falling back to the newest verified build", 1)
