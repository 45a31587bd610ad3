"""The manifest: one row per video of a dataset (docs/design.md "Data at rest").

Columns: ``video_id`` (string, unique), ``path`` (relative to the dataset's video root),
``split`` (string), ``duration_s`` (float, nullable), ``captions`` (list<string>, non-empty),
``fingerprint`` (the file's content fingerprint, ``<size>-<mtime_ns>-<hash>`` or ``missing``) and
``captions_digest`` (digest of the captions; text rows carry per-caption digests), both defined
once in :mod:`data.fingerprint`.
The video root is kept in the Parquet schema metadata (``tvr.video_root``) so a manifest
is self-contained: relative to the manifest's own folder when :func:`write_manifest` is given the
``TVR_HOME`` the root lies in (``.`` for the synthetic set, whose videos sit beside its manifest), so
a copied or moved ``TVR_HOME`` reads its own videos; absolute otherwise (a root outside
``TVR_HOME``, and manifests written before relative roots, which still read). In memory
(:attr:`Manifest.video_root` and the table's metadata) it is always absolute. Readers add facts
such as the split protocol as further ``tvr.<key>`` entries (:attr:`Manifest.metadata`).

Validation on build (documented in the README):
- errors (:class:`ManifestError`): duplicate ``video_id``, an id that breaks the path-component
  rule of :func:`data.names.name_problem` (empty, leading or trailing whitespace, a leading ``.``,
  a ``\\``, a NUL, newline or other control character, over 255 bytes; ``/`` only between such
  parts: the folder reader's ``clips/cat``), an absolute path or one with ``..``, a video with no
  captions, a caption that is empty or not a string; :func:`read_manifest` checks the same on
  every read, so a hand-edited manifest cannot smuggle an absolute path or ``..`` past it;
- at open time :meth:`Manifest.video_path` refuses a path that resolves outside the video root
  (a symlink pointing elsewhere); :meth:`Manifest.require_video_root` (called before decoding)
  refuses a video root that does not exist, in one line naming the manifest and ``--videos``;
- reported, not fatal: video files missing on disk (``BuildReport.missing``); pass
  ``strict_missing=True`` to make them an error.
"""
from __future__ import annotations

import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic import atomic_path
from data.fingerprint import MISSING, captions_digest, file_fingerprint, fingerprint_stat, stat_key
from data.names import name_problem

SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
        pa.field("duration_s", pa.float64(), nullable=True),
        pa.field("captions", pa.list_(pa.string()), nullable=False),
        pa.field("fingerprint", pa.string(), nullable=True),   # null: not recorded (older manifest)
        pa.field("captions_digest", pa.string(), nullable=False),
    ]
)
REQUIRED = ("video_id", "path", "split", "duration_s", "captions")  # manifests older than fingerprints
ROOT_KEY = b"tvr.video_root"
DATASET_KEY = b"tvr.dataset"
UNCAPTIONED_KEY = b"tvr.uncaptioned"     # "true": built from a folder of videos without captions
META_PREFIX = b"tvr."


class ManifestError(ValueError):
    """A manifest cannot be built or read; the message names the source and the problem."""


@dataclass(frozen=True)
class VideoRecord:
    """One video as a dataset reader yields it."""

    video_id: str
    path: str
    split: str
    captions: Sequence[str]
    duration_s: float | None = None


@dataclass
class BuildReport:
    """What :func:`build_manifest` found besides errors."""

    n_videos: int = 0
    splits: dict[str, int] = field(default_factory=dict)
    n_captions: int = 0
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reader's remarks (e.g. long paragraphs)

    def summary(self) -> str:
        splits = ", ".join(f"{k}={v}" for k, v in sorted(self.splits.items()))
        text = f"{self.n_videos} videos ({splits}), {self.n_captions} captions"
        if self.missing:
            text += f"; {len(self.missing)} video files missing"
        return text


