"""Training throughput on MSR-VTT-sized random features: samples/s per model and data-wait share.

``python bench/train.py [--videos 9000] [--frames 12] [--captions 20] [--steps 10] [--batch 128]``

Builds the loader's in-memory form (:class:`fusion.features.DatasetFeatures`) directly from random
arrays of the contract-A shapes (frames 512-d, caption tokens 512-d with 8-16 tokens, VGGish 128-d
windows ~1 per second, SlowFast 2304-d clips ~1 per 2 s; a quarter of the videos without audio),
skipping the Parquet round trip (a one-time cost at start-up, not per step). Then, per model, times
``--steps`` training steps exactly as ``fusion.train`` runs them (``assemble_batch`` then
``train_step``): the share of each step spent assembling the batch is the time the model waits for
data (loading is synchronous, so nothing hides it). Prints a Markdown table and writes JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.modalities import AUDIO, CLIP_FRAMES, MOTION  # noqa: E402
from fusion.config import load_config  # noqa: E402
from fusion.batches import Ragged  # noqa: E402
from fusion.features import DatasetFeatures  # noqa: E402
from fusion.factory import build_model, modalities_for  # noqa: E402
from fusion.registry import trained_models  # noqa: E402
from fusion.train import assemble_batch, lr_factor, make_optimizer, train_step  # noqa: E402


def random_features(n_videos: int, frames: int, captions: int, seed: int = 0) -> DatasetFeatures:
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    durations = rng.uniform(frames, 2.5 * frames, n_videos)            # seconds; 1 fps frames

    def ragged(lengths: np.ndarray, dim: int, step_s: float) -> Ragged:
        lengths = torch.as_tensor(lengths, dtype=torch.int64)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
        starts = torch.repeat_interleave(offsets[:-1], lengths)
        times = (torch.arange(int(offsets[-1])) - starts).float() * step_s
        return Ragged.from_offsets(torch.randn(int(offsets[-1]), dim, generator=g), offsets, times)

    n_frames = np.floor(durations).astype(int)
    frames_r = ragged(n_frames, 512, 1.0)
    has_audio = rng.random(n_videos) >= 0.25
    audio_r = ragged(np.where(has_audio, np.floor(durations / 0.96), 0).astype(int), 128, 0.96)
    motion_r = ragged(np.maximum(1, np.floor(durations / 2)).astype(int), 2304, 2.0)
    n_caps = n_videos * captions
    tokens = rng.integers(8, 17, n_caps)
    text_r = ragged(tokens, 512, 1.0)
    n_train = int(n_videos * 0.9)
    splits = {"train": np.arange(n_train), "val": np.arange(n_train, n_videos)}
    return DatasetFeatures("bench-random", {}, {CLIP_FRAMES: {"random_weights": True}},
                           [f"v{i}" for i in range(n_videos)], splits, frames_r, text_r,
                           torch.as_tensor(tokens - 1), torch.arange(n_videos).repeat_interleave(captions),
                           [""] * n_caps, list(range(captions)) * n_videos, audio_r, torch.as_tensor(has_audio),
                           motion_r, torch.ones(n_videos, dtype=torch.bool))


def bench_model(name: str, all_feats: DatasetFeatures, steps: int, batch: int, warmup: int) -> dict:
    config = load_config(name, overrides=[{"train": {"batch_size": batch}}])
    needed = modalities_for(config)        # as in training, only the modalities the model reads
    feats = replace(all_feats, audio=all_feats.audio if AUDIO in needed else None,
                    motion=all_feats.motion if MOTION in needed else None)
    torch.manual_seed(0)
    model = build_model(config, 512)
    optimizer = make_optimizer(model, config["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps + warmup, 0.1))
    caps = feats.split_captions("train")
    order = torch.randperm(len(caps), generator=torch.Generator().manual_seed(0)).numpy()
    model.train()
    data_s = total_s = 0.0
    for step in range(warmup + steps):
        gen = torch.Generator().manual_seed(step)
        t0 = time.perf_counter()
        inputs = assemble_batch(feats, caps[order[step * batch:(step + 1) * batch]], config, model, 1, gen,
                                torch.device("cpu"))
        t1 = time.perf_counter()
        train_step(model, optimizer, scheduler, inputs, 1, config["train"]["grad_clip"])
        t2 = time.perf_counter()
        if step >= warmup:
            data_s += t1 - t0
            total_s += t2 - t0
    return {"model": name, "steps": steps, "batch": batch, "samples_per_s": steps * batch / total_s,
            "step_s": total_s / steps, "data_s": data_s / steps, "data_share_pct": 100 * data_s / total_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=9000)
    p.add_argument("--frames", type=int, default=12, help="max_frames; videos hold 12-30 1 fps frames")
    p.add_argument("--captions", type=int, default=20, help="captions per video")
    p.add_argument("--steps", type=int, default=10, help="timed steps per model (after --warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--models", nargs="+", default=trained_models(), help="default: every model that trains")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    feats = random_features(args.videos, args.frames, args.captions)
    build_s = time.perf_counter() - t0
    results = [bench_model(m, feats, args.steps, args.batch, args.warmup) for m in args.models]
    print(f"RANDOM features: {args.videos} videos (12-30 frames, max_frames {args.frames}), "
          f"{args.videos * args.captions} captions, audio + motion; built in {build_s:.1f} s; "
          f"{torch.get_num_threads()} CPU threads; {args.steps} timed steps of batch {args.batch} per model\n")
    print("| model | samples/s | step (s) | data (s) | data share |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['samples_per_s']:.1f} | {r['step_s']:.3f} | {r['data_s']:.4f} | {r['data_share_pct']:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
