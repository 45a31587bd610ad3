"""The ``extract`` flow: a thin Prefect wrapper over :mod:`extractors.run`.

``extract(dataset, modalities, weights, ...)`` plans the shards, runs one task per shard (with
retries), logs progress and publishes the summary (done / empty / failed / skipped per modality,
RANDOM WEIGHTS flagged) as a markdown artifact.

Shard tasks are submitted to the flow's task runner (flows/runners.py): by default one thread in
the flow's process, or a Dask cluster (``TVR_DASK_ADDRESS`` / ``TVR_DASK_LOCAL_WORKERS``, read when
this module is imported, or ``extract.with_options(task_runner=task_runner(...))``). When the device
resolves to CUDA the shard tasks carry the tag ``gpu``, so ``prefect concurrency-limit create gpu N``
caps how many run at once (docs/dask.md).

``python -m flows.extract <dataset> [options]`` (console script ``tvr-extract``) runs the same work
WITHOUT Prefect (plain Python, progress bars on a terminal); add ``--prefect`` to run it as a
Prefect flow run instead (``--dask-address`` / ``--dask-workers`` choose the runner there).
``--help`` lists the options. Exit codes: 0 done; 1 every video failed in some modality, or the
flow run could not start or failed; 2 bad input (a missing manifest, unknown modality: one line).

The deployment ``extract/<dataset>`` has a concurrency limit of 1 (prefect.yaml): a second run of
the same dataset waits (``AwaitingConcurrencySlot``) until the first ends. A flow run ends after
``TIMEOUTS["extract"]`` seconds at most.

The flow has one parameter per :class:`extractors.run.ExtractConfig` field, of the same name (plus
``dataset`` and ``shard_size``); None takes the config's default, and the config is built from them
by ``ExtractConfig.from_parameters``, as the command line builds it from its options, so every
option (decoding ones included: ``decode``, ``decode_threads``, ``decode_workers``, ``prefetch``,
``hwaccel``, ``decode_budget_s``) reaches the shard tasks the same way with or without ``--prefect``
and in deployments (``-p decode=exact``).
"""
from __future__ import annotations

import logging
import sys

from data.manifest import ManifestError
from data.progress import Bars
from data.store import StoreError

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from data.cli import add_version
from data.names import InvalidName
from data.settings import get_settings
from extractors.base import resolve_device
from extractors.run import (ExtractConfig, build_parser, config_from_args, extract_dataset, extract_shard,
                            finish_run, merge_counts, plan_shards, summary_lines, summary_markdown)
from flows.common import TIMEOUTS, artifact_key, check_names
from flows.runners import describe, require_api_server, task_runner

GPU_TAG = "gpu"  # limit with: prefect concurrency-limit create gpu <N>


@task(name="extract-shard", retries=2, retry_delay_seconds=5)
def extract_shard_task(dataset: str, video_ids: list[str], config: dict, shard_name: str) -> dict:
    logger = get_run_logger()
    counts = extract_shard(dataset, video_ids, config, progress=logger.info,
                           on_progress=Bars(tty=False, log_fn=logger.info, interval_s=30))
    logger.info(f"{shard_name}: " + "; ".join(f"{m} {c.done} ok / {c.empty} empty / {c.failed} failed / "
                                               f"{c.skipped} skipped" for m, c in counts.items()))
    return counts


class AllVideosFailed(RuntimeError):
    """Every video attempted failed in at least one modality (nothing was extracted there)."""


def all_failed(dataset: str, counts: dict) -> str | None:
    """A message when some modality attempted videos and every one of them failed, else None."""
    bad = [m for m, c in counts.items() if c.failed and not (c.done or c.empty)]
    if not bad:
        return None
    first = next((e for m in bad for e in counts[m].errors), "")
    return f"{dataset}: every video failed in {', '.join(bad)}" + (f" (first error: {first})" if first else "")


