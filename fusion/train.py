"""Train a retrieval model on stored features: ``python -m fusion.train --dataset D --model NAME``.

Recipe (docs/methods.md §2): AdamW (lr 1e-4, weight decay 0.2 on matrices, betas 0.9/0.98),
10% linear warm-up then cosine, gradient clipping 1.0, every caption of a training video is a sample.
Seeded and deterministic on CPU: the sample order of each epoch and the random state of each step
are functions of (seed, epoch, step), so a run killed at any point and resumed from its last
checkpoint (``resume.pt``, written every ``train.checkpoint_every`` steps and at each epoch end;
with fp16 on CUDA it holds the loss scaler's state too) ends with the same weights and metrics as an
uninterrupted run. The best epoch is chosen on the
validation split's text-to-video R@1, never on test (with no validation split, ``val_holdout: 0``
as in CLIP4Clip's protocol, the last epoch); the test split is scored once, at the end.

Refused (``ValueError``, exit 2 from the CLI, before the run folder is made): a train split of fewer
than :data:`MIN_TRAIN_VIDEOS` videos. Every loss here contrasts a caption's video with the other
videos of its batch; with one video there is no other, the loss is exactly 0 and nothing is learned.

Writes ``runs/<run-id>/`` (docs/design.md "Contracts", contract C): config.json, log.jsonl,
checkpoint-epoch-NNN.pt, best.pt, resume.pt, metrics.json, curves.png, report.md, and with a moment
head (when the dataset has caption windows) moment_head.pt and moment_log.jsonl
(:mod:`fusion.moments.training`). Features from
random-weight extractors are labelled RANDOM WEIGHTS in every output (``data.provenance``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.atomic import atomic_path, write_json_atomic, write_text_atomic
from data.cli import add_version, guarded
from data.devices import resolve_device
from data.metrics import evaluate_scores
from data.progress import Bars, ProgressEvent, ProgressFn
from data.provenance import random_weights_label
from data.settings import Settings, get_settings
from fusion.config import load_config
from fusion.encoding import encode_texts, encode_videos, score_matrix
from fusion.factory import build_model, modalities_for
from fusion.features import DatasetFeatures, load_features
from fusion.moments.plan import plan_head
from fusion.moments.training import append_report, train_head
from fusion.registry import model_entry, model_names


MIN_TRAIN_VIDEOS = 2   # fewer: no other video in any batch, every loss is 0 (module docstring)


def check_train_split(feats: DatasetFeatures) -> None:
    """``ValueError`` naming the train split's videos and captions when it has fewer than
    :data:`MIN_TRAIN_VIDEOS` videos."""
    n_videos = len(feats.splits.get("train", ()))
    if n_videos >= MIN_TRAIN_VIDEOS:
        return
    n_captions = len(feats.split_captions("train")) if n_videos else 0
    raise ValueError(f"dataset {feats.dataset!r}: the train split has {n_videos} video(s) and {n_captions} "
                     f"caption(s); training needs at least {MIN_TRAIN_VIDEOS} videos (the loss contrasts each "
                     f"caption's video with the other videos of its batch: with one it is 0 and nothing is "
                     f"learned); add videos to the train split, or evaluate the zero-shot model")


def autocast(device: torch.device, precision: str):
    """Mixed precision for the forward pass and loss (``train.precision``); fp32 = none."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("train.precision fp16 needs a CUDA device (use bf16 on the CPU)")
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16's loss scaler on CUDA (its state is part of ``resume.pt``); None otherwise."""
    return torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None


def _step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 10_007 + step) % (2 ** 63)


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(_step_seed(seed, epoch, 999_983)))


def lr_factor(step: int, total: int, warmup: float) -> float:
    """Linear warm-up over ``warmup * total`` steps, then cosine decay to 0."""
    w = max(1, int(round(warmup * total)))
    if step < w:
        return (step + 1) / w
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - w) / max(1, total - w))))


