"""Extraction throughput: decode-only, model-only and end-to-end, side by side in one run.

``python -m bench.extract [--n 24] [--modalities clip_frames,audio] [--threads 2]``
``python -m bench.extract --resolution 1080p --n 3 --seconds 20 --modalities clip_frames --decode exact,fast``

Videos: ``--resolution synthetic`` (default) uses the synthetic-av dataset (data.synthetic, mostly
320x240, 2-6 s); ``720p`` / ``1080p`` generate H.264 + AAC clips with FFmpeg (lavfi ``testsrc2``,
moving, 30 fps; a GOP of 2, 3, 4 or 5 s by clip; 3 B-frames; a sine tone), cached in ``--videos``.
For each modality alone and all together, and for each ``--decode`` mode (``exact`` = every frame
in one slice thread, the path before the fast one; ``fast`` = non-reference frames skipped and
decoder threads) and each ``--workers`` count, it measures, interleaved (best of ``--repeats``):

- decode-only: every video decoded for what the modalities ask (no model);
- model-only: the extractors fed videos decoded beforehand (input preparation, batching, forward);
- end-to-end: ``extractors.runner.extract_shard`` into a fresh store (decode in background threads,
  batching, encode, Parquet write);

and prints per line videos/s, units/s, seconds of video per second, the ratio end-to-end /
model-only (1.0 = decoding fully hidden behind the model), the CPU seconds of decoding and of the
model, and ``busy`` = ((decode CPU + model CPU) / cores) / end-to-end wall (1.0 = every core
busy all the time), and the frames the decoder produced. With ``clip_frames`` in both modes, the per-frame cosine similarity of the
CLIP features of the fast path's frames against the exact path's is printed. Weights are random
(seeded); throughput does not depend on their values.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from data import synthetic
from data.prepare import prepare
from data.settings import Settings, get_settings
from data.modalities import CLIP_FRAMES, MODALITIES, MOTION
from data.provenance import RANDOM_WEIGHTS
from extractors.base import VideoItem
from extractors.config import ExtractConfig
from extractors.decode import decode_video
from extractors.plan import load_manifest, plan_shards
from extractors.reader import merged_request
from extractors.registry import DEFAULT_MODELS
from extractors.runner import extract_shard

RESOLUTIONS = {"720p": (1280, 720), "1080p": (1920, 1080)}


def cpu_seconds() -> float:
    """CPU time of this process, all threads (user + system)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


@dataclass
class Timing:
    seconds: float
    cpu: float
    videos: int
    units: int
    video_s: float

    def line(self) -> str:
        return (f"{self.videos / self.seconds:6.2f} v/s {self.units / self.seconds:7.1f} u/s "
                f"{self.video_s / self.seconds:6.1f} s/s ({self.seconds:.2f} s)")


def timed(run, videos: int, units: int, video_s: float) -> Timing:
    start, cpu = time.perf_counter(), cpu_seconds()
    run()
    return Timing(time.perf_counter() - start, cpu_seconds() - cpu, videos, units, video_s)


def best(timings: list[Timing]) -> Timing:
    return min(timings, key=lambda t: t.seconds)


def model_only(config: ExtractConfig, items: list) -> None:
    """The extractors' own path (input preparation, batching, forward passes) on pre-decoded videos."""
    extractors = config.build()
    for item in items:
        for e in extractors:
            e.push(item)
    for e in extractors:
        e.flush()


def decode_only(config: ExtractConfig, manifest) -> int:
    """Decode every video for what ``config`` asks; returns the number of frames the decoder produced."""
    request = replace(merged_request(config.build()), options=config.decode_options())
    return sum(decode_video(manifest.abs_path(r.path), request).frames_decoded for r in manifest.records())


def end_to_end(dataset: str, config: ExtractConfig, ids: list[str], home: Settings, root: Path) -> None:
    """The real shard extraction into an empty store under ``root`` (manifest copied from ``home``)."""
    settings = get_settings(root)
    settings.manifest_path(dataset).parent.mkdir(parents=True)
    shutil.copy(home.manifest_path(dataset), settings.manifest_path(dataset))
    plan_shards(dataset, config, shard_size=len(ids), settings=settings)
    counts = extract_shard(dataset, ids, config, settings=settings, progress=lambda _: None)
    failed = {m: c.failed for m, c in counts.items() if c.failed}
    if failed:
        raise RuntimeError(f"benchmark videos failed to extract: {failed}")