def check_relative_path(path: str, source: str = "manifest") -> str:
    """Return ``path`` in POSIX form, refusing absolute paths and ``..`` components."""
    if not isinstance(path, str) or not path.strip():
        raise ManifestError(f"{source}: empty video path")
    if _bad_chars(path):
        raise ManifestError(f"{source}: path {path!r} contains a control character (NUL, newline, ...) or an "
                            f"unpaired surrogate")
    posix = PurePosixPath(path.replace("\\", "/"))
    if posix.is_absolute() or Path(path).is_absolute():
        raise ManifestError(f"{source}: path {path!r} is absolute; paths must be relative to the video root")
    if ".." in posix.parts:
        raise ManifestError(f"{source}: path {path!r} contains '..' and could escape the video root")
    return str(posix)


def _bad_chars(text: str) -> bool:
    """Control characters (NUL, newline, ...) or unpaired surrogates (not writable as UTF-8)."""
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in text)


def check_video_id(video_id: object, source: str = "manifest") -> str:
    """``video_id`` unchanged when it obeys the path-component rule of :func:`data.names.name_problem`
    (nested: ``clips/cat`` of the folder reader), else :class:`ManifestError` naming it and the problem."""
    problem = name_problem(video_id, nested=True)
    if problem is not None:
        raise ManifestError(f"{source}: video id {video_id!r} {problem}")
    return video_id  # type: ignore[return-value]


def build_manifest(
    records: Iterable[VideoRecord],
    video_root: str | Path,
    *,
    dataset: str = "",
    source: str = "annotations",
    strict_missing: bool = False,
    metadata: dict[str, str] | None = None,
    known: dict[str, str] | None = None,
    uncaptioned_ok: bool = False,
) -> tuple[pa.Table, BuildReport]:
    """Validate ``records`` and return the manifest table plus a report.

    ``source`` names the annotation file in error messages; ``metadata`` entries are stored in the
    schema metadata as ``tvr.<key>`` (read back by :attr:`Manifest.metadata`). ``known`` maps a
    relative path to the fingerprint a previous manifest recorded for it: reused without reading the
    file again while the file's size and mtime still match. ``uncaptioned_ok``: records may have no
    caption (a folder of videos prepared without a captions file), else that is an error.
    """
    root = Path(video_root)
    report = BuildReport()
    seen: set[str] = set()
    columns: dict[str, list] = {name: [] for name in SCHEMA.names}
    for rec in records:
        where = f"{source}: video {rec.video_id!r}"
        check_video_id(rec.video_id, source)
        if rec.video_id in seen:
            raise ManifestError(f"{where}: duplicate video id")
        seen.add(rec.video_id)
        path = check_relative_path(rec.path, where)
        safe_video_path(root, path, where)
        captions = list(rec.captions)
        if not captions and not uncaptioned_ok:
            raise ManifestError(f"{where}: no captions")
        for i, cap in enumerate(captions):
            if not isinstance(cap, str) or not cap.strip():
                raise ManifestError(f"{where}: caption {i} is {cap!r}; expected a non-empty string")
            if any(unicodedata.category(ch) == "Cs" for ch in cap):
                raise ManifestError(f"{where}: caption {i} contains an unpaired surrogate (not valid UTF-8)")
        if _bad_chars(str(rec.split)):
            raise ManifestError(f"{where}: split {rec.split!r}; expected a name without control characters")
        full = root / path
        old = (known or {}).get(path)
        now = stat_key(full)
        fingerprint = old if now is not None and old is not None and fingerprint_stat(old) == now else \
            file_fingerprint(full)
        if fingerprint == MISSING or not full.is_file():
            report.missing.append(rec.video_id)
        columns["fingerprint"].append(fingerprint)
        columns["captions_digest"].append(captions_digest([c.strip() for c in captions]))
        columns["video_id"].append(rec.video_id)
        columns["path"].append(path)
        columns["split"].append(str(rec.split))
        columns["duration_s"].append(None if rec.duration_s is None else float(rec.duration_s))
        columns["captions"].append([c.strip() for c in captions])
        report.splits[str(rec.split)] = report.splits.get(str(rec.split), 0) + 1
        report.n_captions += len(captions)
    report.n_videos = len(seen)
    if report.n_videos == 0:
        raise ManifestError(f"{source}: no videos")
    if strict_missing and report.missing:
        shown = ", ".join(report.missing[:5])
        raise ManifestError(f"{source}: {len(report.missing)} video files missing under {root} (first: {shown})")
    meta = {META_PREFIX + k.encode(): str(v).encode() for k, v in (metadata or {}).items()}
    meta.update({ROOT_KEY: str(root.resolve()).encode(), DATASET_KEY: dataset.encode()})
    if uncaptioned_ok:
        meta[UNCAPTIONED_KEY] = b"true"
    table = pa.table(columns, schema=SCHEMA).replace_schema_metadata(meta)
    return table, report


