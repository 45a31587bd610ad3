"""Shared helpers for the dataset readers (data/msrvtt.py, msvd.py, lsmdc.py, didemo.py, activitynet.py).

Every problem in an annotation file becomes a :class:`data.manifest.ManifestError` whose message
starts with the file (and line or key) and says what is wrong, except a caption's bad time window:
that window alone is refused and reported (:class:`data.windows.WindowLog`), the caption is kept.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence, TypeVar

from data.manifest import ManifestError, VideoRecord
from data.windows import CaptionWindow

TOKEN_LIMIT = 64  # text length the models are trained with, in CLIP BPE tokens incl. start/end


@dataclass(frozen=True)
class DatasetInfo:
    """How a dataset is evaluated (docs/methods.md §5); recorded in every manifest it builds."""

    text_unit: str      # "caption": each caption is a query; "paragraph": one joined text per video
    test_queries: str   # which texts of the test split are the queries
    splits: str         # the published split sizes this reader reproduces


@dataclass
class DatasetRead:
    """What a reader returns: the records plus facts for the manifest and the prepare report, and
    the windows of the captions it places in time (``windows.parquet``, :mod:`data.windows`)."""

    records: list[VideoRecord]
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    windows: list[CaptionWindow] = field(default_factory=list)


def find_file(folder: Path, *names: str) -> Path:
    """The first of ``names`` present in ``folder`` (a file given directly is returned as is)."""
    if folder.is_file():
        return folder
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise ManifestError(f"{folder}: none of {', '.join(names)} found (see docs/datasets.md)")


def load_json(path: Path):
    """Parsed JSON, or a ManifestError naming the file, line and column of the syntax error."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: file not found") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno})") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not UTF-8 text ({exc.reason})") from exc


def expect(value, kind: type | tuple, where: str, what: str):
    """``value`` if it is an instance of ``kind``, else a ManifestError saying what was expected."""
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ManifestError(f"{where}: expected {what}, got {type(value).__name__} {_short(value)}")
    return value


def text(value, where: str) -> str:
    """A caption or sentence: a non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ManifestError(f"{where}: caption is {_short(value)}; expected a non-empty string")
    return value.strip()


def read_id_list(path: Path, header: str | None = None) -> dict[str, int]:
    """Ids one per line, in file order, each mapped to its line number (for error messages).

    Blank lines and a first line equal to ``header`` are skipped. A duplicate id or a line with a
    comma or tab (a file with the wrong columns) is an error naming its line.
    """
    seen: dict[str, int] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as exc:
        raise ManifestError(f"{path}: file not found") from exc
    for lineno, line in enumerate(lines, 1):
        vid = line.strip()
        if not vid or (lineno == 1 and header is not None and vid == header):
            continue
        if "," in vid or "\t" in vid:
            raise ManifestError(f"{path}:{lineno}: expected one video id per line, got {vid!r}")
        if vid in seen:
            raise ManifestError(f"{path}:{lineno}: video id {vid!r} already listed on line {seen[vid]}")
        seen[vid] = lineno
    if not seen:
        raise ManifestError(f"{path}: no video ids")
    return seen


def hold_out(ids: Sequence[str], n: int, where: str) -> set[str]:
    """``n`` of ``ids`` chosen deterministically (smallest SHA-256 of the id): the same ids every run,
    whatever the order of the file."""
    if n < 0 or n >= len(ids):
        raise ManifestError(f"{where}: cannot hold out {n} of {len(ids)} training videos as validation "
                            f"(choose a smaller --val-size)")
    return set(sorted(ids, key=lambda v: hashlib.sha256(v.encode()).hexdigest())[:n])


T = TypeVar("T")


def in_time_order(items: Iterable[tuple[tuple, T]]) -> list[T]:
    """The items of ``(sort_key, item)`` pairs, sorted by key (stable): a paragraph's sentence order."""
    return [item for _, item in sorted(items, key=lambda pair: pair[0])]


@lru_cache(maxsize=1)
def _clip_tokenizer():
    import open_clip  # heavy (imports torch): only when paragraphs are counted

    return open_clip.get_tokenizer("ViT-B-32")


def clip_token_count(paragraph: str) -> int:
    """Length in CLIP BPE tokens (open_clip's ViT-B-32 tokenizer) plus the start and end tokens."""
    return len(_clip_tokenizer().encode(paragraph)) + 2


def paragraph_notes(records: Sequence[VideoRecord], limit: int = TOKEN_LIMIT) -> tuple[list[str], dict[str, str]]:
    """Report lines and manifest metadata on paragraphs longer than ``limit`` tokens, per split."""
    notes, meta = [], {}
    by_split: dict[str, list[int]] = {}
    for rec in records:
        by_split.setdefault(rec.split, []).append(clip_token_count(rec.captions[0]))
    for split, counts in sorted(by_split.items()):
        over = sum(c > limit for c in counts)
        notes.append(f"{split}: {over} of {len(counts)} paragraphs exceed {limit} CLIP tokens "
                     f"(longest {max(counts)}, median {sorted(counts)[len(counts) // 2]}); "
                     f"longer texts are truncated by the text encoder")
        meta[f"paragraphs_over_{limit}_tokens.{split}"] = str(over)
    return notes, meta


def _short(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."
