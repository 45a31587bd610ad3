"""The ``extract`` flow: a thin Prefect wrapper over :mod:`extractors.runner`.

``extract(dataset, modalities, weights, ...)`` plans the shards, runs one task per shard (with
retries), logs progress, keeps the progress artifact ``extract-<dataset>-progress`` (shards
finished, %) up to date and publishes the summary (done / empty / failed / skipped per modality,
RANDOM WEIGHTS flagged) as the markdown artifact ``extract-<dataset>`` (keys: flows.common.artifact_key).

Shard tasks are submitted to the flow's task runner (flows/runners.py): by default one thread in
the flow's process, or a Dask cluster (``TVR_DASK_ADDRESS`` / ``TVR_DASK_LOCAL_WORKERS``, read when
a flow run starts, so deployment runs follow the worker's environment; or
``extract.with_options(task_runner=task_runner(...))``). When the device resolves to CUDA the
shard tasks carry the tag ``gpu``, so ``prefect concurrency-limit create gpu N`` caps how many run
at once (docs/dask.md).

``python -m flows.extract <dataset> [options]`` (console script ``tvr-extract``) is the extraction
command of :mod:`extractors.cli`: it runs the same work WITHOUT Prefect (plain Python, progress bars
on a terminal); with ``--prefect`` it calls :func:`run_flow` here to run it as a Prefect flow run
instead (``--dask-address`` / ``--dask-workers`` choose the runner there). ``--help`` lists the
options. Exit codes: 0 when every video is ok, empty, skipped or a known failure (a failure recorded
for the same content, not attempted again unless ``retry_failed``); 1 for a systemic failure
(:func:`extractors.summary.systemic_failure`), a Prefect server that cannot be reached, a
``TVR_HOME`` that cannot be written, or a flow run that could not start or failed; 2 bad input (a
missing manifest, unknown modality, bad ``TVR_*`` setting: one line). The flow run itself follows
the same rule: Completed with the counts in its artifact, Failed only for a systemic failure.

The deployment ``extract/<dataset>`` has a concurrency limit of 1 (prefect.yaml): a second run of
the same dataset waits (``AwaitingConcurrencySlot``) until the first ends. A flow run ends after
``TIMEOUTS["extract"]`` seconds at most.

The flow has one parameter per :class:`extractors.config.ExtractConfig` field, of the same name
(plus ``dataset`` and ``shard_size``); None takes the config's default, and the config is built
from them by ``ExtractConfig.from_parameters``, as the command line builds it from its options, so
every option (decoding ones included: ``decode``, ``decode_threads``, ``decode_workers``,
``prefetch``, ``hwaccel``, ``decode_budget_s``) reaches the shard tasks the same way with or
without ``--prefect`` and in deployments (``-p decode=exact``).
"""
from __future__ import annotations

import argparse
import sys

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from data.cli import Exit, disk_fault, error
from data.devices import resolve_device
from data.progress import Bars
from data.provenance import RANDOM_WEIGHTS
from data.settings import Settings, get_settings
from extractors.cli import main
from extractors.config import ExtractConfig
from extractors.plan import plan_shards
from extractors.runner import extract_shard
from extractors.summary import merge_counts, summary_lines, summary_markdown, systemic_failure
from extractors.writer import finish_run
from flows.common import TIMEOUTS, artifact_key, check_names, unreachable_api
from flows.runners import (SettingsTaskRunner, console_without_tracebacks, describe, require_api_server,
                           task_runner, unreachable_scheduler)

GPU_TAG = "gpu"  # limit with: prefect concurrency-limit create gpu <N>


@task(name="extract-shard", retries=2, retry_delay_seconds=5)
def extract_shard_task(dataset: str, video_ids: list[str], config: dict, shard_name: str) -> dict:
    logger = get_run_logger()
    counts = extract_shard(dataset, video_ids, config, progress=logger.info,
                           on_progress=Bars(tty=False, log_fn=logger.info, interval_s=30))
    logger.info(f"{shard_name}: " + "; ".join(f"{m} {c.done} ok / {c.empty} empty / {c.failed} failed / "
                                               f"{c.skipped} skipped / {c.known_failed} recorded failures skipped"
                                               for m, c in counts.items()))
    return counts


class AllVideosFailed(RuntimeError):
    """A systemic failure: in some modality every video attempted failed, none of them a known failure."""


