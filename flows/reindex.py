"""The ``reindex`` flow: a thin Prefect wrapper over :func:`retrieval.reindex.run.reindex`.

Deployed as ``reindex/<dataset>`` with a daily cron schedule (``prefect.yaml``, staggered per
dataset; a dataset of one's own: ``python -m flows.local deploy --dataset NAME --schedule CRON``,
flows/datasets.py) and a deployment concurrency limit of 1 (a second run while one is running is
cancelled).
``run`` defaults to the dataset's *serving run* (:func:`retrieval.index.serving.serving_run`, set with
``python -m retrieval.index --dataset D --run R --serve``), so the nightly job keeps fresh the index
the search service answers from. It logs the summary (added / changed / removed / reused counts,
RANDOM WEIGHTS when the features come from random weights) and, inside a flow run, publishes it as
the markdown artifact ``reindex-<dataset>``.

A dataset without a manifest (or, for zero-shot, without extracted CLIP features) ends cleanly with
a "nothing to index" message. Another re-index of the same index still running makes this run FAIL
with a clear message (:class:`ReindexBusy`), as do real failures (a missing run, an extractor that
cannot be re-created); the old index stays current. Videos whose extraction failed before are not
retried until their file changes, and leave the run Completed; a systemic failure of the extraction
of new or changed videos (every video it attempted failed in some modality, none a known failure)
makes the run FAIL (:class:`ExtractionFailed`) after the build of the other videos is published and
the summary artifact says why, as ``python -m retrieval.reindex`` then exits 1.

The index options (memory budget, factory string, shards, tuning target) default to the current
build's (:func:`retrieval.reindex.plan.index_options`). On a Dask task runner (``TVR_DASK_ADDRESS``
or ``TVR_DASK_LOCAL_WORKERS``, read when a flow run starts, never at import; docs/dask.md) the
parts of a sharded build are built as mapped Prefect tasks (``index-part``, one per part) on the
cluster's workers, which read the build folder from the shared ``TVR_HOME``; otherwise they are
built in the flow's process, as in plain Python.

Plain Python, no Prefect: ``python -m retrieval.reindex <dataset> [--run R]``.
"""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext
from prefect_dask import DaskTaskRunner

from data.provenance import RANDOM_WEIGHTS
from flows.common import TIMEOUTS, artifact_key, check_names, flow_logger, in_flow_run
from flows.runners import SettingsTaskRunner, describe
from retrieval.index import shards as parts_of_builds
from retrieval.index.layout import ENCODE_BATCH
from retrieval.index.serving import serving_run
from retrieval.reindex.run import reindex


class ReindexBusy(RuntimeError):
    """Another re-index of the same dataset and run holds the index's lock."""


class ExtractionFailed(RuntimeError):
    """The extraction of new or changed videos failed systemically (``ReindexResult.failure``)."""


@task(name="index-part", retries=1)
def index_part(folder: str, part: int, options: dict) -> dict:
    """One part of a sharded build (:func:`retrieval.index.shards.build_part_file`): its params."""
    return parts_of_builds.build_part_file(folder, part, options)


def map_parts_as_tasks(jobs: list[tuple]) -> list[dict]:
    """A :data:`retrieval.index.shards.Mapper`: the part jobs as mapped ``index-part`` tasks on the
    flow's task runner."""
    folders, parts, options = (list(column) for column in zip(*jobs))
    return index_part.map(folders, parts, options).result()


@flow(name="reindex", task_runner=SettingsTaskRunner(), timeout_seconds=TIMEOUTS["reindex"])
def reindex_flow(dataset: str, run: str | None = None, index_type: str | None = None, memory_gb: float | None = None,
                 factory: str | None = None, shards: int | None = None, tune_target: float | None = None,
                 shard_size: int | None = None, device: str | None = None, batch: int = ENCODE_BATCH) -> dict:
    """Bring ``indexes/<dataset>/<run>`` up to date with the dataset's manifest; returns the summary dict.

    ``run`` None: the dataset's serving run. ``index_type`` / ``memory_gb`` / ``factory`` /
    ``shards`` / ``tune_target`` None: as the current build. ``batch``: videos encoded, vectors
    assembled and added to the index per batch (``retrieval.reindex.run.reindex``). Raises
    :class:`ReindexBusy` when another re-index of the same index is running (the flow run ends
    Failed, the summary artifact says why), :class:`ExtractionFailed` for a systemic extraction
    failure (likewise, after publishing the new build).
    """
    check_names(dataset=dataset, run=run)
    logger = flow_logger("reindex")
    if run is None:
        run = serving_run(dataset)
        logger.info(f"{dataset}: re-indexing the serving run {run!r}")
    runner = FlowRunContext.get().task_runner if in_flow_run() else None
    mapper = map_parts_as_tasks if isinstance(runner, DaskTaskRunner) else None
    if mapper:
        logger.info(f"index parts of a sharded build run in {describe(runner)}")
    result = reindex(dataset, run, index_type=index_type, memory_gb=memory_gb, factory=factory, shards=shards,
                     tune_target=tune_target, shard_size=shard_size, device=device, progress=logger.info,
                     mapper=mapper, batch=batch)
    for line in result.lines():
        (logger.warning if RANDOM_WEIGHTS in line or result.status == "busy" else logger.info)(line)
    if in_flow_run():
        create_markdown_artifact(result.markdown(), key=artifact_key("reindex", dataset),
                                 description=f"re-indexing summary of {dataset}")
    if result.status == "busy":
        raise ReindexBusy(f"reindex {dataset} / {result.run}: another re-index of this index is running; "
                          f"this run changed nothing")
    if result.failure:
        raise ExtractionFailed(result.failure)
    return result.to_dict()
