"""The extraction command line (``tvr-extract``, ``python -m flows.extract``), plain Python.

``main(argv)`` parses the options (:func:`build_parser`), checks them before any work (the
settings, the dataset name, the manifest, the device: a bad one is one ``error:`` line and exit 2)
and runs :func:`extractors.runner.extract_dataset` in this process with progress bars on a terminal,
then prints the summary. Prefect is not imported unless ``--prefect`` is given: then the same
config runs as a Prefect flow run (``flows/extract.py``; ``--dask-address`` / ``--dask-workers``
choose its task runner). Exit codes (:class:`data.cli.Exit`, :data:`EXIT_STATUS`): 0 when every
video is ok, empty, skipped or a known failure; 1 when the failure is systemic
(:func:`extractors.summary.systemic_failure`), the flow run could not start or failed, or
``TVR_HOME`` cannot be written; 2 bad input.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

from data.cli import Exit, add_version, error, guarded
from data.devices import resolve_device
from data.manifest import ManifestError
from data.modalities import AUDIO, CLIP_FRAMES, CLIP_TEXT, MODALITIES, MOTION
from data.names import InvalidName, check_name
from data.progress import Bars
from data.settings import Settings, get_settings
from data.store import StoreError
from extractors.config import ExtractConfig
from extractors.plan import checked_manifest
from extractors.registry import DEFAULT_MODELS
from extractors.runner import extract_dataset
from extractors.summary import summary_lines, systemic_failure
from extractors.weights import WeightsError

PROG = "python -m flows.extract"
EXIT_STATUS = ("Exit status: 0 when every video is ok, empty, skipped (done before) or a known failure (its "
               "failure is recorded for the file as it is now: not attempted again unless --retry-failed; a "
               "changed file is always attempted); 1 when the failure looks systemic (in some modality every "
               "video attempted in this run failed, at least one was attempted and none was a known failure: "
               "a model, device or video folder that does not work), when the run itself broke (TVR_HOME "
               "read-only, full or not writable by you; the Prefect server unreachable) or the flow run "
               "failed; 2 for bad input (arguments, a TVR_* setting, a missing manifest).")


def _pairs(text: str, what: str, cast=str) -> dict:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise argparse.ArgumentTypeError(f"{what}: expected MODALITY=VALUE, got {part!r}")
        key, value = part.split("=", 1)
        if key not in MODALITIES:
            raise argparse.ArgumentTypeError(f"{what}: unknown modality {key!r}")
        out[key] = cast(value)
    return out


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Every option of the command: what to extract, how to decode, and where to run it."""
    p = argparse.ArgumentParser(
        prog=prog, description="Extract features of a dataset (one decode per video feeds every modality).",
        epilog=f"Example: %(prog)s synthetic --modalities {CLIP_FRAMES},{CLIP_TEXT},{AUDIO} "
               f"--weights {CLIP_FRAMES}=random,{AUDIO}=/models/vggish.pth. {EXIT_STATUS}")
    p.add_argument("dataset", help="dataset name (its manifest: $TVR_HOME/datasets/<name>/manifest.parquet)")
    p.add_argument("--modalities", default=",".join(MODALITIES),
                   help=f"comma-separated subset of {','.join(MODALITIES)} (default: all)")
    p.add_argument("--weights", default="", type=lambda s: _pairs(s, "--weights"),
                   help=f"MODALITY=random|FILE|TAG, comma-separated "
                        f"(default random; {CLIP_TEXT} follows {CLIP_FRAMES})")
    p.add_argument("--model", default="", type=lambda s: _pairs(s, "--model"),
                   help=f"MODALITY=NAME (defaults: {', '.join(f'{k}={v}' for k, v in DEFAULT_MODELS.items())})")
    p.add_argument("--batch-size", default="", type=lambda s: _pairs(s, "--batch-size", int),
                   help="MODALITY=N units per forward pass (frames, captions, windows, clips)")
    p.add_argument("--frame-fps", type=float, default=None, help=f"{CLIP_FRAMES} sampling rate (default 1)")
    p.add_argument("--motion-fps", type=float, default=None, help=f"{MOTION} dense frame rate (default 15)")
    p.add_argument("--motion-size", type=int, default=None, help=f"{MOTION} crop side, multiple of 32 (default 128)")
    p.add_argument("--motion-clip-frames", type=int, default=None,
                   help=f"{MOTION} fast-pathway frames per clip, multiple of 4 (default 32)")
    p.add_argument("--seed", type=int, default=None, help="torch seed of random weights (default $TVR_SEED or 0)")
    p.add_argument("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp16", "fp32"],
                   help="auto = fp16 on CUDA, fp32 on CPU")
    p.add_argument("--shard-size", type=int, default=None, help="videos per shard (default $TVR_SHARD_SIZE or 64)")
    p.add_argument("--decode-workers", type=int, default=1, help="background decode threads (default 1)")
    p.add_argument("--prefetch", type=int, default=4, help="videos decoded ahead of the models (default 4)")
    p.add_argument("--decode", default="fast", choices=["fast", "exact"],
                   help="fast: skip frames nothing refers to (same frames, fewer decoded); exact: decode every "
                        "frame in one thread (default fast)")
    p.add_argument("--decode-threads", type=int, default=0,
                   help="FFmpeg threads per decoder (default 0: cores / decode workers for >= 640x360)")
    p.add_argument("--decode-budget", type=float, default=900.0,
                   help="seconds of decoding allowed per video before it is recorded failed (default 900)")
    p.add_argument("--hwaccel", default="auto", choices=["auto", "none", "cuda"],
                   help="GPU decoding (NVDEC); auto = when the device is CUDA; falls back to the CPU with a log line")
    p.add_argument("--retry-failed", action="store_true",
                   help="attempt again the videos whose failure is recorded for the file as it is now (default: "
                        "skip them and count them as 'skipped: recorded failure')")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--prefect", action="store_true",
                   help="run as a Prefect flow run (default: plain Python, no Prefect machinery)")
    p.add_argument("--dask-address", default=None,
                   help="with --prefect: run the shard tasks on the Dask scheduler at this address, "
                        "e.g. tcp://10.0.0.5:8786 (default $TVR_DASK_ADDRESS)")
    p.add_argument("--dask-workers", type=int, default=None,
                   help="with --prefect: run the shard tasks on a temporary local Dask cluster of N worker "
                        "processes (default $TVR_DASK_LOCAL_WORKERS; 0 = in the flow's process)")
    add_version(p)
    return p


