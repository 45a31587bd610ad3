"""A memory-mappable copy of one feature folder (contract A), so that training, indexing and
evaluation read stored features with bounded memory (docs/design.md "Data at rest").

The store's Parquet shards cannot be read a few rows at a time, and reading them whole holds every
feature of a dataset in memory (MSR-VTT's caption tokens alone are ~5 GiB of float32). So each
feature folder gets, once, a cache beside its shards that the loader memory-maps::

    <extractor-id>/_cache/
        .lock                 exclusive while a cache is built, shared while one is opened
        <key>/                key = fingerprint of the folder's completed shards (:func:`store_key`)
            values.npy        [S, D] float32: the steps of every current row, row after row
            times.npy         [S] float32: timestamps_s, or for rows without them (text) the position index
            rows.parquet      one line per row: video_id, status, error, fingerprint, the extra
                              columns, and ``length`` (its number of steps)
            cache.json        written last: key, counts, file sizes and checksums (RANDOM WEIGHTS flag)

The rows are the store's current rows, the same as :meth:`data.store.FeatureSet.read` returns (the
newest shard of each video wins; a video's rows keep their stored order, though videos re-extracted
into a newer shard may come in another order than there). Every file is written through
:func:`data.atomic.atomic_path`; ``cache.json`` comes last, so a folder without it (a killed build)
is never read. A cache is opened only when its ``cache.json`` names the store's current key and
every file has its recorded size (and ``rows.parquet`` / ``times.npy`` their sha256, and
``values.npy`` its shape); otherwise it is rebuilt. A changed store (a new, compacted or quarantined
shard) has another key, so it gets a new cache, and the old ones are removed.

The build streams: it reads the store a chunk of videos at a time (about :data:`CHUNK_BYTES` of
values) and appends to ``values.npy`` (numpy's header leaves room for the first axis to grow), so
its memory does not grow with the store either. Where the folder is not writable (a read-only copy
of the store), or the store changed while the cache was built, the cache is built in a private
temporary folder, opened, and deleted at once: the process keeps its mapping, and the next run
builds again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data import locks
from data.atomic import atomic_path, write_json_atomic
from data.fingerprint import sha256_file, stat_key
from data.provenance import random_weights_label
from data.store import FeatureSet, FeatureTable, TableRows

log = logging.getLogger("tvr.featurecache")

CACHE_DIR = "_cache"
CACHE_FORMAT = 1
MARKER = "cache.json"
VALUES, TIMES, ROWS = "values.npy", "times.npy", "rows.parquet"
CHUNK_BYTES = 128 << 20           # values read from the store per chunk while building
DROPPED = ("values", "timestamps_s")  # the columns that live in values.npy / times.npy


class CacheDamaged(Exception):
    """A cache folder that must not be read (missing marker or file, wrong size, checksum or shape)."""


@dataclass
class StoredRows(TableRows):
    """A feature folder's current rows: ``values`` ``[S, D]`` float32 and ``times`` ``[S]`` float32
    (memory-mapped, copy-on-write, or in memory), ``lengths`` ``[R]`` and the per-row ``table``."""

    table: pa.Table
    values: np.ndarray
    times: np.ndarray
    lengths: np.ndarray
    source: Path


def store_key(feature_set: FeatureSet) -> str:
    """Fingerprint of the folder's content: the extractor-id and every completed shard's name,
    size and modification time (shards are never rewritten in place: a change is a new shard)."""
    digest = hashlib.sha256(f"tvr-feature-cache {CACHE_FORMAT} {feature_set.spec.extractor_id}\n".encode())
    for shard in feature_set.completed_shards():
        digest.update(f"{shard.name} {stat_key(shard)}\n".encode())
    return digest.hexdigest()[:16]


def open_rows(feature_set: FeatureSet, *, in_memory: bool = False) -> StoredRows:
    """The folder's current rows from its cache, built first when missing, stale or damaged.

    ``in_memory``: read ``values`` into memory instead of mapping it (the loader's in-memory mode)."""
    root = feature_set.folder / CACHE_DIR
    key = store_key(feature_set)
    try:
        with locks.shared(root / ".lock"):
            return _open(root / key, key, feature_set, in_memory)
    except FileNotFoundError:
        pass
    except CacheDamaged as exc:
        log.warning(f"{root / key}: {exc}; building it again")
    if not os.access(feature_set.folder, os.W_OK):
        return _build_private(feature_set, key, in_memory, "the feature folder is not writable")
    with locks.exclusive(root / ".lock"):
        key = store_key(feature_set)
        try:                                        # built by another process while we waited?
            return _open(root / key, key, feature_set, in_memory)
        except (FileNotFoundError, CacheDamaged):
            pass
        for old in root.iterdir():                  # stale keys, damaged folders, killed builds
            if old.is_dir():
                shutil.rmtree(old)
            elif old.name != ".lock":
                old.unlink()
        marker = _build(feature_set, root / key)
        if marker["key"] == key:
            write_json_atomic(root / key / MARKER, marker)
            return _open(root / key, key, feature_set, in_memory)
        return _opened_then_removed(root / key, marker, feature_set, in_memory,
                                    "the store changed while its cache was built")


def _build_private(feature_set: FeatureSet, key: str, in_memory: bool, why: str) -> StoredRows:
    folder = Path(tempfile.mkdtemp(prefix=f"tvr-feature-cache-{key}-"))
    return _opened_then_removed(folder, _build(feature_set, folder), feature_set, in_memory, why)


def _opened_then_removed(folder: Path, marker: dict, feature_set: FeatureSet, in_memory: bool,
                         why: str) -> StoredRows:
    """Open an unpublished cache, then delete it (the mapping stays valid until the process ends)."""
    try:
        log.warning(f"{feature_set.folder}: {why}; its features are read from a private copy "
                    f"that is not kept")
        return _open_files(folder, marker, feature_set, in_memory)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _open(folder: Path, key: str, feature_set: FeatureSet, in_memory: bool) -> StoredRows:
    """The cache ``folder`` after checking its marker; FileNotFoundError when there is none."""
    try:
        marker = json.loads((folder / MARKER).read_text())
    except FileNotFoundError:
        if folder.exists():
            raise CacheDamaged(f"no {MARKER} (a build that did not finish)") from None
        raise
    except (OSError, ValueError) as exc:
        raise CacheDamaged(f"unreadable {MARKER} ({exc})") from None
    if not isinstance(marker, dict) or marker.get("format") != CACHE_FORMAT or marker.get("key") != key:
        raise CacheDamaged(f"{MARKER} is not that of a format-{CACHE_FORMAT} cache with key {key}")
    return _open_files(folder, marker, feature_set, in_memory)


def _open_files(folder: Path, marker: dict, feature_set: FeatureSet, in_memory: bool) -> StoredRows:
    spec = feature_set.spec
    try:
        if marker["extractor_id"] != spec.extractor_id or marker["dim"] != spec.dim:
            raise CacheDamaged(f"written for extractor {marker['extractor_id']} (dim {marker['dim']})")
        for name, size in marker["sizes"].items():
            if (folder / name).stat().st_size != size:
                raise CacheDamaged(f"{name} has {(folder / name).stat().st_size} bytes, {size} recorded")
        for name, digest in marker["sha256"].items():
            if sha256_file(folder / name) != digest:
                raise CacheDamaged(f"{name} does not match its recorded sha256")
        mapped = None if in_memory or not marker["steps"] else "c"   # numpy maps no empty array
        values = np.load(folder / VALUES, mmap_mode=mapped)
        times = np.load(folder / TIMES, mmap_mode=None if not marker["steps"] else "c")
        table = pq.read_table(folder / ROWS)
    except (KeyError, TypeError, ValueError, OSError, pa.ArrowException) as exc:
        raise CacheDamaged(f"unreadable ({exc.__class__.__name__}: {exc})") from None
    steps, rows = int(marker["steps"]), int(marker["rows"])
    lengths = np.asarray(table.column("length"), np.int64) if "length" in table.column_names else None
    if (values.dtype != np.float32 or values.shape != (steps, spec.dim) or times.shape != (steps,)
            or lengths is None or len(lengths) != rows or int(lengths.sum()) != steps or (lengths < 0).any()):
        raise CacheDamaged(f"shapes do not match {MARKER} ({rows} rows, {steps} steps of dim {spec.dim})")
    return StoredRows(table.drop_columns(["length"]), values, times, lengths, folder)


def _build(feature_set: FeatureSet, folder: Path) -> dict:
    """Write ``values.npy``, ``times.npy`` and ``rows.parquet`` of the store's current rows into
    ``folder``; returns the marker to write (its ``key`` is the store's key if it did not change)."""
    spec = feature_set.spec
    folder.mkdir(parents=True, exist_ok=True)
    with locks.shared(feature_set.lock_path):       # no compaction while the shards are read
        key = store_key(feature_set)
        video_ids = list(feature_set.video_states())
        shard_bytes = sum(p.stat().st_size for p in feature_set.completed_shards())
        per_chunk = max(1, int(CHUNK_BYTES * len(video_ids) / max(shard_bytes, 1)))
        tables, lengths, timed = [], [], True
        with ExitStack() as stack:
            values_path, times_path = (stack.enter_context(atomic_path(folder / n)) for n in (VALUES, TIMES))
            values_fh, times_fh = (stack.enter_context(open(p, "wb")) for p in (values_path, times_path))
            header = _start_npy(values_fh, (spec.dim,)), _start_npy(times_fh, ())
            for start in range(0, len(video_ids), per_chunk):
                part = feature_set.read(video_ids[start: start + per_chunk])
                timed &= _append_chunk(part, values_fh, times_fh)
                tables.append(part.table.drop_columns(list(DROPPED)))
                lengths.append(part.lengths)
            lengths = np.concatenate(lengths or [np.zeros(0, np.int64)]).astype(np.int64)
            steps = int(lengths.sum())
            _finish_npy(values_fh, header[0], (steps, spec.dim))
            if timed:
                _finish_npy(times_fh, header[1], (steps,))
            else:   # rows without timestamps (text): every step's position in its row
                times_fh.seek(0)
                times_fh.truncate()
                np.lib.format.write_array(times_fh, _positions(lengths))
        table = pa.concat_tables(tables) if tables else spec.schema().empty_table().drop_columns(list(DROPPED))
        table = table.append_column("length", pa.array(lengths, pa.int64()))
        with atomic_path(folder / ROWS) as tmp:
            pq.write_table(table, tmp)
        changed = store_key(feature_set) != key
    marker = {"format": CACHE_FORMAT, "key": "changed-while-built" if changed else key,
              "extractor_id": spec.extractor_id, "modality": spec.modality, "dim": spec.dim,
              "rows": len(lengths), "steps": steps,
              "sizes": {n: (folder / n).stat().st_size for n in (VALUES, TIMES, ROWS)},
              "sha256": {n: sha256_file(folder / n) for n in (TIMES, ROWS)},
              "random_weights": spec.random_weights}
    if spec.random_weights:
        marker["WARNING"] = random_weights_label()
    return marker


def _start_npy(fh, tail: tuple[int, ...]) -> int:
    """Write an ``.npy`` header for ``(0, *tail)`` float32; numpy pads it so that the first axis
    can grow without moving the data (:func:`_finish_npy`). Returns the header's length."""
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (0, *tail)})
    return fh.tell()


def _finish_npy(fh, header_len: int, shape: tuple[int, ...]) -> None:
    """Rewrite the header of :func:`_start_npy` with the final ``shape``."""
    fh.seek(0)
    np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})
    if fh.tell() != header_len:
        raise RuntimeError(f"npy header for {shape} does not fit the room numpy left for it")
    fh.seek(0, os.SEEK_END)


def _append_chunk(part: FeatureTable, values_fh, times_fh) -> bool:
    """Append ``part``'s values and timestamps; True when every row has one timestamp per step."""
    values_fh.write(np.ascontiguousarray(part.flat, np.float32).data)
    column = part.table.column("timestamps_s").combine_chunks()
    ts_offsets = column.offsets.to_numpy()
    timed = np.array_equal(np.diff(ts_offsets), part.lengths)
    if timed:
        ts = column.values.to_numpy(zero_copy_only=False)[ts_offsets[0]: ts_offsets[-1]]
        times_fh.write(np.ascontiguousarray(ts, np.float32).data)
    return timed


def _positions(lengths: np.ndarray) -> np.ndarray:
    """``[S]`` float32: each step's index within its row."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    return (np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)).astype(np.float32)