@flow(name="extract", task_runner=SettingsTaskRunner(), timeout_seconds=TIMEOUTS["extract"])
def extract(dataset: str, modalities: list[str] | None = None, weights: dict[str, str] | None = None,
            models: dict[str, str] | None = None, shard_size: int | None = None, device: str | None = None,
            precision: str | None = None, seed: int | None = None, batch_sizes: dict[str, int] | None = None,
            options: dict[str, dict] | None = None, decode_workers: int | None = None,
            decode_budget_s: float | None = None, prefetch: int | None = None, decode: str | None = None,
            decode_threads: int | None = None, hwaccel: str | None = None, retry_failed: bool | None = None) -> dict:
    """Extract ``modalities`` of ``dataset`` into the feature store; returns the summary dict.

    Every parameter but ``dataset`` and ``shard_size`` is the :class:`ExtractConfig` field of that
    name (None: its default; ``seed`` / ``device``: ``$TVR_SEED`` / ``$TVR_DEVICE``).
    Recorded failures of unchanged files are skipped unless ``retry_failed``. Raises
    :class:`AllVideosFailed` (the run ends Failed, after publishing its summary) for a systemic
    failure (:func:`extractors.summary.systemic_failure`); known failures leave it Completed."""
    parameters = dict(locals())
    check_names(dataset=dataset)
    logger = get_run_logger()
    settings = get_settings()
    config = ExtractConfig.from_parameters(parameters, settings)
    shards = plan_shards(dataset, config, shard_size=shard_size, settings=settings)
    shard_task = shard_task_for(config.device)
    on_gpu = GPU_TAG in shard_task.tags
    logger.info(f"{dataset}: {sum(map(len, shards))} videos in {len(shards)} shards; modalities {list(config.modalities)}; "
                f"tasks run in {describe(FlowRunContext.get().task_runner)}"
                + (f", tagged '{GPU_TAG}'" if on_gpu else ""))
    progress = create_progress_artifact(0.0, key=artifact_key("extract", dataset, "progress"),
                                        description=f"extract {dataset}: shards finished (%)")
    futures = [shard_task.submit(dataset, ids, config.to_dict(), f"shard {k}/{len(shards)}")
               for k, ids in enumerate(shards, 1)]
    total: dict = {}
    for k, future in enumerate(futures, 1):
        merge_counts(total, future.result())
        update_progress_artifact(progress, 100.0 * k / len(shards))
    finish_run(dataset, total, settings)   # debris out, superseded rows compacted (if no other writer is busy)
    for line in summary_lines(dataset, total):
        logger.warning(line) if RANDOM_WEIGHTS in line else logger.info(line)
    create_markdown_artifact(summary_markdown(dataset, total), key=artifact_key("extract", dataset),
                             description=f"extraction summary of {dataset}")
    failure = systemic_failure(dataset, total)
    if failure:
        raise AllVideosFailed(failure)
    return {m: vars(c) for m, c in total.items()}


def flow_parameters(config: ExtractConfig) -> dict:
    """The :func:`extract` parameters that give ``config`` back (every field, by name)."""
    return {**config.to_dict(), "modalities": list(config.modalities)}


def shard_task_for(device: str):
    """The shard task, tagged ``gpu`` when ``device`` is CUDA (for a tag concurrency limit).

    ``auto`` is resolved here; a named device is taken as named (``cuda:1`` is tagged even in a
    flow process without that GPU: the extractors check it where they are built)."""
    kind = resolve_device(device).type if device == "auto" else torch.device(device).type
    return extract_shard_task.with_options(tags={GPU_TAG}) if kind == "cuda" else extract_shard_task


def run_flow(args: argparse.Namespace, settings: Settings, config: ExtractConfig) -> int:
    """``--prefect``: run ``config`` as a flow run of :func:`extract` on the runner that
    ``--dask-address`` / ``--dask-workers`` (or else the settings) choose; 1 if it did not finish
    (or the Prefect server of ``PREFECT_API_URL`` does not answer: then it does not start)."""
    unreachable = unreachable_api()
    if unreachable:
        return error(unreachable, Exit.FAILED)
    # an option given on the command line overrides both settings
    address, workers = args.dask_address, args.dask_workers
    if address or workers is not None:
        address, workers = address or "", workers or 0
    runner = None
    try:
        runner = task_runner(address, workers, settings)
        require_api_server(runner)
        run = extract.with_options(task_runner=runner)
        with console_without_tracebacks():
            run(args.dataset, shard_size=args.shard_size, **flow_parameters(config))
    except Exception as err:  # noqa: BLE001 - the flow run's own log has the traceback
        lost = unreachable_scheduler(runner)
        if lost:
            return error(f"the Dask scheduler at {lost} cannot be reached ({err.__class__.__name__}: not running, or "
                         f"lost during the run): the shards finished before are kept; start a scheduler and "
                         f"its workers, then run this command again with their address (it extracts only the "
                         f"rest; docs/dask.md)", Exit.FAILED)
        return error(disk_fault(err) or f"the extract flow run did not finish: {err.__class__.__name__}: {err}",
                     Exit.FAILED)
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
