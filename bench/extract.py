"""Extraction throughput: end-to-end (decode in the background + models + store) vs model-only.

``python -m bench.extract [--n 24] [--modalities clip_frames,audio] [--threads 2]``

On generated synthetic-av videos (data.synthetic, cached in ``--videos``), for each modality alone
and for all of them together, it measures side by side in one run:

- model-only: the same extractors fed videos decoded beforehand (input preparation such as the
  log-mel, batching and forward passes; no file access);
- end-to-end: ``extractors.run.extract_shard`` on the whole set into a fresh store (open, decode
  once per video in a background thread, batch, encode, write the Parquet shard);

and prints videos/s, units/s (frames, captions, 0.96 s windows, clips) and the ratio
end-to-end / model-only (1.0 = decoding fully hidden behind the model). Each measurement is the
best of ``--repeats`` interleaved runs (other processes share the machine). Weights are random (seeded);
throughput does not depend on the weights' values.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from data import synthetic
from data.prepare import prepare
from data.settings import Settings, get_settings
from extractors.decode import decode_video
from extractors.registry import MODALITIES
from extractors.run import ExtractConfig, extract_shard, iter_decoded, load_manifest, merged_request, plan_shards


@dataclass
class Timing:
    seconds: float
    videos: int
    units: int

    def line(self) -> str:
        return (f"{self.videos / self.seconds:8.2f} videos/s {self.units / self.seconds:9.1f} units/s "
                f"({self.seconds:.2f} s)")


def model_only(config: ExtractConfig, items: list, units: int) -> Timing:
    """The extractors' own path (input preparation, batching, forward passes) on pre-decoded videos."""
    extractors = config.build()
    start = time.perf_counter()
    for item in items:
        for e in extractors:
            e.push(item)
    for e in extractors:
        e.flush()
    return Timing(time.perf_counter() - start, len(items), units)


def end_to_end(dataset: str, config: ExtractConfig, ids: list[str], units: int, home: Settings,
               root: Path) -> Timing:
    """The real shard extraction into an empty store under ``root`` (manifest copied from ``home``)."""
    settings = get_settings(root)
    settings.manifest_path(dataset).parent.mkdir(parents=True)
    shutil.copy(home.manifest_path(dataset), settings.manifest_path(dataset))
    plan_shards(dataset, config, shard_size=len(ids), settings=settings)
    start = time.perf_counter()
    counts = extract_shard(dataset, ids, config, settings=settings, progress=lambda _: None)
    seconds = time.perf_counter() - start
    failed = {m: c.failed for m, c in counts.items() if c.failed}
    if failed:
        raise RuntimeError(f"benchmark videos failed to extract: {failed}")
    return Timing(seconds, len(ids), units)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.extract", description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=24, help="synthetic videos (default 24)")
    p.add_argument("--modalities", default="clip_frames,audio,motion,clip_text",
                   help=f"comma-separated subset of {','.join(MODALITIES)}")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip model (default ViT-B-32)")
    p.add_argument("--motion-size", type=int, default=128, help="SlowFast crop side (default 128)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--decode-workers", type=int, default=1, help="background decode threads (default 1)")
    p.add_argument("--repeats", type=int, default=3, help="best of this many runs (default 3)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--videos", default=None, help="folder for the generated videos (default: a temp folder)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]
    with tempfile.TemporaryDirectory(prefix="tvr-bench-") as tmp:
        tmp = Path(tmp)
        videos = Path(args.videos) if args.videos else tmp / "videos"
        ann = synthetic.generate(videos, n=args.n, seed=1, n_test=max(1, args.n // 4), n_val=1, progress=False)
        home = get_settings(tmp / "home")
        prepare("synthetic", ann, videos, name="bench", settings=home)
        manifest = load_manifest("bench", home)
        ids = manifest.video_ids

        def config(mods) -> ExtractConfig:
            return ExtractConfig(modalities=tuple(mods), models={"clip_frames": args.clip_model},
                                 options={"motion": {"size": args.motion_size}}, device=args.device,
                                 decode_workers=args.decode_workers)

        groups = [[m] for m in modalities] + ([modalities] if len(modalities) > 1 else [])
        print(f"{len(ids)} synthetic videos, torch threads {torch.get_num_threads()}, device "
              f"{config(modalities).build()[0].device}, clip model {args.clip_model}, RANDOM WEIGHTS")
        print(f"{'modalities':<40} {'model-only':<44} {'end-to-end':<44} ratio")
        for k, mods in enumerate(groups):
            cfg = config(mods)
            extractors = cfg.build()
            jobs = [(r, merged_request(extractors)) for r in manifest.records()]
            items = list(iter_decoded(jobs, manifest.video_root))
            units = sum(len(e.units(it)) for e in extractors for it in items if e.decode_error(it) is None)
            model_only(cfg, items[:2], 0)  # warm-up
            models, e2e = [], []
            for r in range(args.repeats):  # interleaved, so both see the same machine load
                models.append(model_only(cfg, items, units))
                e2e.append(end_to_end("bench", cfg, ids, units, home, tmp / f"store-{k}-{r}"))
            best_model = min(models, key=lambda t: t.seconds)
            best_e2e = min(e2e, key=lambda t: t.seconds)
            ratio = best_model.seconds / best_e2e.seconds
            print(f"{'+'.join(mods):<40} {best_model.line():<44} {best_e2e.line():<44} {ratio:.2f}")
        decode_s = _decode_only(manifest, config(modalities).build())
        print(f"decode only (all requested parts, one thread): {len(ids) / decode_s:.1f} videos/s")
    return 0


def _decode_only(manifest, extractors) -> float:
    request = merged_request(extractors)
    start = time.perf_counter()
    for r in manifest.records():
        decode_video(manifest.abs_path(r.path), request)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
