"""Train, save, load and score a run's moment head (docs/methods.md §8; called by :mod:`fusion.train`).

Training (:func:`fit_head`): AdamW (``moments.lr``, ``moments.weight_decay``), one-cycle schedule
(10% warm-up, cosine to 0), gradient clipping 1.0, ``moments.epochs`` epochs over the training
videos in batches of ``moments.batch_size`` videos with every window of their captions. The video
order of epoch e is a permutation seeded by (seed, e) and each step reseeds torch (dropout), so the
head is a function of the seed. No model selection: the last epoch is kept (there is no
moment-level validation signal besides the scores reported here).

The run folder gets ``moment_head.pt`` (state dict + the head's description; the description is
also ``moment_head`` in config.json), ``moment_log.jsonl`` (one line per epoch) and, in
metrics.json / report.md, ``moments``: windows trained on, seconds, and SVMR of the head beside the
whole-video baseline on the validation and test windows. Every output says RANDOM WEIGHTS when the
features came from random extractors.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.atomic import write_text_atomic
from data.moment_metrics import svmr_metrics
from data.modalities import CLIP_FRAMES
from data.progress import ProgressEvent, ProgressFn
from data.provenance import random_weights_label
from fusion.moments.grid import frame_statistics, grid_batch, grid_steps, window_steps
from fusion.moments.head import MomentHead, one_thread
from fusion.moments.plan import HeadPlan
from fusion.moments.predict import MomentPredictor
from fusion.moments.saved import HEAD_FILE, load_head, save_head

GRAD_CLIP = 1.0
WARMUP = 0.1
SVMR_TOP = 5            # moments per query scored by the SVMR metrics (R1 and R5)


def _seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step + 17) % (2 ** 63)


def fit_head(plan: HeadPlan, seed: int, device: torch.device, say: Callable[[str], None],
             progress: ProgressFn | None = None) -> tuple[MomentHead, list[dict]]:
    """A head trained on ``plan``'s train windows (CPU ops on one thread), and its per-epoch log."""
    with one_thread():
        return _fit(plan, seed, device, say, progress)


