"""MSR-VTT: ``MSRVTT_data.json`` (20 captions per video) plus the split files of each protocol.

Split protocols (docs/methods.md §5; ``split=``):

- ``1k-A`` (default): train = ``MSRVTT_train.9k.csv`` with all captions; test = the 1,000 videos of
  ``MSRVTT_JSFUSION_test.csv``, ONE caption each (the ``sentence`` column).
- ``7k``: train = ``MSRVTT_train.7k.csv`` (7,010); test as 1k-A.
- ``1k-B``: ``train_list_miech.txt`` (6,656) / ``test_list_miech.txt`` (1,000); test keeps the first
  caption of each video (in file order), as MoEE and Collaborative Experts evaluate it.
- ``full``: 6,513 / 497 / 2,990 with all 20 captions, from ``{train,val,test}_list_full.txt`` when
  present, else from the ``split`` field of ``MSRVTT_data.json`` (``validate`` -> ``val``).

``val_size`` training videos are held out as ``val`` (deterministic: smallest SHA-256 of the id;
default 1,000; ``full`` has its official val split and takes no hold-out).
"""
from __future__ import annotations

import csv
from pathlib import Path

from data.annotations import (DatasetInfo, DatasetRead, expect, find_file, hold_out, load_json,
                              read_id_list, text)
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VideoFiles

INFO = DatasetInfo(
    text_unit="caption",
    test_queries="1k-A / 7k: one caption per test video (JSFusion); 1k-B: first caption; "
                 "full: all 20 captions, each a query",
    splits="1k-A 9,000 / 1,000; 7k 7,010 / 1,000; 1k-B 6,656 / 1,000; full 6,513 / 497 / 2,990",
)
SPLITS = ("1k-A", "7k", "1k-B", "full")
TEST_QUERIES = {
    "1k-A": "one caption per test video (JSFusion), 1,000 queries",
    "7k": "one caption per test video (JSFusion), 1,000 queries",
    "1k-B": "the first caption of each test video, 1,000 queries",
    "full": "every caption of every test video is its own query (20 per video)",
}
DEFAULT_VAL_SIZE = 1000
DATA_JSON = "MSRVTT_data.json"
JSFUSION_TEST = "MSRVTT_JSFUSION_test.csv"
TRAIN_CSV = {"1k-A": "MSRVTT_train.9k.csv", "7k": "MSRVTT_train.7k.csv"}
FULL_LISTS = {"train": "train_list_full.txt", "val": "val_list_full.txt", "test": "test_list_full.txt"}
DATA_SPLIT_NAMES = {"train": "train", "validate": "val", "val": "val", "test": "test"}


def read_data_json(path: Path) -> tuple[dict[str, dict], dict[str, list[str]]]:
    """(video_id -> video entry, video_id -> captions in file order) from ``MSRVTT_data.json``."""
    data = expect(load_json(path), dict, str(path), "a JSON object with 'videos' and 'sentences'")
    videos: dict[str, dict] = {}
    for i, entry in enumerate(expect(data.get("videos"), list, f"{path}: 'videos'", "a list")):
        where = f"{path}: videos[{i}]"
        expect(entry, dict, where, "an object")
        vid = expect(entry.get("video_id"), str, f"{where}.video_id", "a string")
        if vid in videos:
            raise ManifestError(f"{where}: video_id {vid!r} listed twice")
        videos[vid] = entry
    captions: dict[str, list[str]] = {vid: [] for vid in videos}
    for i, entry in enumerate(expect(data.get("sentences"), list, f"{path}: 'sentences'", "a list")):
        where = f"{path}: sentences[{i}]"
        expect(entry, dict, where, "an object")
        vid = entry.get("video_id")
        if vid not in captions:
            raise ManifestError(f"{where}: video_id {vid!r} is not in 'videos'")
        captions[vid].append(text(entry.get("caption"), f"{where}.caption"))
    return videos, captions


