"""Shared helpers of the extraction tests (no tests here): tiny models and datasets."""
from __future__ import annotations

import json
from pathlib import Path

from data.prepare import prepare
from extractors.clip import ClipTextExtractor
from extractors.config import ExtractConfig

TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_clip_dir(root: Path) -> str:
    """An open_clip ``local-dir:`` model name for a tiny random CLIP (works in subprocesses too)."""
    folder = Path(root) / "tiny-clip"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CLIP_CFG}))
    return f"local-dir:{folder}"


def tiny_config(root: Path, modalities=("clip_frames", "clip_text", "audio", "motion"), **kw) -> ExtractConfig:
    """All modalities with tiny models / inputs: tiny CLIP, SlowFast on 32 px clips of 4 frames at 2 fps."""
    clip = tiny_clip_dir(root)
    options = {"motion": {"size": 32, "fps": 2.0, "clip_frames": 4}}
    return ExtractConfig(modalities=tuple(modalities), models={"clip_frames": clip}, options=options,
                         device="cpu", **kw)


def prepare_synthetic(folder: Path, name: str = "synthetic"):
    """Manifest for an already generated synthetic folder (``tiny_synthetic``)."""
    return prepare("synthetic", Path(folder) / "annotations.jsonl", folder, name=name)


def ffmpeg(*args: str) -> None:
    """Run imageio-ffmpeg's static ffmpeg (quiet; raises on failure)."""
    import subprocess

    import imageio_ffmpeg

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", *map(str, args)], check=True)


def make_video(path: Path, seconds: float = 2.0, size: str = "64x48", fps: int = 10,
               audio: tuple[int, int] | None = (16000, 1), faststart: bool = False) -> Path:
    """An H.264 MP4 test pattern (+ an AAC sine of ``(rate, channels)`` or no audio stream)."""
    args = ["-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}:duration={seconds}"]
    if audio is not None:
        rate, channels = audio
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={rate}:duration={seconds}",
                 "-ac", str(channels), "-c:a", "aac"]
    if faststart:
        args += ["-movflags", "+faststart"]
    ffmpeg(*args, "-c:v", "libx264", "-pix_fmt", "yuv420p", path)
    return Path(path)


def spy_encoded_captions(monkeypatch) -> list[str]:
    """From now on, every caption the clip_text tower encodes is appended to the returned list."""
    encoded: list[str] = []
    real_forward = ClipTextExtractor.forward

    def forward_spy(self, batch):
        encoded.extend(cap for _, cap in batch)
        return real_forward(self, batch)

    monkeypatch.setattr(ClipTextExtractor, "forward", forward_spy)
    return encoded
