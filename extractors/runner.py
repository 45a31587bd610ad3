"""Extraction of a whole dataset as plain Python: plan the shards, extract each shard, finish.

``extract_shard`` does one shard: it plans what each modality still needs
(:func:`extractors.plan.plan_shard`), decodes each such video ONCE in background threads, running
ahead of the models, with the union of what the modalities still need (:mod:`extractors.reader`),
streams the decoded windows to every modality's extractor (bounded memory per video,
:func:`extractors.base.push_video`) and writes one store shard per modality
(:mod:`extractors.writer`). ``extract_dataset`` runs all shards in order and ends with
:func:`~extractors.writer.finish_run` (debris removed and superseded rows compacted away, when no
other writer is busy). Both are plain functions on picklable arguments, so a Prefect task
(flows/extract.py) or a Dask worker can call ``extract_shard`` directly; models load once per
process. Any number of runs may work on one dataset at once (see data/store.py for the locking).
"""
from __future__ import annotations

import logging
import time
from functools import partial
from typing import Callable

from data.progress import ProgressEvent, ProgressFn
from data.settings import Settings, get_settings
from data.store import FeatureRow
from extractors.base import VideoItem, push_video
from extractors.config import ExtractConfig
from extractors.inprogress import decoding
from extractors.plan import ShardPlan, plan_shard, plan_shards
from extractors.reader import iter_decoded
from extractors.summary import ModalityCounts, merge_counts
from extractors.writer import finish_run, write_shard_rows

log = logging.getLogger("tvr.extract")
Log = Callable[[str], None]


def extract_shard(dataset: str, video_ids: list[str], config: ExtractConfig | dict, *,
                  settings: Settings | None = None, progress: Log | None = None,
                  on_progress: ProgressFn | None = None) -> dict[str, ModalityCounts]:
    """Extract every requested modality for ``video_ids`` (one decode per video); write the shards.

    Videos already ``ok`` / ``empty`` for the same extractor-id and content fingerprint are skipped,
    and so are recorded failures of the same content unless ``config.retry_failed``; a video that
    fails is recorded as ``failed`` with its error and the others go on; a video whose
    decoding process died earlier is recorded as failed without decoding it. ``on_progress`` gets an
    event per video (info: rows produced so far per modality). Returns counts per modality.
    """
    config = ExtractConfig(**config) if isinstance(config, dict) else config
    settings = settings or get_settings()
    say = progress or log.info
    plan = plan_shard(dataset, video_ids, config, settings)
    rows = _crashed_rows(dataset, plan, say)
    start, last_report = time.time(), time.time()
    jobs = plan.jobs(config.decode_options())
    for n, item in enumerate(iter_decoded(jobs, plan.manifest.video_root, workers=config.decode_workers,
                                          prefetch=config.prefetch, guard=partial(decoding, plan.in_progress)), 1):
        item.captions = plan.captions_for(item.video_id)
        for modality, new in push_video(plan.extractors_for(item.video_id), item).items():
            rows[modality] += new
        if on_progress:
            on_progress(ProgressEvent(f"{dataset} shard", n, len(jobs), "video",
                                      {m: len(r) for m, r in rows.items()}))
        if time.time() - last_report > 10 or n == len(jobs):
            say(f"{dataset}: {n}/{len(jobs)} videos of this shard decoded and queued "
                f"({time.time() - start:.1f} s)")
            last_report = time.time()
    for e in plan.extractors:
        rows[e.modality] += e.flush()
    return write_shard_rows(plan, rows)


def _crashed_rows(dataset: str, plan: ShardPlan, say: Log) -> dict[str, list[FeatureRow]]:
    """Rows per modality to start the shard with: ``failed`` for each video whose decoding killed an
    earlier process, in every modality that decodes it (those videos leave ``plan.todo``)."""
    rows: dict[str, list[FeatureRow]] = {e.modality: [] for e in plan.extractors}
    for vid, error in plan.crashed.items():
        say(f"{dataset}: video {vid!r}: {error}")
        for e in plan.extractors:
            if vid in plan.todo[e.modality] and not e.request.empty:
                rows[e.modality] += e.failed_rows(VideoItem(plan.records[vid]), error)
                plan.todo[e.modality].discard(vid)
    return rows


def extract_dataset(dataset: str, config: ExtractConfig | None = None, *, shard_size: int | None = None,
                    settings: Settings | None = None, progress: Log | None = None,
                    on_progress: ProgressFn | None = None) -> dict[str, ModalityCounts]:
    """Plan and extract every shard in this process; returns the summed counts per modality."""
    config = config or ExtractConfig()
    settings = settings or get_settings()
    say = progress or log.info
    shards = plan_shards(dataset, config, shard_size=shard_size, settings=settings)
    total: dict[str, ModalityCounts] = {}
    for k, ids in enumerate(shards, 1):
        result = extract_shard(dataset, ids, config, settings=settings, progress=say, on_progress=on_progress)
        merge_counts(total, result)
        if on_progress:
            on_progress(ProgressEvent(f"{dataset} shards", k, len(shards), "shard"))
        say(f"{dataset}: shard {k}/{len(shards)} finished: " + "; ".join(
            f"{m} {c.done} ok, {c.empty} empty, {c.failed} failed, {c.skipped} skipped, "
            f"{c.known_failed} recorded failures skipped" for m, c in result.items()))
    finish_run(dataset, total, settings)
    return total
