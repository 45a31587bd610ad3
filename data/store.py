"""The feature store: Parquet shards per dataset / modality / extractor-id.

Layout (DESIGN.md "Data at rest")::

    features/<dataset>/<modality>/<extractor-id>/
        _extractor.json          what the id stands for (model, weights, fps, size, code version)
        part-00000.parquet       one row per video (text: one row per caption)
        part-00000.done          completion marker, written last

Row columns: ``video_id`` (string), ``values`` (list of fixed-size float32 lists: ``[T, D]``),
``timestamps_s`` (list<float64>, ``[T]`` seconds from the start of the video, or empty where time
has no meaning, e.g. text tokens), ``status``
(``ok`` / ``empty`` / ``failed``), ``error`` (string or null), plus the extra columns an
extractor declares (e.g. ``caption_index`` and ``eot_index`` for text, ``has_audio`` for audio).

Guarantees:
- a shard is written under a temporary name, renamed, and only then gets its ``.done`` marker;
  readers and the done-listing ignore shards without a marker, so a killed writer leaves nothing
  readable and the next run redoes exactly that shard;
- all rows of one video live in one shard; if a video appears in several shards (a retried
  failure), the newest shard wins, so readers see exactly one entry per video;
- readers check every shard's schema and feature dimension against ``_extractor.json``.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic import atomic_path, write_json_atomic

STATUSES = ("ok", "empty", "failed")
DONE_STATUSES = ("ok", "empty")  # resuming skips these; failed videos are tried again
SHARD_RE = re.compile(r"^part-(\d{5})\.parquet$")
RANDOM_WARNING = "RANDOM WEIGHTS: these features do not come from a pretrained model"


class StoreError(ValueError):
    """A shard or extractor folder does not match what the reader expects."""


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything that changes the numbers of one extractor.

    ``params`` holds model name, weights (pretrained tag, file + sha256, or ``random``), fps,
    size, code version...; the extractor-id is a short hash of (modality, dim, params).
    ``extra_columns`` maps extra per-row column names to Arrow types.
    """

    modality: str
    dim: int
    params: Mapping[str, Any]
    random_weights: bool
    extra_columns: Mapping[str, pa.DataType] = field(default_factory=dict)

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
        ]
        fields += [pa.field(name, typ) for name, typ in self.extra_columns.items()]
        return pa.schema(fields)

    def describe(self) -> dict:
        """The content of ``_extractor.json``."""
        out = {
            "extractor_id": self.extractor_id,
            "modality": self.modality,
            "dim": self.dim,
            "params": dict(self.params),
            "random_weights": self.random_weights,
            "extra_columns": {k: str(v) for k, v in self.extra_columns.items()},
        }
        if self.random_weights:
            out["WARNING"] = RANDOM_WARNING
        return out


@dataclass
class FeatureRow:
    """One row to write. ``values`` is ``[T, D]`` float32 (T may be 0), ``timestamps_s`` ``[T]``."""

    video_id: str
    values: np.ndarray
    timestamps_s: np.ndarray
    status: str = "ok"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, video_id: str, dim: int, error: str, **extra) -> "FeatureRow":
        return cls(video_id, np.zeros((0, dim), np.float32), np.zeros(0), "failed", error, extra)