@flow(name="extract", task_runner=task_runner(), timeout_seconds=TIMEOUTS["extract"])
def extract(dataset: str, modalities: list[str] | None = None, weights: dict[str, str] | None = None,
            models: dict[str, str] | None = None, shard_size: int | None = None, device: str | None = None,
            precision: str | None = None, seed: int | None = None, batch_sizes: dict[str, int] | None = None,
            options: dict[str, dict] | None = None, decode_workers: int | None = None,
            decode_budget_s: float | None = None, prefetch: int | None = None, decode: str | None = None,
            decode_threads: int | None = None, hwaccel: str | None = None) -> dict:
    """Extract ``modalities`` of ``dataset`` into the feature store; returns the summary dict.

    Every parameter but ``dataset`` and ``shard_size`` is the :class:`ExtractConfig` field of that
    name (None: its default; ``seed`` / ``device``: ``$TVR_SEED`` / ``$TVR_DEVICE``).
    Raises :class:`AllVideosFailed` (the run ends Failed, after publishing its summary) when
    every video attempted failed in some modality."""
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
    progress = create_progress_artifact(0.0, description=f"extract {dataset}: shards finished (%)")
    futures = [shard_task.submit(dataset, ids, config.to_dict(), f"shard {k}/{len(shards)}")
               for k, ids in enumerate(shards, 1)]
    total: dict = {}
    for k, future in enumerate(futures, 1):
        merge_counts(total, future.result())
        update_progress_artifact(progress, 100.0 * k / len(shards))
    finish_run(dataset, total, settings)   # debris out, superseded rows compacted (if no other writer is busy)
    for line in summary_lines(dataset, total):
        logger.warning(line) if "RANDOM" in line else logger.info(line)
    create_markdown_artifact(summary_markdown(dataset, total), key=artifact_key("extract", dataset),
                             description=f"extraction summary of {dataset}")
    failure = all_failed(dataset, total)
    if failure:
        raise AllVideosFailed(failure)
    return {m: vars(c) for m, c in total.items()}


def flow_parameters(config: ExtractConfig) -> dict:
    """The :func:`extract` parameters that give ``config`` back (every field, by name)."""
    return {**config.to_dict(), "modalities": list(config.modalities)}


def shard_task_for(device: str):
    """The shard task, tagged ``gpu`` when ``device`` resolves to CUDA (for a tag concurrency limit)."""
    on_gpu = resolve_device(device).type == "cuda"
    return extract_shard_task.with_options(tags={GPU_TAG}) if on_gpu else extract_shard_task


def main(argv: list[str] | None = None) -> int:
    parser = build_parser("python -m flows.extract")
    parser.add_argument("--prefect", action="store_true",
                        help="run as a Prefect flow run (default: plain Python, no Prefect machinery)")
    parser.add_argument("--dask-address", default=None,
                        help="with --prefect: run the shard tasks on the Dask scheduler at this address, "
                             "e.g. tcp://10.0.0.5:8786 (default $TVR_DASK_ADDRESS)")
    parser.add_argument("--dask-workers", type=int, default=None,
                        help="with --prefect: run the shard tasks on a temporary local Dask cluster of N worker "
                             "processes (default $TVR_DASK_LOCAL_WORKERS; 0 = in the flow's process)")
    add_version(parser)
    args = parser.parse_args(argv)
    if (args.dask_address or args.dask_workers is not None) and not args.prefect:
        parser.error("--dask-address / --dask-workers need --prefect")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = get_settings()
    try:
        config = config_from_args(args, settings)
        check_names(dataset=args.dataset)
        if not settings.manifest_path(args.dataset).is_file():
            raise ManifestError(f"{settings.manifest_path(args.dataset)}: no manifest here; build it first "
                                f"(python -m data.prepare {args.dataset} ...)")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.prefect:
        # an option given on the command line overrides both settings
        address, workers = args.dask_address, args.dask_workers
        if address or workers is not None:
            address, workers = address or "", workers or 0
        try:
            runner = task_runner(address, workers, settings)
            require_api_server(runner)
            run = extract.with_options(task_runner=runner)
            run(args.dataset, shard_size=args.shard_size, **flow_parameters(config))
        except Exception as err:  # noqa: BLE001 - the flow run's own log has the traceback
            print(f"error: the extract flow run did not finish: {err.__class__.__name__}: {err}", file=sys.stderr)
            return 1
        return 0
    try:
        with Bars.for_cli() as bars:
            counts = extract_dataset(args.dataset, config, shard_size=args.shard_size, settings=settings,
                                     on_progress=bars)
    except (ManifestError, StoreError, KeyError, InvalidName) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(args.dataset, counts)))
    failure = all_failed(args.dataset, counts)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