def make_optimizer(model: torch.nn.Module, train: dict) -> torch.optim.AdamW:
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2 and "pos" not in n]
    other = [p for n, p in model.named_parameters() if p.requires_grad and not (p.dim() >= 2 and "pos" not in n)]
    groups = [{"params": decay, "weight_decay": train["weight_decay"]}, {"params": other, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=train["lr"], betas=tuple(train["betas"]))


def evaluate(model, feats: DatasetFeatures, split: str, config: dict, device, captions: str = "all",
             fit: bool = False) -> dict:
    """Metrics of ``split`` (every caption a query); ``fit`` first fits validation-chosen weights."""
    videos = feats.split_videos(split)
    caps = feats.split_captions(split, captions)
    batch = config["train"]["eval_batch"]
    v_enc = encode_videos(model, feats, videos, config, device, batch)
    t_enc = encode_texts(model, feats, caps, config, device, batch)
    local = {int(v): i for i, v in enumerate(videos)}
    query_video = np.asarray([local[int(v)] for v in feats.caption_video[caps]])
    fitted = {}
    if fit:
        positives = torch.as_tensor(query_video)[:, None] == torch.arange(len(videos))[None]
        fitted = model.fit_on_validation(t_enc, v_enc, positives)
    scores = np.asarray(score_matrix(model, t_enc, v_enc), np.float64)
    ids = [str(i) for i in range(len(videos))]
    result = evaluate_scores(scores, [ids[q] for q in query_video], ids)  # the one metric definition
    listed_videos, listed_queries = feats.listed_counts(split, captions)
    out = {"t2v": result["t2v"], "v2t": result["v2t"], "RSum": result["RSum"],
           "ties": f"ties: {result['protocol']['ties']}",
           "v2t_protocol": f"video-to-text protocol: {result['protocol']['v2t']}",
           "split": split, "n_videos": len(videos), "n_queries": len(caps),
           "n_videos_listed": listed_videos, "n_queries_listed": listed_queries}
    if fitted:
        out["fitted_on_validation"] = fitted
    return out


def assemble_batch(feats: DatasetFeatures, caps: np.ndarray, config: dict, model, epoch: int,
                   gen: torch.Generator, device) -> dict:
    """One training batch: B captions, their V distinct videos, positives ``[B, V]``, ``pair_video`` ``[B]``."""
    videos, pair_video = torch.unique(feats.caption_video[caps], return_inverse=True)
    sampling = config["frame_sampling"]
    out = {"text": feats.text_batch(caps, config["max_words"], eot_only=not model.needs_tokens).to(device),
           "positives": (pair_video[:, None] == torch.arange(len(videos))[None]).to(device),
           "pair_video": pair_video.to(device), "second_view": None}
    if model.wants_second_view(epoch):
        first, second = feats.video_views(videos, config["max_frames"], sampling, gen)
        out["video"], out["second_view"] = first.to(device), second.to(device)
    else:
        out["video"] = feats.video_batch(videos, config["max_frames"], sampling, gen).to(device)
    return out


def train_step(model, optimizer, scheduler, inputs: dict, epoch: int, grad_clip: float,
               precision: str = "fp32", scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """Forward (under ``precision`` autocast), backward, clip, step; returns the loss parts.
    ``scaler``: fp16's loss scaling (CUDA)."""
    device = inputs["video"].frames.device
    with autocast(device, precision):
        loss, parts = model.loss(inputs["text"], inputs["video"], inputs["positives"], inputs["pair_video"],
                                 epoch=epoch, second_view=inputs["second_view"])
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    model.after_step()
    scheduler.step()
    return parts


class Run:
    """A run folder and its resumable state."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.state_path = folder / "resume.pt"

    def save_state(self, state: dict) -> None:
        with atomic_path(self.state_path) as tmp:
            torch.save(state, tmp)

    def load_state(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        return torch.load(self.state_path, map_location="cpu", weights_only=True)

    def save_weights(self, name: str, model: torch.nn.Module, epoch: int, extra: dict) -> None:
        with atomic_path(self.folder / name) as tmp:
            torch.save({"model": model.state_dict(), "epoch": epoch, **extra}, tmp)


def train(dataset: str, model_name: str, *, config_file: str | Path | None = None, overrides=(),
          seed: int = 0, epochs: int | None = None, run_id: str | None = None,
          settings: Settings | None = None, threads: int | None = None, quiet: bool = False,
          progress: ProgressFn | None = None, on_epoch: Callable[[dict], None] | None = None,
          device: str | None = None) -> Path:
    """Train (or resume) one run on ``device`` (default ``settings.device``: ``$TVR_DEVICE``, ``auto``
    = CUDA when present); returns its folder. See the module docstring.

    ``progress`` gets a step event per training step (task ``epoch E/N``, info: the epoch's mean
    loss so far); ``on_epoch`` gets each epoch's log entry (as written to ``log.jsonl``)."""
    settings = settings or get_settings()
    config = load_config(model_name, config_file, list(overrides))
    if epochs is not None:
        config["train"]["epochs"] = int(epochs)
    if threads:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    device = resolve_device(device or settings.device)
    feats = load_features(dataset, modalities_for(config), extractors=config["extractors"], settings=settings,
                          val_holdout=config["val_holdout"])
    if model_entry(model_name).trained and config["train"]["epochs"] > 0:
        check_train_split(feats)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    moment_plan = plan_head(config, dataset, settings, say)   # the moment head's windows (None: no head)
    width = int(feats.frames.flat.shape[1])
    run_id = run_id or f"{dataset}-{model_name}-s{seed}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    run = Run(settings.runs_dir / run_id)
    run.folder.mkdir(parents=True, exist_ok=True)
    meta = {"run_id": run_id, "model": model_name, "config": config, "dataset": dataset, "seed": seed,
            "width": width, "extractor_ids": feats.extractor_ids, "random_weights": feats.random_weights,
            "device": str(device), "load_notes": feats.notes or []}
    if feats.random_weights:
        meta["WARNING"] = random_weights_label()
    previous = run.folder / "config.json"
    if previous.is_file():
        old = json.loads(previous.read_text())
        if {k: old.get(k) for k in ("model", "config", "dataset", "seed", "extractor_ids")} != \
                {k: meta[k] for k in ("model", "config", "dataset", "seed", "extractor_ids")}:
            raise ValueError(f"{previous}: a run with another configuration already lives here; "
                             f"choose another --run-id")
    write_json_atomic(previous, meta)
    if feats.random_weights:
        say(random_weights_label())

    torch.manual_seed(seed)
    model = build_model(config, width)
    model.fit_input_statistics(feats.input_statistics("train"))
    model = model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    tc = config["train"]
    if not model_entry(model_name).trained or not trainable:
        tc["epochs"] = 0
    train_caps = feats.split_captions("train")
    has_val = len(feats.splits.get("val", ())) > 0
    batch = min(tc["batch_size"], len(train_caps))
    steps_per_epoch = max(1, len(train_caps) // batch) if len(train_caps) > 1 else 0
    total = steps_per_epoch * tc["epochs"]
    optimizer = make_optimizer(model, tc) if trainable else None
    scheduler = (torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, tc["warmup"]))
                 if optimizer else None)

    scaler = make_scaler(tc["precision"], device)
    state = run.load_state()
    history: list[dict] = []
    epoch, step, best = 0, 0, {"epoch": -1, "val_R@1": -1.0}
    sums: dict[str, float] = {}   # running sums of the loss parts within the current epoch
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, step = state["epoch"], state["step"]
        history, best, sums = (json.loads(state[k]) for k in ("history", "best", "sums"))
        say(f"resuming {run_id} at epoch {epoch} step {step}")
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        elif scaler is not None:
            say(f"{run.state_path} holds no loss-scaler state (written without fp16 or by an older version): "
                f"the fp16 loss scale starts afresh")

    def save_state():
        run.save_state({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "step": step,
                        "history": json.dumps(history), "best": json.dumps(best), "sums": json.dumps(sums),
                        **({"scaler": scaler.state_dict()} if scaler is not None else {})})

    while epoch < tc["epochs"]:
        order = epoch_order(len(train_caps), seed, epoch)
        model.train()
        t0 = time.time()
        while step < steps_per_epoch:
            torch.manual_seed(_step_seed(seed, epoch, step))
            gen = torch.Generator().manual_seed(_step_seed(seed, epoch, step) + 1)
            caps = train_caps[order[step * batch:(step + 1) * batch].numpy()]
            inputs = assemble_batch(feats, caps, config, model, epoch, gen, device)
            parts = train_step(model, optimizer, scheduler, inputs, epoch, tc["grad_clip"], tc["precision"], scaler)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            step += 1
            if progress:
                progress(ProgressEvent(f"epoch {epoch + 1}/{tc['epochs']}", step, steps_per_epoch, "step",
                                       {"loss": sums.get("loss", 0.0) / step}))
            if step % tc["checkpoint_every"] == 0 and step < steps_per_epoch:
                save_state()
        val = evaluate(model, feats, "val", config, device, fit=True) if has_val else None
        entry = {"epoch": epoch, "steps": steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                 **{k: v / steps_per_epoch for k, v in sums.items()},
                 "val_t2v_R@1": val["t2v"]["R@1"] if val else None, "val_v2t_R@1": val["v2t"]["R@1"] if val else None,
                 "seconds": round(time.time() - t0, 2)}
        if val and "fitted_on_validation" in val:
            entry["fitted_on_validation"] = val["fitted_on_validation"]
        if feats.random_weights:
            entry["WARNING"] = random_weights_label(detail=False)
        if model.wants_second_view(epoch) and not sums.get("extra_positives", 0.0):
            entry["denoising_warning"] = (f"epoch {epoch}: label denoising mined no extra positive in any "
                                          f"batch (extra_positives = 0): it changed nothing this epoch")
            warnings.warn(entry["denoising_warning"], RuntimeWarning, stacklevel=2)
        history.append(entry)
        say(json.dumps(entry))
        if on_epoch:
            on_epoch(entry)
        extra = {"val": val["t2v"] if val else None, "random_weights": feats.random_weights}
        run.save_weights(f"checkpoint-epoch-{epoch:03d}.pt", model, epoch, extra)
        if not val or val["t2v"]["R@1"] > best["val_R@1"]:       # no validation split: the last epoch
            best = {"epoch": epoch, "val_R@1": val["t2v"]["R@1"] if val else None}
            run.save_weights("best.pt", model, epoch, extra)
        write_text_atomic(run.folder / "log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        epoch, step, sums = epoch + 1, 0, {}
        save_state()

    if best["epoch"] >= 0:
        model.load_state_dict(torch.load(run.folder / "best.pt", map_location=device, weights_only=True)["model"])
    else:  # nothing to train (zero-shot): the initial model is the model
        run.save_weights("best.pt", model, -1, {"random_weights": feats.random_weights})
        write_text_atomic(run.folder / "log.jsonl", "")
    val = evaluate(model, feats, "val", config, device, fit=True) if has_val else None
    test = evaluate(model, feats, "test", config, device)
    selected_on = ("validation text-to-video R@1" if has_val else
                   "last epoch (no validation split: val_holdout 0 and none in the manifest)")
    metrics = {"run_id": run_id, "model": model_name, "dataset": dataset, "seed": seed, "best_epoch": best["epoch"],
               "selected_on": selected_on, "val": val, "test": test,
               "extractor_ids": feats.extractor_ids, "random_weights": feats.random_weights}
    if feats.random_weights:
        metrics["WARNING"] = random_weights_label()
    head = train_head(moment_plan, run.folder, seed=seed, device=device, say=say, progress=progress)
    if head:
        meta["moment_head"], metrics["moments"] = head
        write_json_atomic(previous, meta)
    write_json_atomic(run.folder / "metrics.json", metrics)
    from fusion.report import write_report
    write_report(run.folder, meta, history, metrics)
    if head:
        append_report(run.folder, metrics["moments"])
    say(f"run {run_id}: test t2v R@1 {test['t2v']['R@1']:.1f}, v2t R@1 {test['v2t']['R@1']:.1f} -> {run.folder}")
    return run.folder


@guarded(FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion.train", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name (its manifest and features must exist)")
    p.add_argument("--model", required=True, choices=model_names(), help="model to train")
    p.add_argument("--config", help="YAML file of options over fusion/configs/<model>.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one option, e.g. --set branches=[V,AV] --set train.batch_size=64")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, help="override train.epochs")
    p.add_argument("--run-id", help="run folder name under runs/ (an existing one is resumed)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N (default $TVR_DEVICE, else auto)")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="autocast for forward and loss (sets train.precision; fp16 needs CUDA, with loss scaling)")
    add_version(p)
    args = p.parse_args(argv)
    overrides = args.set + ([f"train.precision={args.precision}"] if args.precision else [])
    with Bars.for_cli() as bars:
        train(args.dataset, args.model, config_file=args.config, overrides=overrides, seed=args.seed,
              epochs=args.epochs, run_id=args.run_id, threads=args.threads, progress=bars,
              device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
