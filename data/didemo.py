"""DiDeMo: ``train_data.json`` / ``val_data.json`` / ``test_data.json`` (those present).

Each file is a list of moments ``{"video", "description", "times", "annotation_id", ...}``;
``times`` holds one ``[start, end]`` pair of 5-second chunk indices per annotator. Retrieval is
paragraph-to-video: a video's descriptions are sorted by their mean start chunk (then mean end,
then file order) and joined into one caption. Video ids are Flickr names such as
``10015567@N08_3655084291_d8b58466fa.mov`` (``@``, an original extension, sometimes a trailing
dot); the file on disk is ``<id>`` itself or ``<id>.<ext>`` (e.g. ``....mov.mp4``).

The raw files hold 8,395 / 1,094 / 1,037 videos; the standard protocol (collaborative-experts,
CLIP4Clip) uses the 8,392 / 1,065 / 1,004 still available, listed in ``train_list.txt`` /
``val_list.txt`` / ``test_list.txt``. When a split's list file is present, only its videos are kept
(a listed video missing from the JSON is an error) and the notes say how many were left out.
"""
from __future__ import annotations

from pathlib import Path

from data.annotations import (DatasetInfo, DatasetRead, expect, join_in_time_order, load_json,
                              paragraph_notes, read_id_list, text)
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VideoFiles

INFO = DatasetInfo(
    text_unit="paragraph",
    test_queries="one paragraph per test video (its descriptions joined in time order)",
    splits="8,392 / 1,065 / 1,004",
)
FILES = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


def _mean_times(times, where: str) -> tuple[float, float]:
    expect(times, list, where, "a list of [start, end] chunk pairs")
    pairs = [expect(pair, list, f"{where}[{i}]", "a [start, end] pair") for i, pair in enumerate(times)]
    if not pairs or any(len(p) != 2 or not all(isinstance(t, (int, float)) for t in p) for p in pairs):
        raise ManifestError(f"{where}: expected a non-empty list of numeric [start, end] pairs, got {times!r}")
    return sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)


def read_file(path: Path) -> dict[str, list[tuple[tuple, str]]]:
    """video -> [((mean start, mean end, position), description)] of one DiDeMo file."""
    moments = expect(load_json(path), list, str(path), "a JSON list of moments")
    by_video: dict[str, list[tuple[tuple, str]]] = {}
    for i, moment in enumerate(moments):
        where = f"{path}: [{i}]"
        expect(moment, dict, where, "an object with 'video', 'description', 'times'")
        video = moment.get("video")
        if not isinstance(video, str) or not video:
            raise ManifestError(f"{where}.video: expected a non-empty string, got {video!r}")
        sentence = text(moment.get("description"), f"{where}.description")
        start, end = _mean_times(moment.get("times"), f"{where}.times")
        by_video.setdefault(video, []).append(((start, end, i), sentence))
    if not by_video:
        raise ManifestError(f"{path}: no moments")
    return by_video


def read(annotations: Path, videos: Path) -> DatasetRead:
    folder = Path(annotations)
    present = {split: folder / f for split, f in FILES.items() if (folder / f).is_file()}
    if not present:
        raise ManifestError(f"{folder}: none of {', '.join(FILES.values())} found (see docs/datasets.md)")
    index = VideoFiles(videos)
    records, source, listed_notes = [], {}, []
    for split, path in present.items():
        moments = read_file(path)
        keep = _listed(folder / LISTS[split], moments, path)
        if keep is not None:
            listed_notes.append(f"{split}: {len(keep)} of the {len(moments)} videos of {path.name} are listed in "
                                f"{LISTS[split]} (standard protocol); {len(moments) - len(keep)} left out")
        for video, sentences in moments.items():
            if keep is not None and video not in keep:
                continue
            if video in source:
                raise ManifestError(f"{path}: video {video!r} is also in {source[video].name}")
            source[video] = path
            records.append(VideoRecord(video, index.path_for(video), split, [join_in_time_order(sentences)]))
    notes, metadata = paragraph_notes(records)
    notes[:0] = [f"splits from {', '.join(p.name for p in present.values())}"] + listed_notes
    protocol = "standard (split lists)" if listed_notes else "raw JSON files (no split lists found)"
    return DatasetRead(records, {"split_protocol": protocol, **metadata}, notes)


def _listed(list_path: Path, moments: dict, data_path: Path) -> set[str] | None:
    """The ids of ``list_path`` (None when absent); each must be a video of ``data_path``."""
    if not list_path.is_file():
        return None
    ids = read_id_list(list_path)
    for vid, lineno in ids.items():
        if vid not in moments:
            raise ManifestError(f"{list_path}:{lineno}: video {vid!r} is not in {data_path.name}")
    return set(ids)