def _shard_index(path: Path) -> int:
    return int(path.name[5:10])


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

    def completed_shards(self) -> list[Path]:
        """Shards whose completion marker exists, oldest first."""
        if not self.folder.is_dir():
            return []
        shards = [p for p in self.folder.glob("part-*.parquet") if SHARD_RE.match(p.name)]
        return sorted((p for p in shards if p.with_suffix(".done").is_file()), key=_shard_index)

    def next_shard_index(self) -> int:
        if not self.folder.is_dir():
            return 0
        used = [int(m.group(1)) for p in self.folder.iterdir() if (m := re.match(r"^part-(\d{5})\.", p.name))]
        return max(used, default=-1) + 1

    # ---- writing --------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the folder, write ``_extractor.json`` and remove debris of killed writers."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info_path = self.folder / "_extractor.json"
        if info_path.is_file():
            existing = json.loads(info_path.read_text())
            if existing.get("extractor_id") != self.spec.extractor_id:
                raise StoreError(f"{info_path}: belongs to extractor {existing.get('extractor_id')}, "
                                 f"not {self.spec.extractor_id}")
        else:
            write_json_atomic(info_path, self.spec.describe())
        for p in self.folder.glob(".part-*.tmp"):
            p.unlink(missing_ok=True)
        for p in self.folder.glob("part-*.parquet"):
            if not p.with_suffix(".done").is_file():
                p.unlink(missing_ok=True)  # renamed but never marked complete: a killed writer

    def write_shard(self, rows: Sequence[FeatureRow], index: int | None = None) -> Path:
        """Write ``rows`` as one shard (temporary name -> rename -> marker). Returns its path."""
        if not rows:
            raise StoreError("refusing to write an empty shard")
        if not (self.folder / "_extractor.json").is_file():
            self.prepare()
        index = self.next_shard_index() if index is None else index
        path = self.folder / f"part-{index:05d}.parquet"
        table = self._to_table(rows)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        write_json_atomic(path.with_suffix(".done"), {"rows": table.num_rows,
                                                      "videos": len({r.video_id for r in rows})})
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
        ts_lengths = np.array([len(r.timestamps_s) for r in rows], dtype=np.int64)
        ts_offsets = np.concatenate([[0], np.cumsum(ts_lengths)]).astype(np.int32)
        timestamps = pa.ListArray.from_arrays(pa.array(ts_offsets), pa.array(ts_flat, pa.float64()))
        columns = {
            "video_id": pa.array([r.video_id for r in rows], pa.string()),
            "values": values,
            "timestamps_s": timestamps,
            "status": pa.array([r.status for r in rows], pa.string()),
            "error": pa.array([r.error for r in rows], pa.string()),
        }
        for name, typ in self.spec.extra_columns.items():
            columns[name] = pa.array([r.extra.get(name) for r in rows], typ)
        return pa.table(columns, schema=self.spec.schema())

    # ---- reading --------------------------------------------------------------------------
    def video_status(self) -> dict[str, str]:
        """``video_id -> status`` of the newest completed row of each video (cheap: 2 columns)."""
        out: dict[str, str] = {}
        for shard in self.completed_shards():
            t = pq.read_table(shard, columns=["video_id", "status"])
            for vid, st in zip(t.column("video_id").to_pylist(), t.column("status").to_pylist()):
                out[vid] = st
        return out

    def done_ids(self) -> set[str]:
        """Videos that a resumed run skips (status ``ok`` or ``empty``)."""
        return {v for v, s in self.video_status().items() if s in DONE_STATUSES}

    def read(self, video_ids: Iterable[str] | None = None) -> "FeatureTable":
        """Read every completed shard (newest row set per video wins), validating each one."""
        tables = []
        newest: dict[str, int] = {}
        for k, shard in enumerate(self.completed_shards()):
            t = pq.read_table(shard)
            self._validate(t, shard)
            tables.append(t)
            for vid in t.column("video_id").to_pylist():
                newest[vid] = k
        if not tables:
            return FeatureTable.from_arrow(self.spec.schema().empty_table(), self.spec)
        keep_parts = []
        wanted = None if video_ids is None else set(video_ids)
        for k, t in enumerate(tables):
            ids = t.column("video_id").to_pylist()
            mask = [newest[v] == k and (wanted is None or v in wanted) for v in ids]
            keep_parts.append(t.filter(pa.array(mask, pa.bool_())))
        return FeatureTable.from_arrow(pa.concat_tables(keep_parts).combine_chunks(), self.spec)

    def _validate(self, table: pa.Table, shard: Path) -> None:
        expected = self.spec.schema()
        values_type = table.schema.field("values").type if "values" in table.column_names else None
        want = expected.field("values").type
        if values_type != want:
            dim = getattr(getattr(values_type, "value_type", None), "list_size", None)
            raise StoreError(f"{shard}: values are {values_type} (dimension {dim}); expected [T, D={self.spec.dim}] "
                             f"float32 for extractor {self.spec.extractor_id}")
        missing = [n for n in expected.names if n not in table.column_names]
        if missing:
            raise StoreError(f"{shard}: columns {missing} missing; expected {expected.names}")


class FeatureTable:
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

    def __len__(self) -> int:
        return self.table.num_rows

    @property
    def video_ids(self) -> list[str]:
        return self.table.column("video_id").to_pylist()

    @property
    def status(self) -> list[str]:
        return self.table.column("status").to_pylist()

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def column(self, name: str) -> list:
        return self.table.column(name).to_pylist()

    def row(self, i: int) -> np.ndarray:
        """``[T_i, D]`` view of row ``i``."""
        return self.flat[self.offsets[i]: self.offsets[i + 1]]

    def timestamps(self, i: int) -> np.ndarray:
        return np.asarray(self.table.column("timestamps_s")[i].as_py(), np.float64)

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
        spec = ExtractorSpec(info["modality"], int(info["dim"]), info["params"], bool(info["random_weights"]), extra)
    except (KeyError, ValueError, TypeError) as exc:
        raise StoreError(f"{path}: malformed extractor description ({exc})") from exc
    if spec.extractor_id != info.get("extractor_id"):
        raise StoreError(f"{path}: extractor_id {info.get('extractor_id')} does not match its parameters "
                         f"({spec.extractor_id})")
    return spec


def list_extractors(features_dir: str | Path, dataset: str, modality: str) -> list[dict]:
    """The ``_extractor.json`` of every extractor-id stored for ``dataset`` / ``modality``."""
    base = Path(features_dir) / dataset / modality
    return [json.loads(p.read_text()) for p in sorted(base.glob("*/_extractor.json"))]
