"""MSVD: ``captions_msvd.json`` (``{video_id: [captions]}``) and ``train_list.txt`` /
``val_list.txt`` / ``test_list.txt`` (one id per line). Every caption is kept: 1,200 / 100 / 670
videos, 80,827 captions, 27,763 of them test queries in the full set. Ids such as
``-4wsuPCjDBc_5_15`` (YouTube id, start and end second) may start with a dash and hold underscores.
"""
from __future__ import annotations

from pathlib import Path

from data.annotations import DatasetInfo, DatasetRead, expect, find_file, load_json, read_id_list, text
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VideoFiles

INFO = DatasetInfo(
    text_unit="caption",
    test_queries="every caption of every test video is its own query (multi-caption; 27,763)",
    splits="1,200 / 100 / 670",
)
CAPTIONS = "captions_msvd.json"
LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


def read_captions(path: Path) -> dict[str, list[str]]:
    """video_id -> its captions (stripped), validated."""
    data = expect(load_json(path), dict, str(path), "a JSON object {video_id: [captions]}")
    out = {}
    for vid, caps in data.items():
        where = f"{path}: key {vid!r}"
        expect(caps, list, where, "a list of captions")
        if not caps:
            raise ManifestError(f"{where}: no captions")
        out[vid] = [text(cap, f"{where}[{i}]") for i, cap in enumerate(caps)]
    return out


def read(annotations: Path, videos: Path) -> DatasetRead:
    """Records of the train / val / test lists (the lists present; at least one)."""
    caption_path = find_file(Path(annotations), CAPTIONS)
    folder = caption_path.parent
    captions = read_captions(caption_path)
    present = {name: folder / f for name, f in LISTS.items() if (folder / f).is_file()}
    if not present:
        raise ManifestError(f"{folder}: none of the split lists {', '.join(LISTS.values())} found")
    index = VideoFiles(videos)
    records, split_of = [], {}
    for name, path in present.items():
        for vid, lineno in read_id_list(path).items():
            if vid not in captions:
                raise ManifestError(f"{path}:{lineno}: video {vid!r} has no captions in {caption_path.name}")
            if vid in split_of:
                raise ManifestError(f"{path}:{lineno}: video {vid!r} is also in the {split_of[vid]} list")
            split_of[vid] = name
            records.append(VideoRecord(vid, index.path_for(vid), name, captions[vid]))
    notes = [f"splits from {', '.join(p.name for p in present.values())}"]
    unlisted = len(captions) - len(split_of)
    if unlisted:
        notes.append(f"{unlisted} videos of {caption_path.name} are in no split list and were left out")
    return DatasetRead(records, {"split_protocol": "standard"}, notes)
