"""A user's own collection: a videos folder plus, optionally, a CSV or JSON Lines captions file
(without one, :func:`scan` lists the folder's videos, captionless).

JSON Lines (``.jsonl``), one object per video::

    {"video": "clips/cat.mp4", "captions": ["a cat jumps", "a kitten leaps"], "split": "train"}

CSV (``.csv``), one row per caption (rows of the same video are grouped)::

    video,caption,split
    clips/cat.mp4,a cat jumps,train
    clips/cat.mp4,a kitten leaps,train

``video`` is a path relative to the videos folder; ``video_id`` (optional) defaults to that path
without its extension; ``split`` (optional) is ``train`` / ``val`` / ``test`` or any name; a video
without one is assigned deterministically from a hash of its id (80 / 10 / 10 %). ``duration_s``
is optional. Other keys are ignored (the synthetic dataset stores its ``attributes`` there).

A caption may carry its window in seconds (``windows.parquet``, :mod:`data.windows`): in JSON
Lines a caption is then an object ``{"caption": "...", "start_s": 1.5, "end_s": 4.0}``, in CSV
the optional columns ``start_s`` / ``end_s`` of its row. A bad window (one bound without the other,
not a number, start >= end, negative, past ``duration_s``) is refused with a message naming the
file, the line and the caption, and reported; the caption is kept.
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Sequence

from data.annotations import DatasetRead
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VIDEO_EXTENSIONS
from data.windows import WindowLog, caption_where

SPLIT_SHARES = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def assign_split(video_id: str) -> str:
    """Deterministic split from a hash of the id (the same id always gets the same split)."""
    u = int(hashlib.sha256(video_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    acc = 0.0
    for name, share in SPLIT_SHARES:
        acc += share
        if u <= acc:
            return name
    return SPLIT_SHARES[-1][0]


def _default_id(video: str) -> str:
    p = PurePosixPath(video.replace("\\", "/"))
    return str(p.with_suffix("")) if p.suffix else str(p)


def _caption(item, index: int, where: str) -> tuple[str, object, object]:
    """(text, raw start, raw end) of one caption: a string, or an object with "caption" and an
    optional window."""
    if isinstance(item, dict):
        text, start, end = item.get("caption"), item.get("start_s"), item.get("end_s")
    else:
        text, start, end = item, None, None
    if not isinstance(text, str) or not text.strip():
        raise ManifestError(f"{where}: caption {index} is {item!r}; expected a non-empty string "
                            f'or {{"caption": "...", "start_s": ..., "end_s": ...}}')
    return text, start, end


def _record(obj: dict, where: str, log: WindowLog, lines: Sequence[str] = ()) -> VideoRecord:
    """The video of one JSON object (or one CSV group; ``lines``: each caption's ``file:line``);
    caption windows go to ``log``."""
    video = obj.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ManifestError(f"{where}: missing or empty 'video' (a path relative to the videos folder)")
    captions = obj.get("captions")
    if isinstance(captions, str) or not isinstance(captions, list):
        raise ManifestError(f"{where}: 'captions' must be a list of strings, got {type(captions).__name__}")
    parsed = [_caption(item, i, where) for i, item in enumerate(captions)]
    vid = str(obj.get("video_id") or _default_id(video))
    split = obj.get("split") or assign_split(vid)
    duration = obj.get("duration_s")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: 'duration_s' is {duration!r}; expected seconds as a number") from None
    for i, (text, start, end) in enumerate(parsed):
        log.add(vid, i, start, end, duration, where=caption_where(lines[i] if lines else where, vid, text))
    return VideoRecord(vid, video, str(split), [text for text, _, _ in parsed], duration)


def read_jsonl(path: Path, log: WindowLog | None = None) -> list[VideoRecord]:
    """The records of a JSON Lines captions file; caption windows go to ``log`` when given."""
    log = WindowLog() if log is None else log
    records = []
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise ManifestError(f"{path}:{lineno}: expected a JSON object per line")
            records.append(_record(obj, f"{path}:{lineno}", log))
    return records


def read_csv(path: Path, log: WindowLog | None = None) -> list[VideoRecord]:
    """The records of a CSV captions file; caption windows go to ``log`` when given."""
    log = WindowLog() if log is None else log
    grouped: dict[str, dict] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        if "video" not in cols or "caption" not in cols:
            raise ManifestError(f"{path}: header {cols} lacks 'video' and 'caption' columns")
        for lineno, row in enumerate(reader, 2):
            where = f"{path}:{lineno}"
            cap = row.get("caption")
            if cap is None or not cap.strip():
                raise ManifestError(f"{where}: empty caption")
            video = row["video"]
            key = row.get("video_id") or video
            entry = grouped.setdefault(key, {"video": video, "captions": [], "line": where, "lines": []})
            if entry["video"] != video:
                raise ManifestError(f"{where}: video_id {key!r} already names {entry['video']!r}, not {video!r}")
            for opt in ("video_id", "split", "duration_s"):
                value = row.get(opt)
                if value and entry.setdefault(opt, value) != value:
                    raise ManifestError(f"{where}: {opt} {value!r} contradicts {entry[opt]!r} "
                                        f"given earlier for {key!r} ({entry['line']})")
            entry["captions"].append({"caption": cap, "start_s": row.get("start_s"), "end_s": row.get("end_s")})
            entry["lines"].append(where)
    return [_record(entry, entry.pop("line"), log, entry.pop("lines")) for entry in grouped.values()]


def read(annotations: str | Path) -> DatasetRead:
    """Records and caption windows from a ``.jsonl`` or ``.csv`` captions file (a folder: its single
    such file); refused windows are in the notes."""
    path = Path(annotations)
    if path.is_dir():
        found = sorted(list(path.glob("*.jsonl")) + list(path.glob("*.csv")))
        if len(found) != 1:
            raise ManifestError(f"{path}: expected exactly one .jsonl or .csv captions file, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise ManifestError(f"{path}: captions file not found")
    readers = {".jsonl": read_jsonl, ".csv": read_csv}
    if path.suffix not in readers:
        raise ManifestError(f"{path}: unknown captions format {path.suffix!r} (use .jsonl or .csv)")
    log = WindowLog()
    try:
        records = readers[path.suffix](path, log)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a readable CSV file ({exc})") from None
    return DatasetRead(records, notes=log.notes(), windows=log.windows)


def scan(videos: str | Path) -> DatasetRead:
    """A videos folder without a captions file: every video file in it (:data:`VIDEO_EXTENSIONS`,
    subfolders included, hidden names skipped) as a record without captions, its id the path
    without extension, its split from the id's hash. Searchable by text, image, clip and "more like
    this"; training needs captions."""
    root = Path(videos)
    if not root.is_dir():
        raise ManifestError(f"{root}: no such videos folder")
    records = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.suffix.lower() in VIDEO_EXTENSIONS and path.is_file() and not any(
                part.startswith(".") for part in PurePosixPath(rel).parts):
            video_id = _default_id(rel)
            records.append(VideoRecord(video_id, rel, assign_split(video_id), []))
    if not records:
        raise ManifestError(f"{root}: no video files in it (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return DatasetRead(records, notes=[f"no captions file: {len(records)} video files found in {root}, "
                                       f"without captions (search works; training needs captions)"])


def read_records(annotations: str | Path) -> list[VideoRecord]:
    """The records of :func:`read` (without the windows)."""
    return read(annotations).records
