"""Peak memory and step time of one training epoch on GENERATED MSR-VTT-sized feature stores.

    python -m bench.train_memory [--scales 0.1,0.3,1.0] [--models m2hf,hcmi] [--home DIR]

For each scale s it writes, through the real store writer (``data.store.FeatureSet.write_shard``,
so the real readers read it), a feature store of s x MSR-VTT: 10,000 videos of 10-20 s (mean 15 s,
MSR-VTT's is 14.8 s), 20 captions each, split 9:1 into train and test like 1k-A (validation held
out of train by ``val_holdout``), with the default extractors' shapes: ``clip_frames`` 512-d at
1 fps, ``clip_text`` 512-d tokens SOT..EOT (8-16 per caption, mean 12), ``audio`` 128-d per 0.96 s
window (a quarter of the videos without an audio stream), ``motion`` 2304-d per 32-frame clip of a
15 fps stream (2.13 s). The values are random numbers: GENERATED features, RANDOM WEIGHTS (no video,
no extractor); they measure the loader, not retrieval.

Then each measurement runs in a child process while this one samples the child's ``RssAnon`` and
``RssFile`` (``/proc/<pid>/status``) every 20 ms: first the one-time cache build
(:mod:`fusion.featurecache`), then per model and loader one epoch as ``fusion.train`` runs it
(``load_features``, the training input statistics, every step of epoch 0: ``assemble_batch`` +
``train_step``), followed by an index pass (``fusion.api.video_vector_batches`` over every video).
``RssAnon`` is the process's own memory; the mapped features' pages are ``RssFile`` (page cache,
shared and dropped by the kernel under pressure). Loaders: ``mapped`` (the default) and
``in-memory`` (the same code with ``in_memory=True``), the latter only while the features fit
``--in-memory-max-gb``. Models run at the fast profile of the synthetic ablation (``--set`` adds
overrides; ``--set width=null --set frame_layers=4`` for the full model); ``--max-steps N`` times
only the first N steps of each epoch (the table then projects the epoch from the step time).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from data.manifest import VideoRecord, build_manifest, write_manifest
from data.modalities import AUDIO, CLIP_FRAMES, CLIP_TEXT, MOTION
from data.provenance import random_weights_label
from data.settings import Settings, get_settings
from data.store import ExtractorSpec, FeatureRow, FeatureSet

ROOT = Path(__file__).resolve().parents[1]
DATASET = "generated-msrvtt"
FULL = {"videos": 10_000, "captions_per_video": 20}
DIMS = {CLIP_FRAMES: 512, CLIP_TEXT: 512, AUDIO: 128, MOTION: 2304}
EXTRA = {CLIP_TEXT: {"caption_index": pa.int32(), "eot_index": pa.int32(), "caption": pa.string()},
         AUDIO: {"has_audio": pa.bool_()}}
AUDIO_S, MOTION_S = 0.96, 32 / 15          # VGGish window; SlowFast clip of 32 frames at 15 fps
DEFAULT_SET = ["width=128", "frame_layers=1"]   # the synthetic ablation's fast profile (2 CPU cores)
LABEL = (f"{random_weights_label(detail=False)} / GENERATED features: random arrays with the default "
         f"extractors' shapes (no video, no extractor); they measure the loader, not retrieval")


def write_store(settings: Settings, n_videos: int, captions: int, seed: int = 0) -> None:
    """A generated store of ``n_videos`` videos (see the module doc), written shard by shard."""
    rng = np.random.default_rng(seed)
    sets = {}
    for modality, dim in DIMS.items():
        spec = ExtractorSpec(modality, dim, {"model": f"generated-{modality}", "weights": "random", "seed": seed,
                                             "code_version": "bench.train_memory"}, True, EXTRA.get(modality, {}),
                             "captions" if modality == CLIP_TEXT else "file")
        sets[modality] = FeatureSet(settings.feature_dir(DATASET, modality, spec.extractor_id), spec)
        sets[modality].prepare()
    n_test = max(1, round(0.1 * n_videos))
    records = []
    for start in range(0, n_videos, settings.shard_size):
        rows = {m: [] for m in DIMS}
        for i in range(start, min(start + settings.shard_size, n_videos)):
            vid, duration = f"video{i:05d}", float(rng.uniform(10, 20))
            caps = [f"generated caption {c} of video{i:05d}" for c in range(captions)]
            records.append(VideoRecord(vid, f"videos/{vid}.mp4", "test" if i >= n_videos - n_test else "train",
                                       caps, duration))
            rows[CLIP_FRAMES].append(_row(rng, vid, CLIP_FRAMES, int(duration), 1.0, 0.5))
            audio = rng.random() >= 0.25
            rows[AUDIO].append(_row(rng, vid, AUDIO, int(duration / AUDIO_S) if audio else 0, AUDIO_S, 0.0,
                                    status="ok" if audio else "empty", has_audio=audio))
            rows[MOTION].append(_row(rng, vid, MOTION, max(1, int(duration / MOTION_S)), MOTION_S, MOTION_S / 2))
            for c, text in enumerate(caps):
                tokens = int(rng.integers(8, 17))
                rows[CLIP_TEXT].append(_row(rng, vid, CLIP_TEXT, tokens, None, 0.0, caption_index=c,
                                            eot_index=tokens - 1, caption=text))
        for modality, fs in sets.items():
            fs.write_shard(rows[modality])
    table, _ = build_manifest(records, settings.dataset_dir(DATASET) / "videos", dataset=DATASET)
    write_manifest(table, settings.manifest_path(DATASET))


def _row(rng, vid: str, modality: str, steps: int, step_s: float | None, first_s: float,
         status: str = "ok", **extra) -> FeatureRow:
    values = rng.standard_normal((steps, DIMS[modality]), dtype=np.float32)
    times = np.zeros(0) if step_s is None else first_s + step_s * np.arange(steps)
    return FeatureRow(vid, values, times, status, extra=extra)


def folder_bytes(settings: Settings, cache: bool) -> int:
    """Bytes of the generated store's shards (``cache=False``) or of their caches (``cache=True``)."""
    total = 0
    for path in (settings.features_dir / DATASET).rglob("*"):
        if path.is_file() and ("_cache" in path.parts) == cache:
            total += path.stat().st_size
    return total