def _fit(plan: HeadPlan, seed: int, device: torch.device, say: Callable[[str], None],
         progress: ProgressFn | None) -> tuple[MomentHead, list[dict]]:
    cfg, feats = plan.config, plan.feats
    torch.manual_seed(seed)
    head = MomentHead(plan.meta())
    head.fit_input_statistics({**feats.input_statistics("train"), CLIP_FRAMES: frame_statistics(feats, "train")})
    head = head.to(device)
    captions, video_rows, bounds = plan.train_samples()
    step_s, n_steps = grid_steps(plan.durations[video_rows], cfg["step_s"], cfg["max_steps"])
    first, last = window_steps(bounds, step_s, n_steps)
    videos, sample_video = np.unique(video_rows, return_inverse=True)
    samples_of = [np.flatnonzero(sample_video == v) for v in range(len(videos))]
    per_step = min(cfg["batch_size"], len(videos))
    steps = -(-len(videos) // per_step)
    optimizer = torch.optim.AdamW(head.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg["lr"], total_steps=steps * cfg["epochs"],
                                                   pct_start=WARMUP, anneal_strategy="cos", cycle_momentum=False)
    log = []
    for epoch in range(cfg["epochs"]):
        t0, sums = time.time(), {}
        order = torch.randperm(len(videos), generator=torch.Generator().manual_seed(_seed(seed, epoch, -1))).numpy()
        head.train()
        for step in range(steps):
            torch.manual_seed(_seed(seed, epoch, step))
            chosen = np.sort(order[step * per_step: (step + 1) * per_step])
            picked = np.concatenate([samples_of[v] for v in chosen])
            local = {int(v): i for i, v in enumerate(chosen)}
            grid = grid_batch(feats, videos[chosen], plan.durations[videos[chosen]], cfg["step_s"], cfg["max_steps"],
                              plan.modalities).to(device)
            pair = torch.as_tensor([local[int(v)] for v in sample_video[picked]], device=device)
            loss, parts = head.loss(grid, plan.queries(captions[picked]).to(device), pair,
                                    torch.as_tensor(first[picked], device=device),
                                    torch.as_tensor(last[picked], device=device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), GRAD_CLIP)
            optimizer.step()
            schedule.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if progress:
                progress(ProgressEvent(f"moments epoch {epoch + 1}/{cfg['epochs']}", step + 1, steps, "step",
                                       {"loss": sums["loss"] / (step + 1)}))
        entry = {"moments_epoch": epoch, "steps": steps, "lr": schedule.get_last_lr()[0],
                 **{k: v / steps for k, v in sums.items()}, "seconds": round(time.time() - t0, 2)}
        if feats.random_weights:
            entry["WARNING"] = random_weights_label(detail=False)
        say(json.dumps(entry))
        log.append(entry)
    return head.eval(), log


def score_split(head: MomentHead, plan: HeadPlan, split: str) -> dict | None:
    """SVMR (``data.moment_metrics.svmr_metrics``; the query's video given) of the head and of the
    whole-video baseline over ``split``'s windowed captions; None when it has none."""
    caps = plan.split_queries(split)
    if not len(caps):
        return None
    cap_video = plan.feats.caption_video[torch.as_tensor(caps)].numpy()
    videos = np.unique(cap_video)
    predictor = MomentPredictor.from_features(head, plan.feats, videos, plan.durations[videos])
    found = [per_query[0] for per_query in predictor.moments_each(
        plan.queries(caps).numpy(), [[plan.feats.video_ids[int(v)]] for v in cap_video], SVMR_TOP)]
    truth = [plan.truth[int(q)] for q in caps]
    windows = [np.asarray([m[:2] for m in moments]).reshape(-1, 2) for moments in found]
    scores = [np.asarray([m[2] for m in moments]) for moments in found]
    whole = [np.asarray([[0.0, plan.durations[v]]]) for v in cap_video]
    return {"queries": int(len(caps)), "videos": int(len(videos)), "head": svmr_metrics(windows, scores, truth),
            "whole_video": svmr_metrics(whole, [np.zeros(1)] * len(caps), truth)}


def train_head(plan: HeadPlan | None, folder: Path, *, seed: int, device: torch.device,
               say: Callable[[str], None], progress: ProgressFn | None = None) -> tuple[dict, dict] | None:
    """Train the head of a run (or reuse the one its folder holds) and score it: ``(description for
    config.json, summary for metrics.json)``; None without a plan (no head for this run)."""
    if plan is None:
        return None
    t0 = time.time()
    head = load_head(folder, None, device)
    if head is None:
        meta = plan.meta()
        say(f"moments: training the moment head on {meta['windows']} windows of {meta['captions']} train "
            f"captions ({len(np.unique(plan.train_samples()[1]))} videos)")
        head, log = fit_head(plan, seed, device, say, progress)
        head.meta["train_seconds"] = round(sum(e["seconds"] for e in log), 2)
        save_head(folder, head, log)
    else:
        say(f"moments: {folder / HEAD_FILE} exists; reusing it")
    meta = head.meta
    summary = {"trained": True, "file": HEAD_FILE, "windows": meta["windows"], "captions": meta["captions"],
               "epochs": meta["config"]["epochs"], "train_seconds": meta["train_seconds"],
               "seconds": round(time.time() - t0, 2), "notes": meta["notes"],
               "val": score_split(head, plan, "val"), "test": score_split(head, plan, "test"),
               "random_weights": meta["random_weights"]}
    if meta["random_weights"]:
        summary["WARNING"] = random_weights_label()
    for split in ("val", "test"):
        if summary[split]:
            say(f"moments {split}: SVMR R1@0.5 {summary[split]['head']['R1@0.5']:.1f} (whole video "
                f"{summary[split]['whole_video']['R1@0.5']:.1f}), mIoU {summary[split]['head']['mIoU']:.1f} "
                f"over {summary[split]['queries']} queries")
    return meta, summary


def append_report(folder: Path, summary: dict) -> None:
    """Add the ``Moment head`` section to the run's report.md."""
    report = Path(folder) / "report.md"
    write_text_atomic(report, report.read_text() + _report_section(summary))


def _report_section(summary: dict) -> str:
    lines = ["", "## Moment head", ""]
    if summary.get("WARNING"):
        lines += [f"**{summary['WARNING']}**", ""]
    lines += [f"- trained on {summary['windows']} windows of {summary['captions']} train captions, "
              f"{summary['epochs']} epochs in {summary['train_seconds']} s (`{summary['file']}`)"]
    lines += [f"- {note}" for note in summary["notes"]]
    columns = ["R1@0.3", "R1@0.5", "R1@0.7", "R5@0.5", "mIoU"]
    lines += ["", "| SVMR (video given) | queries | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for split in ("val", "test"):
        if summary[split]:
            for name in ("head", "whole_video"):
                row = summary[split][name]
                lines.append(f"| {split}: {name.replace('_', ' ')} | {summary[split]['queries']} | "
                             + " | ".join(f"{row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines) + "\n"
