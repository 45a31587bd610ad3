"""Helpers of the service tests (no tests here): a fake-model index with real tiny video files."""
from __future__ import annotations

import shutil
from pathlib import Path

from fake_fusion_api import write_dataset
from test_extract_support import make_video

from data.settings import get_settings
from retrieval.index import cli as index_cli


def indexed_dataset(name: str, n: int, sample: Path) -> list[str]:
    """``n`` videos (copies of ``sample``, an MP4) in a manifest, indexed with the installed fake model."""
    ids = write_dataset(name, n)
    folder = get_settings().root / "media" / name / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    for vid in ids:
        shutil.copyfile(sample, folder / f"{vid}.mp4")
    assert index_cli.main(["--dataset", name, "--no-gpu"]) == 0
    return ids


def sample_video(folder: Path) -> Path:
    """A 4 s 64x48 H.264 test pattern (keyframe every 10 frames), made once per folder."""
    path = folder / "sample.mp4"
    if not path.is_file():
        make_video(path, seconds=4.0, fps=10, audio=None)
    return path