def config_from_args(args: argparse.Namespace, settings: Settings) -> ExtractConfig:
    """The :class:`ExtractConfig` of the parsed options (unset ones: the config's or the settings' defaults)."""
    options: dict[str, dict] = {}
    if args.frame_fps is not None:
        options[CLIP_FRAMES] = {"fps": args.frame_fps}
    motion = {k: v for k, v in (("fps", args.motion_fps), ("size", args.motion_size),
                                ("clip_frames", args.motion_clip_frames)) if v is not None}
    if motion:
        options[MOTION] = motion
    return ExtractConfig.from_parameters(dict(
        modalities=tuple(m.strip() for m in args.modalities.split(",") if m.strip()),
        weights=args.weights, models=args.model, batch_sizes=args.batch_size, options=options,
        seed=args.seed, device=args.device or None, precision=args.precision, decode_workers=args.decode_workers,
        prefetch=args.prefetch, decode=args.decode, decode_threads=args.decode_threads,
        decode_budget_s=args.decode_budget, hwaccel=args.hwaccel, retry_failed=args.retry_failed), settings)


def checked_config(args: argparse.Namespace) -> tuple[Settings, ExtractConfig]:
    """The settings and the config of ``args``, checked before any work: raises ``ValueError`` (a bad
    ``TVR_*`` setting, option value, dataset name or device; no manifest for the dataset, or a video
    root that does not exist when a modality decodes videos)."""
    settings = get_settings()
    config = config_from_args(args, settings)
    check_name(args.dataset, "dataset")
    resolve_device(config.device)
    if not settings.manifest_path(args.dataset).is_file():
        raise ManifestError(f"{settings.manifest_path(args.dataset)}: no manifest here; build it first "
                            f"(python -m data.prepare {args.dataset} ...)")
    checked_manifest(args.dataset, config, settings)
    return settings, config


def run_plain(args: argparse.Namespace, settings: Settings, config: ExtractConfig) -> int:
    """Extract in this process (progress bars on a terminal), print the summary; 1 for a systemic failure."""
    with Bars.for_cli() as bars:
        counts = extract_dataset(args.dataset, config, shard_size=args.shard_size, settings=settings,
                                 on_progress=bars)
    print("\n".join(summary_lines(args.dataset, counts)))
    failure = systemic_failure(args.dataset, counts)
    return error(failure, Exit.FAILED) if failure else Exit.OK


def run_as_flow(args: argparse.Namespace, settings: Settings, config: ExtractConfig) -> int:
    """``--prefect``: the same config as a Prefect flow run (:func:`flows.extract.run_flow`).

    The one import from the extractors package upwards (extractors -> flows), kept inside this
    function so that the command imports Prefect only when ``--prefect`` asks for it."""
    from flows.extract import run_flow

    return run_flow(args, settings, config)


@guarded(ManifestError, StoreError, KeyError, InvalidName, WeightsError)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.dask_address or args.dask_workers is not None) and not args.prefect:
        parser.error("--dask-address / --dask-workers need --prefect")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        settings, config = checked_config(args)
    except ValueError as err:
        return error(err)
    return (run_as_flow if args.prefect else run_plain)(args, settings, config)


if __name__ == "__main__":
    sys.exit(main())
