"""The feature store; long because it is one protocol: writer, reader and tidier share its locks and markers.

Parquet shards per dataset / modality / extractor-id.

Layout (docs/design.md "Data at rest")::

    features/<dataset>/<modality>/<extractor-id>/
        _extractor.json          what the id stands for (model, weights, fps, size, code version)
        part-00000.parquet       one row per video (text: one row per caption)
        part-00000.done          completion marker, written last (rows, video ids)
        .lock                    the folder lock (shared: writers and readers; exclusive: tidying)
        .next-shard              the shard-number counter (changed only under its own lock)
        _quarantine/             shards that could not be read or had the wrong schema, moved aside

Row columns: ``video_id`` (string), ``values`` (list of fixed-size float32 lists: ``[T, D]``),
``timestamps_s`` (list<float64>, ``[T]`` seconds from the start of the video, or empty where time
has no meaning, e.g. text tokens), ``status`` (``ok`` / ``empty`` / ``failed``), ``error`` (string or
null), ``fingerprint`` (the content the row came from: the video file's fingerprint, or for a
modality keyed by captions the row's own caption digest over its index and text; see
:mod:`data.fingerprint`), plus the extra
columns an extractor declares (e.g. ``caption_index`` and ``eot_index`` for text, ``has_audio`` for
audio). Every shard's Parquet schema metadata carries ``tvr.extractor_id``, ``tvr.modality``,
``tvr.dim`` and ``tvr.random_weights`` (and the RANDOM WEIGHTS warning), so a copied file still
says what it is.

Guarantees, with any number of writers (processes, Dask workers) on one folder at once:
- shard numbers are reserved under an exclusive lock on ``.next-shard`` and only grow, so two
  writers never get the same number and a newer shard always has a higher number;
- a shard is written under a temporary name, renamed, and only then gets its ``.done`` marker, each
  fsynced, renamed, its folder fsynced (:mod:`data.atomic`: a power cut leaves no marker without its
  shard); a writer holds the shared folder lock meanwhile. Readers ignore shards without a marker;
- debris (temporary files, unmarked shards and orphan markers of killed writers) is removed only
  by :meth:`FeatureSet.tidy`, which runs only when it gets the exclusive folder lock without
  waiting, i.e. when no writer is in the middle of a shard (the kernel frees a dead writer's lock);
- all rows of one video live in one shard; if a video appears in several shards (re-extracted
  after a change, a retried failure, two runs racing), the newest shard wins, and :meth:`tidy`
  compacts superseded rows away (rewrite a shard with only its current rows, commit it, then
  delete the old one, marker first), so at rest a plain glob of ``part-*.parquet`` holds exactly one
  current row per video (per caption for text) for pandas, DuckDB or Polars;
- a shard that cannot be read, or whose schema or dimension does not match ``_extractor.json``, is
  moved to ``_quarantine/`` with a log line naming it and its videos; its videos then count as not
  done, so the next extraction redoes them.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import locks
from data.atomic import atomic_path, replace_durably, write_json_atomic
from data.provenance import random_weights_label

log = logging.getLogger("tvr.store")

STATUSES = ("ok", "empty", "failed")
DONE_STATUSES = ("ok", "empty")  # done: resuming skips these (a recorded failure too: VideoState.failed_for)
FINAL_FAILURE = "worker died while decoding"  # the error of a video whose decoding killed its process
SHARD_RE = re.compile(r"^part-(\d{5})\.parquet$")
LOCK_FILE = ".lock"
COUNTER_FILE = ".next-shard"
QUARANTINE = "_quarantine"
KEYED_BY = ("file", "captions")


class StoreError(ValueError):
    """A shard or extractor folder does not match what the reader expects."""


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that changes the numbers of one extractor.

    ``params`` holds model name, weights (pretrained tag, file + sha256, or ``random``), fps,
    size, code version...; the extractor-id is a short hash of (modality, dim, params).
    ``extra_columns`` maps extra per-row column names to Arrow types. ``keyed_by`` says which
    content a row's ``fingerprint`` names: ``file`` (the video file) or ``captions`` (its captions).
    """

    modality: str
    dim: int
    params: Mapping[str, Any]
    random_weights: bool
    extra_columns: Mapping[str, pa.DataType] = field(default_factory=dict)
    keyed_by: str = "file"

    def __post_init__(self):
        if self.keyed_by not in KEYED_BY:
            raise StoreError(f"keyed_by {self.keyed_by!r}: expected one of {KEYED_BY}")

    @property
    def extractor_id(self) -> str:
        key = json.dumps(
            {"modality": self.modality, "dim": self.dim, "params": dict(self.params)},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    def schema(self) -> pa.Schema:
        fields = [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("values", pa.list_(pa.list_(pa.float32(), self.dim))),
            pa.field("timestamps_s", pa.list_(pa.float64())),
            pa.field("status", pa.string(), nullable=False),
            pa.field("error", pa.string()),
            pa.field("fingerprint", pa.string()),
        ]
        fields += [pa.field(name, typ) for name, typ in self.extra_columns.items()]
        meta = {"tvr.extractor_id": self.extractor_id, "tvr.modality": self.modality, "tvr.dim": str(self.dim),
                "tvr.random_weights": str(self.random_weights).lower(), "tvr.keyed_by": self.keyed_by}
        if self.random_weights:
            meta["tvr.WARNING"] = random_weights_label()
        return pa.schema(fields, metadata=meta)

    def describe(self) -> dict:
        """The content of ``_extractor.json``."""
        out = {
            "extractor_id": self.extractor_id,
            "modality": self.modality,
            "dim": self.dim,
            "params": dict(self.params),
            "random_weights": self.random_weights,
            "extra_columns": {k: str(v) for k, v in self.extra_columns.items()},
            "keyed_by": self.keyed_by,
        }
        if self.random_weights:
            out["WARNING"] = random_weights_label()
        return out


@dataclass
class FeatureRow:
    """One row to write. ``values`` is ``[T, D]`` float32 (T may be 0), ``timestamps_s`` ``[T]``;
    ``fingerprint``: the content it came from (set by the extraction run before writing)."""

    video_id: str
    values: np.ndarray
    timestamps_s: np.ndarray
    status: str = "ok"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    fingerprint: str | None = None

    @classmethod
    def failed(cls, video_id: str, dim: int, error: str, **extra) -> "FeatureRow":
        return cls(video_id, np.zeros((0, dim), np.float32), np.zeros(0), "failed", error, extra)


@dataclass(frozen=True)
class VideoState:
    """The newest stored outcome of one video: ``status`` (``failed`` if any of its rows failed),
    the first ``error``, and the ``fingerprint`` its rows carry (None in shards older than fingerprints).

    In a set keyed by captions, ``fingerprint`` is the tuple of the caption digests its ``ok`` rows
    carry, in caption-index order (None at an index without an ``ok`` row; ``()`` for none).
    """

    status: str
    error: str | None
    fingerprint: str | tuple[str | None, ...] | None

    def done_for(self, fingerprint: str | tuple[str, ...] | None) -> bool:
        """``ok`` / ``empty`` for content ``fingerprint`` (None: do not compare)?"""
        return self.status in DONE_STATUSES and (fingerprint is None or self.fingerprint == fingerprint)

    def failed_for(self, fingerprint: str) -> bool:
        """A failure recorded for content ``fingerprint`` (a set keyed by file; a set keyed by
        captions keeps the failed rows' digest in the rows themselves, :func:`extractors.plan.stored_outcomes`)?"""
        return self.status == "failed" and self.fingerprint == fingerprint


def _shard_states(rows: Iterable[tuple], by_caption: bool) -> dict[str, VideoState]:
    """One shard's rows ``(video_id, status, error, fingerprint[, caption_index])`` -> state per video."""
    here: dict[str, VideoState] = {}
    parts: dict[str, dict[int, str | None]] = {}
    for vid, status, error, fingerprint, *caption in rows:
        if vid not in here or (status == "failed" and here[vid].status != "failed"):
            here[vid] = VideoState(status, error, fingerprint)
        if by_caption and status == "ok" and caption[0] is not None:
            parts.setdefault(vid, {})[caption[0]] = fingerprint
    if not by_caption:
        return here
    ordered = {v: tuple(p.get(i) for i in range(max(p) + 1)) for v, p in parts.items()}
    return {v: replace(s, fingerprint=ordered.get(v, ())) for v, s in here.items()}


def _shard_index(path: Path) -> int:
    return int(path.name[5:10])


def _is_corrupt(exc: BaseException) -> bool:
    """Does ``exc`` say the file's content is bad (not a passing system problem such as EMFILE)?"""
    if isinstance(exc, (StoreError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, EOFError)):
        return True
    if isinstance(exc, (FileNotFoundError, PermissionError)):
        return False
    return isinstance(exc, OSError) and exc.errno in (None, 0, errno.EIO)


class FeatureSet:
    """Shards of one dataset / modality / extractor-id; writer and reader in one place."""

    def __init__(self, folder: str | Path, spec: ExtractorSpec | None = None):
        self.folder = Path(folder)
        info_path = self.folder / "_extractor.json"
        if spec is not None:
            self.spec = spec
        elif info_path.is_file():
            self.spec = _spec_from_json(json.loads(info_path.read_text()), info_path)
        else:
            raise StoreError(f"{self.folder}: no _extractor.json; nothing was extracted here")

    # ---- layout ---------------------------------------------------------------------------
    @property
    def info(self) -> dict:
        return self.spec.describe()

    @property
    def lock_path(self) -> Path:
        return self.folder / LOCK_FILE

    def completed_shards(self) -> list[Path]:
        """Shards whose completion marker exists, oldest first."""
        if not self.folder.is_dir():
            return []
        shards = [p for p in self.folder.glob("part-*.parquet") if SHARD_RE.match(p.name)]
        return sorted((p for p in shards if p.with_suffix(".done").is_file()), key=_shard_index)

    def _reserve_index(self) -> int:
        """The next shard number, reserved for good (exclusive lock on the counter file)."""
        with locks.exclusive(self.folder / COUNTER_FILE):
            counter = self.folder / COUNTER_FILE
            try:
                stored = int(counter.read_text().strip() or 0)
            except ValueError:
                stored = 0  # a counter torn by a crash: the shards on disk still bound it from below
            used = [int(m.group(1)) for p in self.folder.iterdir() if (m := re.match(r"^\.?part-(\d{5})\.", p.name))]
            index = max(stored, max(used, default=-1) + 1)
            with open(counter, "r+") as fh:
                fh.write(f"{index + 1:<12d}\n")
            return index

    # ---- writing --------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder, write ``_extractor.json`` and tidy up (:meth:`tidy`) if no one is writing."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "_extractor.json"
        if info_path.is_file():
            existing = json.loads(info_path.read_text())
            if existing.get("extractor_id") != self.spec.extractor_id:
                raise StoreError(f"{info_path}: belongs to extractor {existing.get('extractor_id')}, "
                                 f"not {self.spec.extractor_id}")
            if existing != self.spec.describe():  # same numbers, older description (e.g. no keyed_by)
                write_json_atomic(info_path, self.spec.describe())
        else:
            write_json_atomic(info_path, self.spec.describe())
        self.tidy()

    def write_shard(self, rows: Sequence[FeatureRow]) -> Path:
        """Write ``rows`` as one new shard (reserved number, temporary name -> rename -> marker)."""
        if not rows:
            raise StoreError("refusing to write an empty shard")
        if not (self.folder / "_extractor.json").is_file():
            self.prepare()
        table = self._to_table(rows)
        with locks.shared(self.lock_path):
            return self._commit(table)

    def _commit(self, table: pa.Table) -> Path:
        """Write ``table`` as the next shard; the caller holds the folder lock (shared or exclusive)."""
        path = self.folder / f"part-{self._reserve_index():05d}.parquet"
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        ids = list(dict.fromkeys(table.column("video_id").to_pylist()))
        write_json_atomic(path.with_suffix(".done"), {"rows": table.num_rows, "videos": len(ids), "video_ids": ids})
        return path

    def _to_table(self, rows: Sequence[FeatureRow]) -> pa.Table:
        dim = self.spec.dim
        lengths = np.array([len(r.values) for r in rows], dtype=np.int64)
        for r in rows:
            if r.status not in STATUSES:
                raise StoreError(f"video {r.video_id!r}: status {r.status!r} not in {STATUSES}")
            if r.values.ndim != 2 or r.values.shape[1] != dim:
                raise StoreError(f"video {r.video_id!r}: values of shape {r.values.shape}, expected [T, {dim}]")
            if len(r.timestamps_s) not in (0, len(r.values)):
                raise StoreError(f"video {r.video_id!r}: {len(r.timestamps_s)} timestamps for {len(r.values)} steps")
        flat = np.concatenate([np.asarray(r.values, np.float32).reshape(-1) for r in rows])
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), dim)
        values = pa.ListArray.from_arrays(pa.array(offsets), inner)
        ts_flat = np.concatenate([np.asarray(r.timestamps_s, np.float64) for r in rows])
        ts_offsets = np.concatenate([[0], np.cumsum([len(r.timestamps_s) for r in rows])]).astype(np.int32)
        timestamps = pa.ListArray.from_arrays(pa.array(ts_offsets), pa.array(ts_flat, pa.float64()))
        columns = {
            "video_id": pa.array([r.video_id for r in rows], pa.string()),
            "values": values,
            "timestamps_s": timestamps,
            "status": pa.array([r.status for r in rows], pa.string()),
            "error": pa.array([r.error for r in rows], pa.string()),
            "fingerprint": pa.array([r.fingerprint for r in rows], pa.string()),
        }
        for name, typ in self.spec.extra_columns.items():
            columns[name] = pa.array([r.extra.get(name) for r in rows], typ)
        return pa.table(columns, schema=self.spec.schema())

    # ---- reading --------------------------------------------------------------------------
    def _load(self, shard: Path, columns: list[str] | None = None) -> pa.Table | None:
        """``shard`` (all columns or ``columns``) checked against the spec; None when it is gone,
        or when it is corrupt (then it is quarantined)."""
        try:
            have = pq.read_schema(shard)
            self._validate(have, shard)
            wanted = [c for c in (columns or self.spec.schema().names) if c in have.names]
            table = pq.read_table(shard, columns=wanted)
        except FileNotFoundError:
            return None  # quarantined or compacted by someone else meanwhile
        except Exception as exc:  # noqa: BLE001 - sorted by _is_corrupt; anything else propagates
            if not _is_corrupt(exc):
                raise
            self.quarantine(shard, f"{exc.__class__.__name__}: {exc}")
            return None
        if "fingerprint" in (columns or self.spec.schema().names) and "fingerprint" not in table.column_names:
            table = table.append_column("fingerprint", pa.nulls(table.num_rows, pa.string()))  # pre-fingerprint shard
        return table

    def quarantine(self, shard: Path, reason: str) -> Path | None:
        """Move ``shard`` to ``_quarantine/`` (then drop its marker); logs it and its videos."""
        marker = shard.with_suffix(".done")
        try:
            ids = json.loads(marker.read_text()).get("video_ids") or []
        except (OSError, ValueError, AttributeError):
            ids = []
        target = self.folder / QUARANTINE / f"{shard.stem}.{time.time_ns()}{shard.suffix}"
        target.parent.mkdir(exist_ok=True)
        try:
            replace_durably(shard, target)
        except FileNotFoundError:
            return None  # another process moved it first
        marker.unlink(missing_ok=True)
        shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        log.warning(f"quarantined {shard} -> {target}: {reason}; its videos are extracted again"
                    + (f": {shown}" if ids else " (its video ids are unknown)"))
        return target

    def video_states(self) -> dict[str, VideoState]:
        """``video_id -> VideoState`` of the newest completed shard holding each video (reads 4 columns,
        and ``caption_index`` in a set keyed by captions)."""
        out: dict[str, VideoState] = {}
        if not self.folder.is_dir():
            return out
        by_caption = self.spec.keyed_by == "captions"
        columns = ["video_id", "status", "error", "fingerprint"] + (["caption_index"] if by_caption else [])
        with locks.shared(self.lock_path):
            for shard in self.completed_shards():
                t = self._load(shard, columns)
                if t is not None:
                    out.update(_shard_states(zip(*(t.column(c).to_pylist() for c in columns)), by_caption))
        return out

    def video_status(self) -> dict[str, str]:
        """``video_id -> status`` of the newest completed row set of each video."""
        return {v: s.status for v, s in self.video_states().items()}

    def read(self, video_ids: Iterable[str] | None = None) -> "FeatureTable":
        """Read every completed shard (newest row set per video wins), validating each one; with
        ``video_ids``, only the shards holding one of them are read beyond their ``video_id`` column."""
        tables = []
        newest: dict[str, int] = {}
        wanted = None if video_ids is None else set(video_ids)
        with locks.shared(self.lock_path) if self.folder.is_dir() else nullcontext():
            for shard in self.completed_shards():
                if wanted is not None:
                    ids = self._load(shard, ["video_id"])
                    if ids is None or wanted.isdisjoint(ids.column("video_id").to_pylist()):
                        continue
                t = self._load(shard)
                if t is None:
                    continue
                tables.append(t)
                for vid in t.column("video_id").to_pylist():
                    newest[vid] = len(tables) - 1
        if not tables:
            return FeatureTable.from_arrow(self.spec.schema().empty_table(), self.spec)
        keep_parts = []
        for k, t in enumerate(tables):
            ids = t.column("video_id").to_pylist()
            mask = [newest[v] == k and (wanted is None or v in wanted) for v in ids]
            keep_parts.append(t.filter(pa.array(mask, pa.bool_())))
        return FeatureTable.from_arrow(pa.concat_tables(keep_parts).combine_chunks(), self.spec)

    def _validate(self, schema: pa.Schema, shard: Path) -> None:
        expected = self.spec.schema()
        values_type = schema.field("values").type if "values" in schema.names else None
        want = expected.field("values").type
        if values_type != want:
            dim = getattr(getattr(values_type, "value_type", None), "list_size", None)
            raise StoreError(f"{shard}: values are {values_type} (dimension {dim}); expected [T, D={self.spec.dim}] "
                             f"float32 for extractor {self.spec.extractor_id}")
        missing = [n for n in expected.names if n not in schema.names and n != "fingerprint"]
        if missing:
            raise StoreError(f"{shard}: columns {missing} missing; expected {expected.names}")
        wrong = [n for n in expected.names if n in schema.names and schema.field(n).type != expected.field(n).type]
        if wrong:
            raise StoreError(f"{shard}: columns {wrong} have types {[str(schema.field(n).type) for n in wrong]}; "
                             f"expected {[str(expected.field(n).type) for n in wrong]}")

    # ---- tidying: debris and compaction ----------------------------------------------------
    def tidy(self) -> bool:
        """Remove killed writers' debris and compact superseded rows away, if no one is writing.

        Takes the exclusive folder lock without waiting; returns False (and does nothing) when
        another process holds the folder lock, True when the folder was tidied.
        """
        if not self.folder.is_dir():
            return False
        with locks.try_exclusive(self.lock_path) as held:
            if not held:
                return False
            self._remove_debris()
            self._compact()
            return True

    def _remove_debris(self) -> None:
        for p in self.folder.glob(".part-*.tmp"):
            p.unlink(missing_ok=True)
        for p in self.folder.glob("part-*.parquet"):
            if SHARD_RE.match(p.name) and not p.with_suffix(".done").is_file():
                try:
                    pq.read_schema(p)
                except Exception as exc:  # noqa: BLE001 - unreadable: set aside, not deleted, so it can be looked at
                    if _is_corrupt(exc):
                        self.quarantine(p, f"unmarked and unreadable ({exc.__class__.__name__}: {exc})")
                        continue
                    raise
                p.unlink(missing_ok=True)   # renamed but never marked complete: a killed writer
        for marker in self.folder.glob("part-*.done"):
            if not marker.with_suffix(".parquet").exists():
                marker.unlink(missing_ok=True)

    def _compact(self) -> None:
        """Rewrite (or drop) every shard that holds superseded rows; caller holds the exclusive lock."""
        shards = self.completed_shards()
        ids: dict[Path, list[str]] = {}
        newest: dict[str, Path] = {}
        for shard in shards:
            t = self._load(shard, ["video_id"])
            if t is not None:
                ids[shard] = t.column("video_id").to_pylist()
                newest.update((v, shard) for v in ids[shard])
        for shard, vids in ids.items():
            keep = [newest[v] == shard for v in vids]
            if all(keep):
                continue
            if any(keep):
                table = self._load(shard)
                if table is None:
                    continue
                table = table.filter(pa.array(keep, pa.bool_())).select(self.spec.schema().names)
                self._commit(table.cast(self.spec.schema()))
            shard.with_suffix(".done").unlink(missing_ok=True)   # marker first: never a marker without its shard
            shard.unlink(missing_ok=True)


