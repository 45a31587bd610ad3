"""GPU smoke and benchmark (run by ``bench/gpu_check.sh``): what a lent GPU machine must show.

Checks, each printed as one line (``--dry`` prints them without running, e.g. on a CPU-only machine):

1. environment: torch CUDA device, FFmpeg's hardware device types in PyAV, faiss GPU count;
2. decode: two 1080p H.264 clips (10 s, B-frames) decoded for CLIP frames on the CPU (fast path)
   and with NVDEC (``hwaccel=cuda``): frames/s of video each, and that the sampled times are equal
   and the frames close (max abs difference of the uint8 pixels);
3. extraction: all four modalities on those clips with CUDA in fp16 and in fp32 (random weights):
   max abs difference of the stored values per modality;
4. faiss: IndexFlatIP on 20k random 512-d vectors, GPU vs CPU: the same top-10 ids;
5. training: two ``fusion.train`` steps of the meanP model on random features under
   ``torch.autocast`` (bfloat16): finite losses.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CHECKS = [
    "environment: torch.cuda device name, PyAV hardware device types, faiss.get_num_gpus()",
    "decode: 2 x 10 s 1080p30 H.264 (GOP 2-3 s, 3 B-frames), CLIP frames at 1 fps: CPU fast path vs NVDEC "
    "(hwaccel=cuda) seconds of video per second, equal sample times, max abs pixel difference",
    "extraction: clip_frames, clip_text, audio, motion on those clips, CUDA fp16 vs fp32: max abs difference",
    "faiss: IndexFlatIP 20k x 512 random vectors, 100 queries, top-10 ids GPU == CPU",
    "training: 2 steps of meanP (fusion.train.train_step) under torch.autocast(bfloat16): finite losses",
]


def _say(name: str, text: str) -> None:
    print(f"[{name}] {text}", flush=True)


def check_decode(clips: list[Path]) -> None:
    from extractors.decode import DecodeOptions, DecodeRequest, decode_video

    out = {}
    for label, options in (("cpu", DecodeOptions()), ("nvdec", DecodeOptions(hwaccel="cuda"))):
        request = DecodeRequest(frame_fps=1.0, frame_size=224, options=options)
        decode_video(clips[0], request)  # warm-up (device context)
        start = time.perf_counter()
        out[label] = [decode_video(c, request) for c in clips]
        seconds = time.perf_counter() - start
        video_s = sum(d.duration_s for d in out[label])
        _say("decode", f"{label}: {video_s / seconds:.1f} s of video/s; decoded on "
                       f"{out[label][0].hwaccel or 'cpu'}")
    same_times = all(np.array_equal(a.frame_times, b.frame_times) for a, b in zip(out["cpu"], out["nvdec"]))
    diff = max(int(np.abs(a.frames.astype(int) - b.frames).max()) for a, b in zip(out["cpu"], out["nvdec"]))
    _say("decode", f"equal sample times: {same_times}; max abs pixel difference {diff}")


def check_extraction(clips: list[Path], folder: Path) -> None:
    from data.manifest import VideoRecord
    from extractors.base import VideoItem
    from extractors.decode import decode_video
    from extractors.config import ExtractConfig
    from extractors.reader import merged_request

    for precision_pair in (("fp16", "fp32"),):
        values = {}
        for precision in precision_pair:
            config = ExtractConfig(device="cuda", precision=precision)
            extractors = config.build()
            request = merged_request(extractors)
            rows: dict[str, list] = {e.modality: [] for e in extractors}
            start = time.perf_counter()
            for k, clip in enumerate(clips):
                item = VideoItem(VideoRecord(f"c{k}", clip.name, "test", ["a test pattern"]),
                                 decode_video(clip, request))
                for e in extractors:
                    rows[e.modality] += e.push(item)
            for e in extractors:
                rows[e.modality] += e.flush()
            _say("extract", f"{precision}: {time.perf_counter() - start:.1f} s for {len(clips)} clips, "
                            f"statuses {sorted({r.status for rs in rows.values() for r in rs})}")
            values[precision] = {m: [r.values for r in rs] for m, rs in rows.items()}
        for m in values["fp32"]:
            diff = max(float(np.abs(a - b).max()) for a, b in zip(values["fp16"][m], values["fp32"][m]))
            _say("extract", f"{m}: fp16 vs fp32 max abs difference {diff:.4g}")


def check_faiss() -> None:
    import faiss

    if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0:
        _say("faiss", "SKIPPED: this faiss has no GPU support (install the gpu extra: faiss-gpu)")
        return
    rng = np.random.default_rng(0)
    base = rng.standard_normal((20000, 512)).astype(np.float32)
    queries = rng.standard_normal((100, 512)).astype(np.float32)
    cpu = faiss.IndexFlatIP(512)
    cpu.add(base)
    gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, faiss.IndexFlatIP(512))
    gpu.add(base)
    _, a = cpu.search(queries, 10)
    _, b = gpu.search(queries, 10)
    _say("faiss", f"top-10 ids equal on {float((a == b).mean()) * 100:.1f}% of positions")


def check_training(device: str = "cuda") -> None:
    import torch

    from bench.train import random_features
    from fusion.config import load_config
    from fusion.factory import build_model
    from fusion.train import assemble_batch, make_optimizer, train_step

    feats = random_features(200, 12, 5)
    config = load_config("meanP", overrides=[{"train": {"batch_size": 32}}])
    torch.manual_seed(0)
    device = torch.device(device)
    model = build_model(config, 512).to(device)
    optimizer = make_optimizer(model, config["train"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    caps = feats.split_captions("train")
    for step in range(2):
        inputs = assemble_batch(feats, caps[step * 32:(step + 1) * 32], config, model, 1,
                                torch.Generator().manual_seed(step), device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            parts = train_step(model, optimizer, scheduler, inputs, 1, config["train"]["grad_clip"])
        _say("train", f"step {step}: {parts}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry", action="store_true", help="only say what would be checked")
    p.add_argument("--videos", default=None, help="folder for the generated clips (default: a temp folder)")
    args = p.parse_args(argv)
    try:
        import torch
        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if args.dry or not cuda:
        why = "--dry" if args.dry else "no CUDA device here (torch.cuda.is_available() is False)"
        _say("dry", f"{why}; on a GPU machine this would check:")
        for k, line in enumerate(CHECKS, 1):
            print(f"  {k}. {line}")
        return 0
    from av.codec.hwaccel import hwdevices_available

    from bench.extract import real_resolution_clips

    _say("env", f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}; PyAV hw devices "
                f"{hwdevices_available()}")
    with tempfile.TemporaryDirectory(prefix="tvr-gpu-") as tmp:
        folder = Path(args.videos or tmp)
        real_resolution_clips(folder, "1080p", 2, 10)
        clips = sorted(folder.glob("1080p-10s-*.mp4"))
        for name, run in (("decode", lambda: check_decode(clips)), ("extract", lambda: check_extraction(clips, folder)),
                          ("faiss", check_faiss), ("train", check_training)):
            try:
                run()
            except Exception as exc:  # noqa: BLE001 - report every check, whatever one of them does
                _say(name, f"FAILED: {exc.__class__.__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
