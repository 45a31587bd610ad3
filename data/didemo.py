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

Windows (``windows.parquet``, :mod:`data.windows`): every annotator's chunk pair of a description
is kept as a window of the description's sentence in the paragraph, by :func:`chunk_window`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data.annotations import (DatasetInfo, DatasetRead, expect, in_time_order, load_json, paragraph_notes,
                              read_id_list, text)
from data.manifest import ManifestError, VideoRecord
from data.videofiles import VideoFiles
from data.windows import WindowError, WindowLog, caption_where, check_window

INFO = DatasetInfo(
    text_unit="paragraph",
    test_queries="one paragraph per test video (its descriptions joined in time order)",
    splits="8,392 / 1,065 / 1,004",
)
FILES = {"train": "train_data.json", "val": "val_data.json", "test": "test_data.json"}
LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
CHUNK_S = 5.0     # seconds per chunk
MAX_CHUNKS = 6    # videos are cut to at most 30 s: chunks 0..5


@dataclass(frozen=True)
class Moment:
    """One description of a DiDeMo file."""

    sentence: str
    times: list                 # [[start chunk, end chunk], ...], one pair per annotator
    num_segments: int | None    # the video's number of chunks (the last one may be partial)
    where: str                  # "<file>: [<list index>]"


def _mean_times(times, where: str) -> tuple[float, float]:
    expect(times, list, where, "a list of [start, end] chunk pairs")
    pairs = [expect(pair, list, f"{where}[{i}]", "a [start, end] pair") for i, pair in enumerate(times)]
    if not pairs or any(len(p) != 2 or not all(isinstance(t, (int, float)) for t in p) for p in pairs):
        raise ManifestError(f"{where}: expected a non-empty list of numeric [start, end] pairs, got {times!r}")
    return sum(p[0] for p in pairs) / len(pairs), sum(p[1] for p in pairs) / len(pairs)


def read_file(path: Path) -> dict[str, list[tuple[tuple, Moment]]]:
    """video -> [((mean start, mean end, position), moment)] of one DiDeMo file."""
    moments = expect(load_json(path), list, str(path), "a JSON list of moments")
    by_video: dict[str, list[tuple[tuple, Moment]]] = {}
    for i, moment in enumerate(moments):
        where = f"{path}: [{i}]"
        expect(moment, dict, where, "an object with 'video', 'description', 'times'")
        video = moment.get("video")
        if not isinstance(video, str) or not video:
            raise ManifestError(f"{where}.video: expected a non-empty string, got {video!r}")
        sentence = text(moment.get("description"), f"{where}.description")
        times = moment.get("times")
        start, end = _mean_times(times, f"{where}.times")
        segments = moment.get("num_segments")
        segments = segments if isinstance(segments, int) and 1 <= segments <= MAX_CHUNKS else None
        by_video.setdefault(video, []).append(((start, end, i), Moment(sentence, times, segments, where)))
    if not by_video:
        raise ManifestError(f"{path}: no moments")
    return by_video


def chunk_window(pair: list, num_segments: int | None, duration_s: float | None, *,
                 where: str) -> tuple[float, float]:
    """Chunk pair ``[s, e]`` (inclusive indices) -> seconds ``[5 s, 5 (e + 1)]``, the end clamped to
    ``duration_s`` when known. :class:`WindowError` unless ``s`` and ``e`` are whole numbers with
    ``0 <= s <= e < num_segments`` (6 when unknown), or when the clamped window is empty (the chunk
    starts at or after the video's end)."""
    chunks = num_segments or MAX_CHUNKS
    if not all(float(c).is_integer() for c in pair):
        raise WindowError(f"{where}: chunks {pair!r} are not whole chunk indices")
    first, last = (int(c) for c in pair)
    if not 0 <= first <= last < chunks:
        raise WindowError(f"{where}: chunks {pair!r} are not 0 <= start <= end < {chunks} "
                          f"(the video's number of {CHUNK_S:g}-s chunks)")
    end = CHUNK_S * (last + 1)
    end = end if duration_s is None else min(end, duration_s)
    return check_window(CHUNK_S * first, end, duration_s, where=where)


def read(annotations: Path, videos: Path) -> DatasetRead:
    folder = Path(annotations)
    present = {split: folder / f for split, f in FILES.items() if (folder / f).is_file()}
    if not present:
        raise ManifestError(f"{folder}: none of {', '.join(FILES.values())} found (see docs/datasets.md)")
    index = VideoFiles(videos)
    records, source, listed_notes, log = [], {}, [], WindowLog()
    for split, path in present.items():
        moments = read_file(path)
        keep = _listed(folder / LISTS[split], moments, path)
        if keep is not None:
            listed_notes.append(f"{split}: {len(keep)} of the {len(moments)} videos of {path.name} are listed in "
                                f"{LISTS[split]} (standard protocol); {len(moments) - len(keep)} left out")
        for video, keyed in moments.items():
            if keep is not None and video not in keep:
                continue
            if video in source:
                raise ManifestError(f"{path}: video {video!r} is also in {source[video].name}")
            source[video] = path
            ordered = in_time_order(keyed)
            records.append(VideoRecord(video, index.path_for(video), split, [" ".join(m.sentence for m in ordered)]))
            for position, moment in enumerate(ordered):
                _keep_windows(log, video, position, moment)
    notes, metadata = paragraph_notes(records)
    notes[:0] = [f"splits from {', '.join(p.name for p in present.values())}"] + listed_notes
    protocol = "standard (split lists)" if listed_notes else "raw JSON files (no split lists found)"
    return DatasetRead(records, {"split_protocol": protocol, **metadata}, notes + log.notes(), log.windows)


def _keep_windows(log: WindowLog, video: str, position: int, moment: Moment) -> None:
    """Each annotator's window of ``moment`` (the files give no duration: the chunk bounds as is)."""
    for annotator, pair in enumerate(moment.times):
        where = caption_where(f"{moment.where}.times[{annotator}]", video, moment.sentence)
        try:
            start, end = chunk_window(pair, moment.num_segments, None, where=where)
        except WindowError as err:
            log.refuse(err)
            continue
        log.add(video, position, start, end, None, where=where, annotator=annotator, text=moment.sentence)


def _listed(list_path: Path, moments: dict, data_path: Path) -> set[str] | None:
    """The ids of ``list_path`` (None when absent); each must be a video of ``data_path``."""
    if not list_path.is_file():
        return None
    ids = read_id_list(list_path)
    for vid, lineno in ids.items():
        if vid not in moments:
            raise ManifestError(f"{list_path}:{lineno}: video {vid!r} is not in {data_path.name}")
    return set(ids)
