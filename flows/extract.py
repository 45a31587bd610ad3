"""The ``extract`` flow: a thin Prefect wrapper over :mod:`extractors.run`.

``extract(dataset, modalities, weights, ...)`` plans the shards, runs one task per shard (with
retries), logs progress and publishes the summary (done / empty / failed / skipped per modality,
RANDOM WEIGHTS flagged) as a markdown artifact.

Shard tasks are submitted to the flow's task runner (flows/runners.py): by default one thread in
the flow's process, or a Dask cluster (``TVR_DASK_ADDRESS`` / ``TVR_DASK_LOCAL_WORKERS``, read when
this module is imported, or ``extract.with_options(task_runner=task_runner(...))``). When the device
resolves to CUDA the shard tasks carry the tag ``gpu``, so ``prefect concurrency-limit create gpu N``
caps how many run at once (docs/dask.md).

``python -m flows.extract <dataset> [options]`` runs the same work WITHOUT Prefect (plain Python);
add ``--prefect`` to run it as a Prefect flow run instead (``--dask-address`` /
``--dask-workers`` choose the runner there). ``--help`` lists the options.
"""
from __future__ import annotations

import logging
import sys

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.context import FlowRunContext

from data.manifest import ManifestError
from data.names import InvalidName
from data.settings import get_settings
from data.store import StoreError
from extractors.base import resolve_device
from extractors.registry import MODALITIES
from extractors.run import (ExtractConfig, build_parser, config_from_args, extract_dataset, extract_shard,
                            finish_run, merge_counts, plan_shards, summary_lines, summary_markdown)
from flows.runners import describe, require_api_server, task_runner

GPU_TAG = "gpu"  # limit with: prefect concurrency-limit create gpu <N>


@task(name="extract-shard", retries=2, retry_delay_seconds=5)
def extract_shard_task(dataset: str, video_ids: list[str], config: dict, shard_name: str) -> dict:
    logger = get_run_logger()
    counts = extract_shard(dataset, video_ids, config, progress=logger.info)
    logger.info(f"{shard_name}: " + "; ".join(f"{m} {c.done} ok / {c.empty} empty / {c.failed} failed / "
                                               f"{c.skipped} skipped" for m, c in counts.items()))
    return counts


@flow(name="extract", task_runner=task_runner())
def extract(dataset: str, modalities: list[str] = list(MODALITIES), weights: dict[str, str] | None = None,
            models: dict[str, str] | None = None, shard_size: int | None = None, device: str = "auto",
            precision: str = "auto", seed: int | None = None, batch_sizes: dict[str, int] | None = None,
            options: dict[str, dict] | None = None, decode_workers: int = 1) -> dict:
    """Extract ``modalities`` of ``dataset`` into the feature store; returns the summary dict."""
    logger = get_run_logger()
    settings = get_settings()
    config = ExtractConfig(tuple(modalities), weights or {}, models or {}, batch_sizes or {}, options or {},
                           settings.seed if seed is None else seed, device, precision, decode_workers)
    shards = plan_shards(dataset, config, shard_size=shard_size, settings=settings)
    shard_task = shard_task_for(config.device)
    on_gpu = GPU_TAG in shard_task.tags
    logger.info(f"{dataset}: {sum(map(len, shards))} videos in {len(shards)} shards; modalities {list(modalities)}; "
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
    create_markdown_artifact(summary_markdown(dataset, total), key=f"extract-{_artifact_key(dataset)}",
                             description=f"extraction summary of {dataset}")
    return {m: vars(c) for m, c in total.items()}


def shard_task_for(device: str):
    """The shard task, tagged ``gpu`` when ``device`` resolves to CUDA (for a tag concurrency limit)."""
    on_gpu = resolve_device(device).type == "cuda"
    return extract_shard_task.with_options(tags={GPU_TAG}) if on_gpu else extract_shard_task


def _artifact_key(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "dataset"


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
    args = parser.parse_args(argv)
    if (args.dask_address or args.dask_workers is not None) and not args.prefect:
        parser.error("--dask-address / --dask-workers need --prefect")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = get_settings()
    config = config_from_args(args, settings)
    if args.prefect:
        # an option given on the command line overrides both settings
        address, workers = args.dask_address, args.dask_workers
        if address or workers is not None:
            address, workers = address or "", workers or 0
        runner = task_runner(address, workers, settings)
        require_api_server(runner)
        run = extract.with_options(task_runner=runner)
        run(args.dataset, list(config.modalities), config.weights, config.models, args.shard_size, config.device,
            config.precision, config.seed, config.batch_sizes, config.options, config.decode_workers)
        return 0
    try:
        counts = extract_dataset(args.dataset, config, shard_size=args.shard_size, settings=settings)
    except (ManifestError, StoreError, InvalidName) as exc:   # a user's input, not a bug: no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(summary_lines(args.dataset, counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