# ---- the child: one measured process -----------------------------------------------------------
def child(spec: dict) -> dict:
    """Run one measurement (``spec["mode"]``: ``build``, ``mapped`` or ``in-memory``); returns timings."""
    import torch

    from fusion.api import video_vector_batches
    from fusion.config import load_config
    from fusion.factory import build_model, modalities_for
    from fusion.features import load_features
    from fusion.loaded import LoadedModel
    from fusion.train import assemble_batch, epoch_order, lr_factor, make_optimizer, train_step

    torch.set_num_threads(spec["threads"])
    settings = get_settings(spec["home"])
    start = time.perf_counter()
    if spec["mode"] == "build":
        load_features(DATASET, (AUDIO, MOTION), settings=settings)
        return {"load_s": time.perf_counter() - start}
    config = load_config(spec["model"], overrides=spec["set"])
    feats = load_features(DATASET, modalities_for(config), settings=settings, val_holdout=config["val_holdout"],
                          in_memory=spec["mode"] == "in-memory")
    load_s = time.perf_counter() - start
    torch.manual_seed(0)
    model = build_model(config, int(feats.frames.flat.shape[1]))
    model.fit_input_statistics(feats.input_statistics("train"))
    tc, cpu = config["train"], torch.device("cpu")
    caps = feats.split_captions("train")
    batch = min(tc["batch_size"], len(caps))
    steps = max(1, len(caps) // batch)
    optimizer = make_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, tc["warmup"]))
    order = epoch_order(len(caps), 0, 0)
    model.train()
    epoch_start, data_s = time.perf_counter(), 0.0
    run = min(steps, spec["max_steps"] or steps)
    for step in range(run):
        torch.manual_seed(step)
        t0 = time.perf_counter()
        inputs = assemble_batch(feats, caps[order[step * batch:(step + 1) * batch].numpy()], config, model, 0,
                                torch.Generator().manual_seed(step), cpu)
        data_s += time.perf_counter() - t0
        train_step(model, optimizer, scheduler, inputs, 0, tc["grad_clip"])
    epoch_s = time.perf_counter() - epoch_start
    loaded = LoadedModel(model.eval(), spec["model"], config, None, DATASET, feats.extractor_ids, True,
                         model.fine_grained)
    index_start = time.perf_counter()
    ids, vectors = video_vector_batches(loaded, DATASET, sorted(feats.splits), settings=settings)
    indexed = sum(len(v) for v in vectors)
    return {"load_s": load_s, "epoch_s": epoch_s, "steps": steps, "run": run, "batch": batch,
            "step_ms": 1000 * epoch_s / run, "data_ms": 1000 * data_s / run, "index_s": time.perf_counter() - index_start,
            "indexed": indexed, "videos": len(ids)}


