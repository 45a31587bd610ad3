"""The ``reindex`` flow: a thin Prefect wrapper over :func:`retrieval.reindex.reindex`.

Deployed as ``reindex/<dataset>`` with a daily cron schedule (``prefect.yaml``). It logs the summary
(added / changed / removed / reused counts, RANDOM WEIGHTS when the features come from random
weights) and, inside a flow run, publishes it as the markdown artifact ``reindex-<dataset>``.
A dataset without a manifest (or, for zero-shot, without extracted CLIP features) ends cleanly with
a "nothing to index" message; another reindex of the same index still running ends as ``busy``.
Real failures (a missing run, an extractor that cannot be re-created) fail the flow run and leave
the old index current.

Plain Python, no Prefect: ``python -m retrieval.reindex <dataset> [--run R]``.
"""
from __future__ import annotations

import logging

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.context import FlowRunContext

from retrieval.reindex import reindex


def _logger():
    """The flow run's logger, or a plain one when called without a run (``reindex_flow.fn``)."""
    return get_run_logger() if FlowRunContext.get() is not None else logging.getLogger("tvr.reindex")


@flow(name="reindex")
def reindex_flow(dataset: str, run: str = "zero-shot", index_type: str = "auto", shard_size: int | None = None,
                 device: str | None = None) -> dict:
    """Bring ``indexes/<dataset>/<run>`` up to date with the dataset's manifest; returns the summary dict."""
    logger = _logger()
    result = reindex(dataset, run, index_type=index_type, shard_size=shard_size, device=device,
                     progress=logger.info)
    for line in result.lines():
        (logger.warning if "RANDOM" in line or result.status == "busy" else logger.info)(line)
    if FlowRunContext.get() is not None:
        key = "".join(ch if ch.isalnum() else "-" for ch in f"reindex-{dataset}".lower()).strip("-")
        create_markdown_artifact(result.markdown(), key=key, description=f"re-indexing summary of {dataset}")
    return result.to_dict()