class TableRows:
    """Per-row accessors of anything holding the store's row columns as ``self.table`` (a
    :class:`pyarrow.Table` with ``video_id``, ``status``, ...)."""

    table: pa.Table

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def video_ids(self) -> list[str]:
        return self.table.column("video_id").to_pylist()

    @property
    def status(self) -> list[str]:
        return self.table.column("status").to_pylist()

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()


class FeatureTable(TableRows):
    """Rows read from a :class:`FeatureSet`: ragged values as one flat array plus offsets.

    ``flat`` is ``[sum T_i, D]`` float32 (a view on Arrow memory when possible), ``offsets`` is
    ``[N + 1]``; row ``i`` is ``flat[offsets[i]:offsets[i+1]]``.
    """

    def __init__(self, table: pa.Table, spec: ExtractorSpec, flat: np.ndarray, offsets: np.ndarray):
        self.table = table
        self.spec = spec
        self.flat = flat
        self.offsets = offsets

    @classmethod
    def from_arrow(cls, table: pa.Table, spec: ExtractorSpec) -> "FeatureTable":
        values = table.column("values")
        values = values.combine_chunks() if values.num_chunks != 1 else values.chunk(0)
        if len(values) == 0:
            return cls(table, spec, np.zeros((0, spec.dim), np.float32), np.zeros(1, np.int64))
        offsets = values.offsets.to_numpy().astype(np.int64)
        inner = values.values  # FixedSizeList, sliced to this array's range by .values
        flat = inner.values.to_numpy(zero_copy_only=False)
        base = offsets[0]
        flat = flat[base * spec.dim: offsets[-1] * spec.dim].reshape(-1, spec.dim)
        return cls(table, spec, flat, offsets - base)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        """``[T_i, D]`` view of row ``i``."""
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def timestamps(self, i: int) -> np.ndarray:
        return np.asarray(self.table.column("timestamps_s")[i].as_py(), np.float64)

    def feature_row(self, i: int) -> FeatureRow:
        """Row ``i`` as a :class:`FeatureRow` to write again unchanged (e.g. into a newer shard)."""
        cells = {name: self.table.column(name)[i].as_py() for name in ("video_id", "status", "error", "fingerprint")}
        extra = {name: self.table.column(name)[i].as_py() for name in self.spec.extra_columns}
        return FeatureRow(cells["video_id"], self.row(i).copy(), self.timestamps(i), cells["status"], cells["error"],
                          extra, cells["fingerprint"])

    def padded(self, rows: Sequence[int] | None = None, max_len: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Padded ``[N, T, D]`` float32 values and ``[N, T]`` bool mask (True = real step)."""
        rows = range(len(self)) if rows is None else rows
        lengths = [int(self.offsets[i + 1] - self.offsets[i]) for i in rows]
        t = max(lengths, default=0) if max_len is None else max_len
        out = np.zeros((len(lengths), t, self.spec.dim), np.float32)
        mask = np.zeros((len(lengths), t), bool)
        for j, (i, n) in enumerate(zip(rows, lengths)):
            n = min(n, t)
            out[j, :n] = self.flat[self.offsets[i]: self.offsets[i] + n]
            mask[j, :n] = True
        return out, mask


def _spec_from_json(info: dict, path: Path) -> ExtractorSpec:
    try:
        extra = {k: pa.type_for_alias(v) for k, v in info.get("extra_columns", {}).items()}
        spec = ExtractorSpec(info["modality"], int(info["dim"]), info["params"], bool(info["random_weights"]), extra,
                             info.get("keyed_by", "file"))
    except (KeyError, ValueError, TypeError, StoreError) as exc:
        raise StoreError(f"{path}: malformed extractor description ({exc})") from exc
    if spec.extractor_id != info.get("extractor_id"):
        raise StoreError(f"{path}: extractor_id {info.get('extractor_id')} does not match its parameters "
                         f"({spec.extractor_id})")
    return spec


def list_extractors(features_dir: str | Path, dataset: str, modality: str) -> list[dict]:
    """The ``_extractor.json`` of every extractor-id stored for ``dataset`` / ``modality``."""
    base = Path(features_dir) / dataset / modality
    return [json.loads(p.read_text()) for p in sorted(base.glob("*/_extractor.json"))]