def write_manifest(table: pa.Table, path: str | Path, *, home: str | Path | None = None) -> Path:
    """Write atomically and durably (:func:`data.atomic.atomic_path`: temporary name, fsync, rename,
    fsync the folder). ``home``: the ``TVR_HOME`` of ``path``; when both the video root and ``path``
    lie inside it, the root is stored relative to ``path``'s folder (see the module docstring)."""
    path = Path(path)
    meta = dict(table.schema.metadata or {})
    if home is not None and ROOT_KEY in meta:
        meta[ROOT_KEY] = _stored_root(Path(meta[ROOT_KEY].decode()), path, Path(home)).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(meta), tmp)
    return path


def _stored_root(root: Path, manifest: Path, home: Path) -> str:
    """``root`` as stored in ``manifest``: relative to its folder (POSIX) when both lie inside ``home``."""
    home, folder = home.resolve(), manifest.parent.resolve()
    if root.is_absolute() and root.is_relative_to(home) and folder.is_relative_to(home):
        return PurePosixPath(Path(os.path.relpath(root, folder))).as_posix()
    return str(root)


def write_missing_report(missing: Sequence[str], path: str | Path) -> Path:
    """One missing video id per line, so users can see exactly which files to fetch."""
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{vid}\n" for vid in missing), encoding="utf-8")
    return Path(path)


@dataclass(frozen=True)
class Manifest:
    """A manifest read back from disk."""

    table: pa.Table
    video_root: Path
    dataset: str
    path: Path | None = None      # the file it was read from (None: built in memory)

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def video_ids(self) -> list[str]:
        return self.table.column("video_id").to_pylist()

    def split(self, name: str) -> "Manifest":
        mask = pa.compute.equal(self.table.column("split"), name)
        return Manifest(self.table.filter(mask), self.video_root, self.dataset, self.path)

    @property
    def metadata(self) -> dict[str, str]:
        """The ``tvr.<key>`` schema entries a reader recorded (split protocol, text unit, ...)."""
        meta = self.table.schema.metadata or {}
        return {k[len(META_PREFIX):].decode(): v.decode() for k, v in meta.items()
                if k.startswith(META_PREFIX) and k not in (ROOT_KEY, DATASET_KEY)}

    def records(self) -> list[VideoRecord]:
        return [
            VideoRecord(r["video_id"], r["path"], r["split"], r["captions"], r["duration_s"])
            for r in self.table.to_pylist()
        ]

    def abs_path(self, relative: str) -> Path:
        return self.video_root / relative

    def require_video_root(self) -> None:
        """:class:`ManifestError` (one line: the manifest, the root, the option that fixes it) when
        the video root is not a folder: moved, deleted, or a copied ``TVR_HOME`` whose manifest was
        written with an absolute root."""
        if self.video_root.is_dir():
            return
        reader = self.metadata.get("reader", "<dataset>")
        fix = ("python -m data.prepare synthetic generates it again" if reader == "synthetic" else
               f"rebuild the manifest with python -m data.prepare {reader} --annotations DIR --videos DIR"
               f"{f' --name {self.dataset}' if self.dataset and self.dataset != reader else ''}, "
               f"--videos naming where the videos are now")
        raise ManifestError(f"{self.path or 'manifest'}: video root {self.video_root} does not exist (moved or "
                            f"deleted?); {fix}")

    def video_path(self, relative: str) -> Path:
        """``relative`` under the video root; :class:`ManifestError` if it resolves outside it."""
        return safe_video_path(self.video_root, relative)

    def fingerprints(self) -> dict[str, str]:
        """``video_id -> fingerprint`` as recorded when the manifest was built."""
        return dict(zip(self.video_ids, self.table.column("fingerprint").to_pylist()))

    def captions_digests(self) -> dict[str, str]:
        return dict(zip(self.video_ids, self.table.column("captions_digest").to_pylist()))


