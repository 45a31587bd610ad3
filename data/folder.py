"""A user's own collection: a videos folder plus a CSV or JSON Lines captions file.

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
"""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path, PurePosixPath

from data.manifest import ManifestError, VideoRecord

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


def _record(obj: dict, where: str) -> VideoRecord:
    video = obj.get("video")
    if not isinstance(video, str) or not video.strip():
        raise ManifestError(f"{where}: missing or empty 'video' (a path relative to the videos folder)")
    captions = obj.get("captions")
    if isinstance(captions, str) or not isinstance(captions, list):
        raise ManifestError(f"{where}: 'captions' must be a list of strings, got {type(captions).__name__}")
    for i, cap in enumerate(captions):
        if not isinstance(cap, str) or not cap.strip():
            raise ManifestError(f"{where}: caption {i} is {cap!r}; expected a non-empty string")
    vid = obj.get("video_id") or _default_id(video)
    split = obj.get("split") or assign_split(str(vid))
    duration = obj.get("duration_s")
    if duration is not None:
        try:
            duration = float(duration)
        except (TypeError, ValueError):
            raise ManifestError(f"{where}: 'duration_s' is {duration!r}; expected seconds as a number") from None
    return VideoRecord(str(vid), video, str(split), captions, duration)


def read_jsonl(path: Path) -> list[VideoRecord]:
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
            records.append(_record(obj, f"{path}:{lineno}"))
    return records


def read_csv(path: Path) -> list[VideoRecord]:
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
            entry = grouped.setdefault(key, {"video": video, "captions": [], "line": where})
            if entry["video"] != video:
                raise ManifestError(f"{where}: video_id {key!r} already names {entry['video']!r}, not {video!r}")
            for opt in ("video_id", "split", "duration_s"):
                value = row.get(opt)
                if value and entry.setdefault(opt, value) != value:
                    raise ManifestError(f"{where}: {opt} {value!r} contradicts {entry[opt]!r} "
                                        f"given earlier for {key!r} ({entry['line']})")
            entry["captions"].append(cap)
    return [_record(entry, entry.pop("line")) for entry in grouped.values()]


def read_records(annotations: str | Path) -> list[VideoRecord]:
    """Records from a ``.jsonl`` or ``.csv`` captions file (a folder: its single such file)."""
    path = Path(annotations)
    if path.is_dir():
        found = sorted(list(path.glob("*.jsonl")) + list(path.glob("*.csv")))
        if len(found) != 1:
            raise ManifestError(f"{path}: expected exactly one .jsonl or .csv captions file, found {len(found)}")
        path = found[0]
    if not path.is_file():
        raise ManifestError(f"{path}: captions file not found")
    try:
        if path.suffix == ".jsonl":
            return read_jsonl(path)
        if path.suffix == ".csv":
            return read_csv(path)
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise ManifestError(f"{path}: not a readable CSV file ({exc})") from None
    raise ManifestError(f"{path}: unknown captions format {path.suffix!r} (use .jsonl or .csv)")