def real_resolution_clips(folder: Path, resolution: str, n: int, seconds: float) -> Path:
    """``n`` H.264 + AAC clips at ``resolution``, 30 fps, GOP 2-5 s, 3 B-frames; returns the annotations."""
    import subprocess

    import imageio_ffmpeg

    width, height = RESOLUTIONS[resolution]
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for k in range(n):
        name = f"{resolution}-{seconds:g}s-{k}.mp4"
        gop_s = 2 + k % 4
        if not (folder / name).is_file():
            tmp = folder / f".{name}"
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y",
                            "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=30:duration={seconds}",
                            "-f", "lavfi", "-i", f"sine=frequency={220 * (k + 1)}:sample_rate=48000:duration={seconds}",
                            "-c:v", "libx264", "-preset", "veryfast", "-g", str(30 * gop_s), "-bf", "3",
                            "-pix_fmt", "yuv420p", "-c:a", "aac", "-f", "mp4", str(tmp)], check=True)
            tmp.rename(folder / name)
        lines.append(json.dumps({"video_id": f"clip{k}", "video": name, "split": "test", "duration_s": seconds,
                                 "captions": [f"a {resolution} test pattern number {k}"]}))
    ann = folder / f"annotations-{resolution}-{n}-{seconds:g}.jsonl"
    ann.write_text("\n".join(lines) + "\n")
    return ann


def cosine_fast_vs_exact(config: ExtractConfig, manifest) -> np.ndarray:
    """Per-frame cosine similarity of CLIP features: fast path's frames vs the exact path's."""
    (clip,) = ExtractConfig(modalities=(CLIP_FRAMES,), models=config.models, device=config.device).build()
    sims = []
    for r in manifest.records():
        feats = []
        for mode in ("exact", "fast"):
            request = replace(clip.request, options=replace(config.decode_options(), mode=mode))
            item = VideoItem(r, decode_video(manifest.abs_path(r.path), request))
            (row,) = clip.push(item) + clip.flush()
            feats.append(torch.nn.functional.normalize(torch.from_numpy(row.values), dim=1))
        if feats[0].shape != feats[1].shape:
            raise RuntimeError(f"{r.video_id}: fast and exact paths sampled different frame counts")
        sims.append((feats[0] * feats[1]).sum(1).numpy())
    return np.concatenate(sims)


