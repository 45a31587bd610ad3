"""ActivityNet Captions: ``train.json`` (or ``train_modified.json``) and ``val_1.json``.

Each file maps ``v_<youtube id>`` to ``{"duration", "timestamps": [[start, end], ...],
"sentences": [...]}`` (seconds). Retrieval is paragraph-to-video: a video's sentences are sorted by
start time and joined into one caption. ``val_1`` is the test split (4,917 videos); ``val_size``
training videos (default 1,000 of 10,009) are held out as validation, deterministically. Video
files may be named with or without the ``v_`` prefix.

Windows (``windows.parquet``, :mod:`data.windows`): each sentence keeps its ``timestamps`` pair as
is, checked against the video's ``duration`` (a pair with start >= end, a negative start or an end
past the duration is refused and reported; the sentence stays in the paragraph).
"""
from __future__ import annotations

from pathlib import Path

from data.annotations import (DatasetInfo, DatasetRead, expect, find_file, hold_out, in_time_order, load_json,
                              paragraph_notes, text)
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VideoFiles
from data.windows import WindowLog, caption_where

INFO = DatasetInfo(
    text_unit="paragraph",
    test_queries="one paragraph per val_1 video (its sentences joined in time order)",
    splits="10,009 train (1,000 held out as val by default) / 4,917 val_1 as test",
)
TRAIN_FILES = ("train.json", "train_modified.json")
TEST_FILE = "val_1.json"
DEFAULT_VAL_SIZE = 1000


def read_file(path: Path, log: WindowLog) -> dict[str, tuple[str, float | None]]:
    """video id -> (paragraph, duration in seconds) of one ActivityNet Captions file; each sentence's
    window goes to ``log`` (caption index: the sentence's position in the paragraph)."""
    data = expect(load_json(path), dict, str(path), "a JSON object {video_id: {...}}")
    out = {}
    for vid, entry in data.items():
        where = f"{path}: key {vid!r}"
        expect(entry, dict, where, "an object with 'timestamps' and 'sentences'")
        sentences = expect(entry.get("sentences"), list, f"{where}.sentences", "a list of sentences")
        stamps = expect(entry.get("timestamps"), list, f"{where}.timestamps", "a list of [start, end] pairs")
        if not sentences:
            raise ManifestError(f"{where}.sentences: no sentences")
        if len(stamps) != len(sentences):
            raise ManifestError(f"{where}: {len(sentences)} sentences but {len(stamps)} timestamps")
        pairs = []
        for i, (stamp, sentence) in enumerate(zip(stamps, sentences)):
            if not isinstance(stamp, list) or len(stamp) != 2 or not all(isinstance(t, (int, float)) for t in stamp):
                raise ManifestError(f"{where}.timestamps[{i}]: expected [start, end] in seconds, got {stamp!r}")
            pairs.append(((stamp[0], i), (text(sentence, f"{where}.sentences[{i}]"), stamp, i)))
        duration = entry.get("duration")
        duration = float(duration) if isinstance(duration, (int, float)) else None
        ordered = in_time_order(pairs)
        for position, (sentence, (start, end), i) in enumerate(ordered):
            log.add(vid, position, start, end, duration, text=sentence,
                    where=caption_where(f"{where}.timestamps[{i}]", vid, sentence))
        out[vid] = (" ".join(sentence for sentence, _, _ in ordered), duration)
    if not out:
        raise ManifestError(f"{path}: no videos")
    return out


def read(annotations: Path, videos: Path, val_size: int | None = None) -> DatasetRead:
    folder = Path(annotations)
    test_path = find_file(folder, TEST_FILE)
    present = [p for p in (folder / f for f in TRAIN_FILES) if p.is_file()][:1]
    log = WindowLog()
    splits = {"test": read_file(test_path, log)}
    n_val = 0
    if present:
        splits["train"] = read_file(present[0], log)
        n_val = DEFAULT_VAL_SIZE if val_size is None else val_size
    elif val_size:
        raise ManifestError(f"{folder}: no {' or '.join(TRAIN_FILES)} to hold validation videos out of")
    held = hold_out(list(splits.get("train", {})), n_val, "activitynet") if n_val else set()
    index = VideoFiles(videos)
    records = []
    for split, path in (("train", present[0] if present else None), ("test", test_path)):
        for vid, (paragraph, duration) in splits.get(split, {}).items():
            if split == "train" and vid in splits["test"]:
                raise ManifestError(f"{path}: video {vid!r} is also in {test_path.name}")
            name = "val" if vid in held else split
            alias = (vid[2:],) if vid.startswith("v_") else ()
            records.append(VideoRecord(vid, index.path_for(vid, alias), name, [paragraph], duration))
    notes, metadata = paragraph_notes(records)
    val_text = f"{n_val} training videos held out (smallest SHA-256 of the id)"
    notes.insert(0, f"splits from {', '.join(p.name for p in [*present, test_path])}; val: {val_text}")
    return DatasetRead(records, {"split_protocol": "val_1-test", "val": val_text, **metadata}, notes + log.notes(),
                       log.windows)
