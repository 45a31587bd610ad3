"""Caption windows: where in its video a caption happens, in seconds (docs/datasets.md "Moments").

A sidecar table beside the manifest, ``datasets/<name>/windows.parquet`` (:data:`WINDOWS_FILE`),
one row per window (:class:`CaptionWindow`): ``video_id``, ``caption_index``, ``annotator``,
``start_s``, ``end_s`` (seconds from the start of the video, ``0 <= start_s < end_s <= duration``
when the duration is known) and ``text``. ``caption_index`` indexes the manifest record's
``captions`` for caption datasets (``folder``, ``synthetic``); for paragraph datasets (DiDeMo,
ActivityNet Captions: one caption, the paragraph) it is the sentence's position in the paragraph
and ``text`` holds the sentence. One caption may have several windows, one per ``annotator``
(DiDeMo). Paragraph-to-video retrieval never reads this table; it serves moment retrieval.

A window that is not valid (start >= end, negative, past the video's duration, not a number) is a
:class:`WindowError` naming the file, the line (or JSON key / list index) and the caption. Readers
collect windows through :class:`WindowLog`, which keeps the valid ones and turns each refused one
into a note of the prepare report: the caption itself stays in the manifest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic import atomic_path
from data.settings import Settings, get_settings

WINDOWS_FILE = "windows.parquet"
SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("caption_index", pa.int32(), nullable=False),
    pa.field("annotator", pa.int32(), nullable=False),
    pa.field("start_s", pa.float64(), nullable=False),
    pa.field("end_s", pa.float64(), nullable=False),
    pa.field("text", pa.string(), nullable=True),   # null: the manifest's captions[caption_index]
])


class WindowError(ValueError):
    """A window that cannot be kept; the message names the file, the line and the caption."""


@dataclass(frozen=True)
class CaptionWindow:
    """One annotator's window of one caption, in seconds from the start of the video."""

    video_id: str
    caption_index: int      # index in the manifest record's captions (paragraphs: sentence position)
    start_s: float
    end_s: float
    annotator: int = 0
    text: str | None = None  # the sentence, for paragraph datasets; None: the manifest's caption


def caption_where(location: str, video_id: str, caption: str) -> str:
    """``location`` (``file:line`` or ``file: key``) plus the caption and its video, for messages."""
    shown = caption if len(caption) <= 60 else caption[:57] + "..."
    return f"{location}: caption {shown!r} of video {video_id!r}"


def check_window(start_s, end_s, duration_s: float | None, *, where: str) -> tuple[float, float]:
    """``(start_s, end_s)`` as floats when ``0 <= start_s < end_s`` (and ``end_s <= duration_s``
    when the duration is known); else :class:`WindowError` starting with ``where``."""
    bounds = []
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise WindowError(f"{where}: {name} is {value!r}; expected a finite number of seconds")
        bounds.append(float(value))
    start, end = bounds
    shown = f"{where}: window [{start:g}, {end:g}] s"
    if start < 0:
        raise WindowError(f"{shown} starts before the video (negative start)")
    if start >= end:
        raise WindowError(f"{shown} does not end after it starts (start >= end)")
    if duration_s is not None and end > duration_s:
        raise WindowError(f"{shown} ends past the video's duration ({duration_s:g} s)")
    return start, end


def parse_window(start_s, end_s, duration_s: float | None, *, where: str) -> tuple[float, float] | None:
    """A window from raw annotation values: numbers, or text as a CSV cell holds it.

    ``None`` when both are absent (``None`` or blank text: the caption has no window); one without
    the other, text that is not a number, or a window :func:`check_window` refuses is a
    :class:`WindowError` starting with ``where``.
    """
    absent = [v is None or (isinstance(v, str) and not v.strip()) for v in (start_s, end_s)]
    if all(absent):
        return None
    if any(absent):
        given, missing = ("start_s", "end_s") if absent[1] else ("end_s", "start_s")
        raise WindowError(f"{where}: {given} is given without {missing}; give both or neither")
    values = []
    for name, value in (("start_s", start_s), ("end_s", end_s)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise WindowError(f"{where}: {name} is {value!r}; expected a number of seconds") from None
        values.append(value)
    return check_window(*values, duration_s, where=where)


@dataclass
class WindowLog:
    """What a reader collects: the windows kept and one message per window refused."""

    windows: list[CaptionWindow] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def add(self, video_id: str, caption_index: int, start_s, end_s, duration_s: float | None, *,
            where: str, annotator: int = 0, text: str | None = None) -> None:
        """Keep the window :func:`parse_window` accepts (nothing when both bounds are absent);
        record the refusal otherwise."""
        try:
            window = parse_window(start_s, end_s, duration_s, where=where)
        except WindowError as err:
            self.refuse(err)
            return
        if window is not None:
            self.windows.append(CaptionWindow(video_id, caption_index, *window, annotator, text))

    def refuse(self, err: WindowError) -> None:
        self.refused.append(str(err))

    def notes(self) -> list[str]:
        """Report lines: how many windows were kept, then each refusal."""
        if not self.windows and not self.refused:
            return []
        head = f"caption windows: {len(self.windows)} kept in {WINDOWS_FILE}"
        if self.refused:
            head += (f", {len(self.refused)} refused (left out of {WINDOWS_FILE}; their captions stay "
                     f"in the manifest)")
        return [head] + [f"window refused: {message}" for message in self.refused]


def write_windows(path: Path, windows: Iterable[CaptionWindow]) -> Path:
    """Write the windows table atomically and durably (:func:`data.atomic.atomic_path`)."""
    rows = list(windows)
    columns = {name: [getattr(w, name) for w in rows] for name in SCHEMA.names}
    with atomic_path(path) as tmp:
        pq.write_table(pa.table(columns, schema=SCHEMA), tmp)
    return Path(path)


def replace_windows(path: Path, windows: list[CaptionWindow]) -> None:
    """Beside a freshly written manifest: write ``windows``, or, when there are none, remove the
    file a previous prepare left (a sidecar never outlives the captions it belongs to)."""
    if windows:
        write_windows(path, windows)
    else:
        Path(path).unlink(missing_ok=True)


def read_windows(path: Path) -> list[CaptionWindow]:
    """The windows written by :func:`write_windows`; ``[]`` when there is no such file (the dataset
    places no caption in time). An unreadable file is a :class:`WindowError` naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        table = pq.read_table(path).select(SCHEMA.names).cast(SCHEMA)
    except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
        raise WindowError(f"{path}: not a readable windows table ({exc.__class__.__name__}: {exc})") from exc
    return [CaptionWindow(**row) for row in table.to_pylist()]


def windows_path(dataset: str, settings: Settings | None = None) -> Path:
    """``datasets/<dataset>/windows.parquet``, beside the dataset's manifest."""
    return (settings or get_settings()).dataset_dir(dataset) / WINDOWS_FILE


def group_windows(windows: Iterable[CaptionWindow]) -> dict[tuple[str, int], np.ndarray]:
    """``(video_id, caption_index) -> [A, 2]`` seconds, one row per annotator (in annotator order):
    the ground truth of one moment query, as :mod:`data.moment_metrics` takes it."""
    grouped: dict[tuple[str, int], list[CaptionWindow]] = {}
    for w in windows:
        grouped.setdefault((w.video_id, w.caption_index), []).append(w)
    return {key: np.array([[w.start_s, w.end_s] for w in sorted(ws, key=lambda w: w.annotator)])
            for key, ws in grouped.items()}