def read_jsfusion_test(path: Path) -> dict[str, tuple[str, int]]:
    """video_id -> (its one test sentence, line number), from the ``key,vid_key,video_id,sentence`` CSV."""
    out: dict[str, tuple[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows, None)
        if header is None or "video_id" not in header or "sentence" not in header:
            raise ManifestError(f"{path}:1: header {header} lacks the 'video_id' and 'sentence' columns")
        col_id, col_sent = header.index("video_id"), header.index("sentence")
        for lineno, row in enumerate(rows, 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ManifestError(f"{path}:{lineno}: {len(row)} columns, expected {len(header)} ({','.join(header)})")
            vid = row[col_id].strip()
            if vid in out:
                raise ManifestError(f"{path}:{lineno}: video {vid!r} has a second test sentence")
            out[vid] = (text(row[col_sent], f"{path}:{lineno}"), lineno)
    if not out:
        raise ManifestError(f"{path}: no test rows")
    return out


def _check_listed(ids: dict[str, int], known: dict, list_path: Path, data_path: Path) -> None:
    for vid, lineno in ids.items():
        if vid not in known:
            raise ManifestError(f"{list_path}:{lineno}: video {vid!r} is not in {data_path.name}")


IdLists = dict[str, tuple[Path, dict[str, int]]]  # split -> (file, video_id -> line number)


def _protocol_lists(split: str, folder: Path, data_path: Path, entries: dict[str, dict],
                    captions: dict[str, list[str]]) -> tuple[IdLists, dict[str, str]]:
    """The id lists of ``split``'s train / (val) / test, and the one caption of restricted test videos."""
    if split in ("1k-A", "7k"):
        train_path, test_path = find_file(folder, TRAIN_CSV[split]), find_file(folder, JSFUSION_TEST)
        jsfusion = read_jsfusion_test(test_path)
        lists = {"train": (train_path, read_id_list(train_path, header="video_id")),
                 "test": (test_path, {vid: lineno for vid, (_, lineno) in jsfusion.items()})}
        return lists, {vid: sentence for vid, (sentence, _) in jsfusion.items()}
    if split == "1k-B":
        lists = {name: (path, read_id_list(path)) for name, path in
                 (("train", find_file(folder, "train_list_miech.txt")),
                  ("test", find_file(folder, "test_list_miech.txt")))}
        return lists, {vid: captions[vid][0] for vid in lists["test"][1] if captions.get(vid)}
    if all((folder / name).is_file() for name in FULL_LISTS.values()):
        return {name: (folder / f, read_id_list(folder / f)) for name, f in FULL_LISTS.items()}, {}
    lists: IdLists = {}
    for vid, entry in entries.items():
        name = DATA_SPLIT_NAMES.get(entry.get("split"))
        if name is None:
            raise ManifestError(f"{data_path}: video {vid!r} has split {entry.get('split')!r}; "
                                f"expected one of {', '.join(DATA_SPLIT_NAMES)}")
        lists.setdefault(name, (data_path, {}))[1][vid] = 0
    return lists, {}


def read(annotations: Path, videos: Path, split: str = "1k-A", val_size: int | None = None) -> DatasetRead:
    """Records of one split protocol; see the module docstring."""
    if split not in SPLITS:
        raise ManifestError(f"msrvtt: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data_path = find_file(Path(annotations), DATA_JSON)
    entries, captions = read_data_json(data_path)
    lists, test_caption = _protocol_lists(split, data_path.parent, data_path, entries, captions)
    split_of: dict[str, str] = {}
    for name, (path, ids) in lists.items():
        if path != data_path:
            _check_listed(ids, entries, path, data_path)
        for vid in ids:
            if vid in split_of:
                raise ManifestError(f"{path}: video {vid!r} is also in the {split_of[vid]} split")
            split_of[vid] = name
    metadata = {"split_protocol": split, "test_queries": TEST_QUERIES[split]}
    if split == "full":
        if val_size:
            raise ManifestError("msrvtt: the 'full' split has an official val split; do not pass a val size")
        metadata["val"] = f"official ({len(lists['val'][1])} videos)" if "val" in lists else "none"
    else:
        n_val = DEFAULT_VAL_SIZE if val_size is None else val_size
        held = hold_out(list(lists["train"][1]), n_val, f"msrvtt {split}") if n_val else []
        split_of.update(dict.fromkeys(held, "val"))
        metadata["val"] = (f"{n_val} training videos held out (smallest SHA-256 of the id)" if n_val else
                           "none: every training video trains (CLIP4Clip's protocol; train with "
                           "val_holdout: 0, model selection = the last epoch)")
    index = VideoFiles(videos)
    records = []
    for vid, entry in entries.items():
        name = split_of.get(vid)
        if name is None:
            continue
        caps = [test_caption[vid]] if name == "test" and vid in test_caption else captions[vid]
        if not caps:
            raise ManifestError(f"{data_path}: video {vid!r} ({name}) has no sentences")
        records.append(VideoRecord(vid, index.path_for(vid), name, caps, _duration(entry)))
    left_out = len(entries) - len(records)
    notes = [f"split protocol {split}; val: {metadata['val']}"]
    if left_out:
        notes.append(f"{left_out} videos of {DATA_JSON} belong to no split of {split} and were left out")
    return DatasetRead(records, metadata, notes)


def _duration(entry: dict) -> float | None:
    start, end = entry.get("start time"), entry.get("end time")
    if isinstance(start, (int, float)) and isinstance(end, (int, float)) and end > start:
        return round(float(end) - float(start), 3)
    return None
