"""What the service answers: the JSON shapes of its routes (pydantic models), its one error shape
(``{"error": "..."}``), and the media URLs added to each result."""
from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi.responses import JSONResponse
from pydantic import BaseModel


class Moment(BaseModel):
    start_s: float
    end_s: float
    score: float
    thumbnail: str                         # a frame in its middle


class Hit(BaseModel):
    rank: int
    video_id: str
    score: float
    path: str | None
    abs_path: str | None = None            # only with ServeSettings.absolute_paths
    caption: str
    duration_s: float | None = None        # seconds: the bound of its moments
    moments: list[Moment] | None = None    # mode "videos": up to ``moments`` of this video, best first
    start_s: float | None = None           # mode "moments": this result is one moment of the video
    end_s: float | None = None
    segment_rank: int | None = None        # mode "moments": where its video's best window came first
    thumbnail: str
    video: str


class SearchResponse(BaseModel):
    query: str
    query_kind: str                         # text, image, clip or like
    space: str                              # what the query was compared with
    mode: str                               # videos, or moments (ranked across videos)
    moments_from: str | None                # model (the run's moment head), heuristic, or None
    index_name: str | None = None           # <dataset>/<run>: the served index that answered
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
    indexes: dict[str, str] | None = None  # every served index's status (ok / degraded)


def error(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": message}, status_code=status, headers=headers)



def with_media_urls(found: dict, absolute_paths: bool = True, index: str | None = None) -> dict:
    """Add the page's URLs (naming ``index`` when given): per result ``video`` and ``thumbnail`` (at
    its best moment's middle when it has moments, else the video's middle), and per moment a
    ``thumbnail`` at its middle; drop ``abs_path`` unless ``absolute_paths``."""
    def thumb(vid: str, moment: dict | None) -> str:
        params = {"index": index} if index else {}
        if moment is not None:
            params["t"] = round((moment["start_s"] + moment["end_s"]) / 2, 1)
        return f"/thumbnails/{vid}.jpg" + (f"?{urlencode(params)}" if params else "")

    for hit in found["results"]:
        vid = quote(hit["video_id"], safe="/")
        for moment in hit.get("moments") or ():
            moment["thumbnail"] = thumb(vid, moment)
        best = (hit.get("moments") or [None])[0] if "start_s" not in hit else hit
        hit["thumbnail"] = thumb(vid, best)
        hit["video"] = f"/videos/{vid}" + (f"?{urlencode({'index': index})}" if index else "")
        if not absolute_paths:
            hit.pop("abs_path", None)
    found["index_name"] = index
    return found