def measure(spec: dict) -> dict:
    """Run :func:`child` in a child process, sampling its RssAnon / RssFile; its result + the peaks."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.train_memory", "--child", json.dumps(spec)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except OSError:
                return
            for line in status.splitlines():
                key, _, value = line.partition(":")
                if key in peak:
                    peak[key] = max(peak[key], int(value.split()[0]) * 1024)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"measurement {spec['mode']} {spec.get('model', '')} failed:\n{err[-3000:]}")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_anon": peak["RssAnon"], "peak_file": peak["RssFile"]}


# ---- the parent: stores, measurements, table ---------------------------------------------------
def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def machine() -> str:
    mem = next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
    return f"{os.cpu_count()} CPU cores, {int(mem) / 2**20:.1f} GiB memory, load average {os.getloadavg()[0]:.1f}"


def run_scale(scale: float, args, home: Path) -> tuple[dict, list[dict]]:
    settings = get_settings(home / f"scale-{scale:g}")
    n_videos = max(2, round(FULL["videos"] * scale))
    start = time.perf_counter()
    write_store(settings, n_videos, FULL["captions_per_video"])
    store = {"scale": scale, "videos": n_videos, "captions": n_videos * FULL["captions_per_video"],
             "write_s": time.perf_counter() - start, "store_bytes": folder_bytes(settings, cache=False)}
    base = {"home": str(settings.root), "threads": args.threads, "set": DEFAULT_SET + args.set,
            "max_steps": args.max_steps}
    built = measure({**base, "mode": "build"})
    store.update(build_s=built["load_s"], build_peak_anon=built["peak_anon"], cache_bytes=folder_bytes(settings, True))
    print(f"scale {scale:g}: store {gib(store['store_bytes'])} written in {store['write_s']:.0f} s, cache "
          f"{gib(store['cache_bytes'])} built in {store['build_s']:.0f} s", file=sys.stderr, flush=True)
    rows = []
    for model in args.models:
        for mode in ("mapped", "in-memory"):
            row = {"scale": scale, "model": model, "loader": mode}
            if mode == "in-memory" and store["cache_bytes"] > args.in_memory_max_gb * 2**30:
                row["skipped"] = f"features {gib(store['cache_bytes'])} > --in-memory-max-gb {args.in_memory_max_gb:g}"
            else:
                row.update(measure({**base, "mode": mode, "model": model}))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if not args.keep:
        shutil.rmtree(settings.root)
    return store, rows


def table(stores: list[dict], rows: list[dict]) -> str:
    lines = ["| scale | videos | captions | store on disk | written in | cache on disk | cache built in | build peak RssAnon |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['scale']:g} | {s['videos']:,} | {s['captions']:,} | {gib(s['store_bytes'])} | {s['write_s']:.0f} s | "
              f"{gib(s['cache_bytes'])} | {s['build_s']:.0f} s | {gib(s['build_peak_anon'])} |" for s in stores]
    lines += ["", "| scale | model | loader | peak RssAnon | peak RssFile | load | epoch | steps x batch | step | "
              "of which data | step vs in-memory | index pass |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    memory = {(r["scale"], r["model"]): r for r in rows if r["loader"] == "in-memory" and "skipped" not in r}
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['scale']:g} | {r['model']} | {r['loader']} | skipped: {r['skipped']} |||||||||")
            continue
        ref = memory.get((r["scale"], r["model"]))
        ratio = f"{r['step_ms'] / ref['step_ms']:.2f}x" if ref and r["loader"] == "mapped" else ""
        epoch = (f"{r['epoch_s']:.0f} s" if r["run"] == r["steps"] else
                 f"{r['epoch_s']:.0f} s for {r['run']} steps (~{r['step_ms'] * r['steps'] / 1000:.0f} s)")
        lines.append(f"| {r['scale']:g} | {r['model']} | {r['loader']} | {gib(r['peak_anon'])} | {gib(r['peak_file'])} | "
                     f"{r['load_s']:.1f} s | {epoch} | {r['steps']} x {r['batch']} | {r['step_ms']:.0f} ms | "
                     f"{r['data_ms']:.1f} ms | {ratio} | {r['index_s']:.1f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_memory", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scales", default="0.1,0.3,1.0", help="fractions of MSR-VTT's size, comma-separated")
    p.add_argument("--models", default="m2hf,hcmi", help="models to train, comma-separated")
    p.add_argument("--home", type=Path, help="folder for the generated stores (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the generated stores (default: delete each after use)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"model option over the bench profile {' '.join(DEFAULT_SET)}")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads per measurement")
    p.add_argument("--max-steps", type=int, help="stop each epoch after this many steps (default: the whole epoch)")
    p.add_argument("--in-memory-max-gb", type=float, default=4.0,
                   help="run the in-memory loader only while the features take at most this many GiB")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0
    args.models = [m for m in args.models.split(",") if m]
    home = args.home or Path(tempfile.mkdtemp(prefix="tvr-train-memory-"))
    print(f"!!! {LABEL} !!!", flush=True)
    started, before = time.perf_counter(), machine()
    stores, rows = [], []
    for scale in (float(s) for s in args.scales.split(",") if s):
        store, scale_rows = run_scale(scale, args, home)
        stores.append(store)
        rows += scale_rows
    print(f"\n{LABEL}\n{before} at the start; {args.threads} torch threads; models at "
          f"{' '.join(DEFAULT_SET + args.set)}; {time.perf_counter() - started:.0f} s in all\n")
    print(table(stores, rows))
    if args.json:
        args.json.write_text(json.dumps({"label": LABEL, "machine": before, "stores": stores, "rows": rows}, indent=2))
    if not args.home:
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
