"""LSMDC: tab-separated files, one row per clip: clip id, four timestamps, sentence.

``0001_American_Beauty_00.00.51.926-00.00.54.278<TAB>00.00.51.926<TAB>00.00.54.278<TAB>00.00.51.500<TAB>00.00.54.500<TAB>SOMEONE looks out of a window.``

Timestamps are ``hh.mm.ss.mmm``; the first pair (the aligned clip) gives ``duration_s``. Files read
(those present): ``LSMDC16_annos_training.csv`` -> train, ``LSMDC16_annos_val.csv`` -> val,
``LSMDC16_challenge_1000_publictect.csv`` -> test (the 1,000-clip retrieval test). The clips may sit
in per-movie subfolders (``<movie>/<clip id>.avi``): the video folder is searched recursively.
"""
from __future__ import annotations

from pathlib import Path

from data.annotations import DatasetInfo, DatasetRead, text
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VideoFiles

INFO = DatasetInfo(
    text_unit="caption",
    test_queries="the sentence of each of the 1,000 test clips",
    splits="LSMDC16 training / val / 1,000-clip public test",
)
FILES = {
    "train": "LSMDC16_annos_training.csv",
    "val": "LSMDC16_annos_val.csv",
    "test": "LSMDC16_challenge_1000_publictect.csv",
}
N_COLUMNS = 6


def parse_time(value: str, where: str) -> float:
    """Seconds from ``hh.mm.ss.mmm``."""
    parts = value.strip().split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ManifestError(f"{where}: timestamp {value!r} is not hh.mm.ss.mmm")
    h, m, s, ms = (int(p) for p in parts)
    return h * 3600 + m * 60 + s + ms / 1000


def read_file(path: Path) -> dict[str, tuple[list[str], float]]:
    """clip id -> (sentences in file order, duration in seconds) of one annotation file."""
    clips: dict[str, tuple[list[str], float]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            cols = line.split("\t")
            if len(cols) != N_COLUMNS:
                raise ManifestError(f"{where}: {len(cols)} tab-separated columns, expected {N_COLUMNS} "
                                    f"(clip id, 4 timestamps, sentence)")
            clip = cols[0].strip()
            if not clip:
                raise ManifestError(f"{where}: empty clip id")
            start, end = parse_time(cols[1], where), parse_time(cols[2], where)
            for col in cols[3:5]:
                parse_time(col, where)
            sentence = text(cols[5], where)
            clips.setdefault(clip, ([], round(max(end - start, 0.0), 3)))[0].append(sentence)
    if not clips:
        raise ManifestError(f"{path}: no clips")
    return clips


def read(annotations: Path, videos: Path) -> DatasetRead:
    """Records of the LSMDC files present in ``annotations`` (a folder, or one file read as test)."""
    annotations = Path(annotations)
    if annotations.is_file():
        present = {"test": annotations}
    else:
        present = {split: annotations / f for split, f in FILES.items() if (annotations / f).is_file()}
    if not present:
        raise ManifestError(f"{annotations}: none of {', '.join(FILES.values())} found (see docs/datasets.md)")
    index = VideoFiles(videos)
    records, source = [], {}
    for split, path in present.items():
        for clip, (sentences, duration) in read_file(path).items():
            if clip in source:
                raise ManifestError(f"{path}: clip {clip!r} is also in {source[clip].name}")
            source[clip] = path
            records.append(VideoRecord(clip, index.path_for(clip), split, sentences, duration))
    notes = [f"splits from {', '.join(f'{p.name} ({s})' for s, p in present.items())}"]
    return DatasetRead(records, {"split_protocol": "lsmdc16"}, notes)
