"""The indexes one service answers from: :class:`ServedIndex` (a dataset / run build with its own
search service, thumbnail cache and searches by example) and :class:`ServedIndexes`, the ordered
set the routes pick from by name (``?index=<dataset>/<run>``; the first one when not given).

Every index follows its own ``current`` pointer (its :class:`~retrieval.service.core.SearchService`
has its own watcher), so re-indexing one dataset swaps that index alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Query, Request

from retrieval.index.layout import index_root
from retrieval.index.serving import recorded_serving_run
from retrieval.query.examples import ExampleSearch
from retrieval.query.search import Searcher
from retrieval.service.core import SearchService
from retrieval.service.settings import ServeSettings
from retrieval.service.thumbs import THUMBS_DIR, Thumbnails


class UnknownIndex(LookupError):
    """An ``index=`` name the service does not serve (404)."""


@dataclass
class ServedIndex:
    """One served build: ``name`` is ``<dataset>/<run>`` (the run resolved: a serving run or zero-shot)."""

    service: SearchService
    thumbs: Thumbnails | None = None
    examples: ExampleSearch = field(init=False)

    def __post_init__(self):
        self.examples = ExampleSearch(self.service.searcher)

    @property
    def name(self) -> str:
        s = self.service.searcher
        return f"{s.dataset}/{s.run}"

    def describe(self) -> dict:
        """What ``/api/indexes`` says about it: model, size, build and whether the weights are random."""
        s = self.service.searcher
        health = self.service.health()
        return {"name": self.name, "dataset": s.dataset, "run": s.run, "model": s.loaded.name,
                "build_id": health["build_id"], "n_vectors": s.state.info.get("n_vectors"),
                "index_type": s.state.info.get("index_type"), "random_weights": bool(s.loaded.random_weights),
                "status": health["status"]}


class ServedIndexes:
    """The served indexes in order (the first is the default); names are unique."""

    def __init__(self, served: list[ServedIndex]):
        self.by_name: dict[str, ServedIndex] = {}
        for one in served:
            if one.name in self.by_name:
                raise ValueError(f"index {one.name} is given twice")
            self.by_name[one.name] = one

    @property
    def default(self) -> ServedIndex:
        return next(iter(self.by_name.values()))

    def get(self, name: str | None) -> ServedIndex:
        if name is None or name == "":
            return self.default
        found = self.by_name.get(name)
        if found is None:
            raise UnknownIndex(f"no index {name!r} is served here; served: {', '.join(self.by_name)}")
        return found

    def __iter__(self):
        return iter(self.by_name.values())

    def __len__(self) -> int:
        return len(self.by_name)


def get_index(request: Request, index: Annotated[str | None, Query(
        description="which served index, <dataset>/<run> (default: the first)")] = None) -> ServedIndex:
    return request.app.state.indexes.get(index)


IndexDep = Annotated[ServedIndex, Depends(get_index)]


def load_services(settings: ServeSettings) -> list[SearchService]:
    """One loaded :class:`SearchService` per index of ``settings.targets()``."""
    return [SearchService(Searcher(dataset, run, rerank_depth=settings.rerank_depth, device=settings.device,
                                   query_precision=settings.query_precision),
                          poll_s=settings.poll_s, max_batch=settings.max_batch, wait_s=settings.wait_ms / 1000,
                          lone_threads=settings.lone_threads, max_queue=settings.max_queue,
                          timeout_s=settings.request_timeout_s)
            for dataset, run in settings.targets()]


def attach_thumbnails(served: ServedIndex, settings: ServeSettings) -> None:
    """The index's own thumbnail cache under its index folder."""
    s = served.service.searcher
    served.thumbs = Thumbnails(index_root(s.dataset, s.run, s.settings) / THUMBS_DIR,
                               max_bytes=int(settings.thumb_cache_mb * 2 ** 20), workers=settings.thumb_workers,
                               queue=settings.thumb_queue, decode_s=settings.thumb_decode_s)


def served_line(service: SearchService, asked_run: str | None) -> str:
    """The operator's line about one index: dataset, run, model and build, and why that run (the
    dataset's recorded serving run, or the zero-shot model because none is recorded)."""
    s = service.searcher
    health = service.health()
    line = f"serving {s.dataset}/{s.run} ({health['model']} model, build {health['build_id']})"
    if asked_run is None:
        if recorded_serving_run(s.dataset, s.settings) is None:
            line += (f": no serving run is recorded for {s.dataset}, so its zero-shot model answers; serve a "
                     f"trained run with --run R, or record one with python -m retrieval.index --dataset "
                     f"{s.dataset} --run R --serve")
        else:
            line += f": the serving run recorded for {s.dataset}"
    return line