def safe_video_path(video_root: str | Path, relative: str, source: str = "") -> Path:
    """``video_root / relative``, refused (:class:`ManifestError`) when the path is absolute, has
    ``..`` or resolves (through symlinks) to a place outside the video root."""
    rel = check_relative_path(relative, source or f"video root {video_root}")
    root = Path(video_root).resolve()
    full = root / rel
    real = Path(os.path.realpath(full))
    if real != root and root not in real.parents:
        raise ManifestError(f"{source + ': ' if source else ''}{full} resolves to {real}, outside the video root "
                            f"{root} (a symlink out of the videos folder?); refusing to open it")
    return full


def read_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest written by :func:`write_manifest` (:class:`ManifestError` if not one).

    Manifests written before fingerprints existed get ``fingerprint`` null (the files are hashed
    when needed) and their caption digests computed here.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no manifest here; build it first (python -m data.prepare ...)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc.__class__.__name__}: {exc})") from exc
    missing_cols = [n for n in REQUIRED if n not in table.column_names]
    if missing_cols:
        raise ManifestError(f"{path}: not a manifest, columns {missing_cols} missing")
    if "captions_digest" not in table.column_names:
        caps = table.column("captions").to_pylist()
        table = table.append_column("captions_digest", pa.array(
            [captions_digest(c) if isinstance(c, list) else "" for c in caps], pa.string()))
    if "fingerprint" not in table.column_names:
        table = table.append_column("fingerprint", pa.nulls(table.num_rows, pa.string()))
    meta = table.schema.metadata or {}
    try:
        table = table.select(SCHEMA.names).cast(SCHEMA, safe=True).replace_schema_metadata(meta)
    except (pa.ArrowException, ValueError) as exc:
        raise ManifestError(f"{path}: columns of the wrong type ({exc})") from exc
    _validate_rows(table, str(path), uncaptioned_ok=meta.get(UNCAPTIONED_KEY) == b"true")
    root = (path.parent / meta.get(ROOT_KEY, b".").decode(errors="replace")).resolve()
    table = table.replace_schema_metadata({**meta, ROOT_KEY: str(root).encode()})   # absolute in memory
    dataset = meta.get(DATASET_KEY, b"").decode(errors="replace")
    return Manifest(table, root, dataset, path)


def _validate_rows(table: pa.Table, source: str, uncaptioned_ok: bool = False) -> None:
    """The build-time checks again, on what was read (ids, paths, captions; none allowed when the
    manifest was built with ``uncaptioned_ok``)."""
    seen: set[str] = set()
    cols = [table.column(n).to_pylist() for n in ("video_id", "path", "split", "captions")]
    for vid, rel, split, captions in zip(*cols):
        check_video_id(vid, source)
        if vid in seen:
            raise ManifestError(f"{source}: video {vid!r}: duplicate video id")
        seen.add(vid)
        where = f"{source}: video {vid!r}"
        check_relative_path(rel, where)
        if split is None:
            raise ManifestError(f"{where}: no split")
        if (not captions and not uncaptioned_ok) or any(not isinstance(c, str) or not c.strip() for c in captions):
            raise ManifestError(f"{where}: captions {captions!r}; expected a non-empty list of non-empty strings")


def manifest_fingerprint(manifest: Manifest) -> str:
    """Short hash of (video_id, path) pairs: what an index or a run covers."""
    import hashlib

    h = hashlib.sha256()
    for vid, p in zip(manifest.video_ids, manifest.table.column("path").to_pylist()):
        h.update(json.dumps([vid, p]).encode())
    return h.hexdigest()[:16]
