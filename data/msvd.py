"""MSVD: ``captions_msvd.json`` (``{video_id: [captions]}``) or CLIP4Clip's ``raw-captions.pkl``
(``{video_id: [[tokens], ...]}``, read by a restricted unpickler, :func:`read_raw_captions_pkl`) and ``train_list.txt`` /
``val_list.txt`` / ``test_list.txt`` (one id per line). Every caption is kept: 1,200 / 100 / 670
videos, 80,827 captions, 27,763 of them test queries in the full set. Ids such as
``-4wsuPCjDBc_5_15`` (YouTube id, start and end second) may start with a dash and hold underscores.
"""
from __future__ import annotations

import io
import pickle
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
RAW_CAPTIONS = "raw-captions.pkl"   # CLIP4Clip's MSVD captions
CONVERT_HINT = ("convert it once, in an environment you trust, with: python -c \"import json, pickle; "
                "d = pickle.load(open('raw-captions.pkl', 'rb')); json.dump({k: [' '.join(c) if "
                "isinstance(c, list) else c for c in v] for k, v in d.items()}, open('captions_msvd.json', 'w'))\"")
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


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what pickle's own opcodes make (dicts, lists, tuples, strings, numbers): any
    class or function reference, the way a pickle runs code, is refused."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refers to {module}.{name}; only dicts, lists and strings are accepted")


def read_raw_captions_pkl(path: Path) -> dict[str, list[str]]:
    """CLIP4Clip's ``raw-captions.pkl``: ``{video_id: [[token, ...], ...]}`` (a caption may also be
    a plain string) -> video_id -> captions (tokens joined by spaces). Never runs pickled code: a
    pickle holding anything but dicts, lists and strings is refused with how to convert it."""
    try:
        data = _PlainDataUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: file not found") from exc
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError) as exc:
        raise ManifestError(f"{path}: not a plain-data pickle ({exc}); {CONVERT_HINT}") from None
    expect(data, dict, str(path), "a pickled dict {video_id: [[tokens], ...]}")
    out = {}
    for vid, caps in data.items():
        where = f"{path}: key {vid!r}"
        if not isinstance(vid, str):
            raise ManifestError(f"{where}: video ids must be strings")
        expect(caps, list, where, "a list of captions (token lists or strings)")
        if not caps:
            raise ManifestError(f"{where}: no captions")
        joined = []
        for i, cap in enumerate(caps):
            if isinstance(cap, list) and all(isinstance(t, str) for t in cap):
                cap = " ".join(cap)
            joined.append(text(cap, f"{where}[{i}]"))
        out[vid] = joined
    return out


def read(annotations: Path, videos: Path) -> DatasetRead:
    """Records of the train / val / test lists (the lists present; at least one)."""
    caption_path = find_file(Path(annotations), CAPTIONS, RAW_CAPTIONS)
    folder = caption_path.parent
    captions = (read_raw_captions_pkl(caption_path) if caption_path.suffix == ".pkl"
                else read_captions(caption_path))
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