def _container_seconds(path) -> float:
    import av

    with av.open(str(path)) as container:
        return container.duration / 1e6 if container.duration else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__.split("\n\n")[0])
    p.add_argument("--resolution", default="synthetic", choices=["synthetic", *RESOLUTIONS],
                   help="synthetic-av dataset (default) or generated 720p / 1080p clips")
    p.add_argument("--n", type=int, default=None, help="videos (default 24 synthetic, 3 at 720p/1080p)")
    p.add_argument("--seconds", type=float, default=20.0, help="length of each 720p/1080p clip (default 20)")
    p.add_argument("--modalities", default="clip_frames,audio,motion,clip_text",
                   help=f"comma-separated subset of {','.join(MODALITIES)}")
    p.add_argument("--decode", default="fast", help="comma-separated decode modes to compare: exact, fast")
    p.add_argument("--workers", default="1", help="comma-separated decode worker counts for the fast mode")
    p.add_argument("--clip-model", default=DEFAULT_MODELS[CLIP_FRAMES], help="open_clip model (default %(default)s)")
    p.add_argument("--motion-size", type=int, default=128, help="SlowFast crop side (default 128)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    p.add_argument("--no-groups", action="store_true", help="each modality alone only, not all together")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--videos", default=None, help="folder for the generated videos (default: a temp folder)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    modes = [m.strip() for m in args.decode.split(",") if m.strip()]
    workers = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory(prefix="tvr-bench-") as tmp:
        tmp = Path(tmp)
        videos = Path(args.videos) if args.videos else tmp / "videos"
        if args.resolution == "synthetic":
            n = args.n or 24
            ann = synthetic.generate(videos, n=n, seed=1, n_test=max(1, n // 4), n_val=1, progress=False)
        else:
            ann = real_resolution_clips(videos, args.resolution, args.n or 3, args.seconds)
        home = get_settings(tmp / "home")
        prepare("synthetic", ann, videos, name="bench", settings=home)  # both write the same JSON lines
        manifest = load_manifest("bench", home)
        ids = manifest.video_ids
        video_s = sum(_container_seconds(manifest.abs_path(r.path)) for r in manifest.records())

        def config(mods, mode="fast", n_workers=1) -> ExtractConfig:
            return ExtractConfig(modalities=tuple(mods), models={CLIP_FRAMES: args.clip_model},
                                 options={MOTION: {"size": args.motion_size}}, device=args.device,
                                 decode=mode, decode_workers=n_workers)

        variants = [(mode, w) for mode in modes for w in (workers if mode == "fast" else [1])]
        groups = [[m] for m in modalities] + ([modalities] if len(modalities) > 1 and not args.no_groups else [])
        cores = os.cpu_count() or 1
        print(f"{len(ids)} {args.resolution} videos ({video_s:.0f} s of video), {cores} cores, torch threads "
              f"{torch.get_num_threads()}, device {config(modalities).build()[0].device}, clip model "
              f"{args.clip_model}, {RANDOM_WEIGHTS}; load average {os.getloadavg()[0]:.1f}")
        print("v/s = videos/s, u/s = units/s (frames, captions, 0.96 s windows, clips), s/s = seconds of video "
              "per second; cpu = CPU seconds; busy = ((decode cpu + model cpu) / cores) / end-to-end wall")
        print(f"{'modalities':<28} {'decode':<9} {'decode-only':<36} {'model-only':<36} {'end-to-end':<36} "
              f"ratio  dec-cpu  mod-cpu  busy")
        for k, mods in enumerate(groups):
            base = config(mods)
            extractors = base.build()
            pre = [VideoItem(r, decode_video(manifest.abs_path(r.path), merged_request(extractors)))
                   for r in manifest.records()]
            units = 0
            for e in extractors:
                for item in pre:
                    if e.decode_error(item) is None:
                        state: dict = {}
                        units += len(e.units(item, item.decoded.as_chunk(), state)[0]) + len(e.last_units(item, state)[0])
            model_only(base, pre[:1])  # warm-up
            for mode, n_workers in variants:
                cfg = config(mods, mode, n_workers)
                decodes, models, e2e, decoded = [], [], [], []
                for r in range(args.repeats):  # interleaved, so all three see the same machine load
                    decodes.append(timed(lambda: decoded.append(decode_only(cfg, manifest)), len(ids), units, video_s))
                    models.append(timed(lambda: model_only(cfg, pre), len(ids), units, video_s))
                    e2e.append(timed(lambda: end_to_end("bench", cfg, ids, home, tmp / f"store-{k}-{mode}-{n_workers}-{r}"),
                                     len(ids), units, video_s))
                d, m, e = best(decodes), best(models), best(e2e)
                busy = (d.cpu + m.cpu) / cores / e.seconds
                label = f"{mode}" + (f" x{n_workers}" if mode == "fast" else "")
                print(f"{'+'.join(mods):<28} {label:<9} {d.line():<36} {m.line():<36} {e.line():<36} "
                      f"{m.seconds / e.seconds:5.2f} {d.cpu:8.2f} {m.cpu:8.2f} {busy:5.2f}  "
                      f"({decoded[0]} frames decoded)", flush=True)
        if CLIP_FRAMES in modalities and {"exact", "fast"} <= set(modes):
            sims = cosine_fast_vs_exact(config([CLIP_FRAMES]), manifest)
            print(f"clip_frames features, fast vs exact frames: cosine similarity per frame min {sims.min():.6f}, "
                  f"mean {sims.mean():.6f} over {len(sims)} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
