"""What a re-index has to do: the per-video state of a build (``videos.parquet``), the files as
they are now, the :class:`Plan` comparing the two, what the previous build offers for reuse, and
the index options of the new build."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa

from data.fingerprint import current_fingerprints
from data.manifest import Manifest
from data.settings import Settings
from retrieval.index.faiss_index import IndexFolderError
from retrieval.index.layout import IndexBuild, build_options
from retrieval.index.reader import open_build

STATE_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),   # data.fingerprint; "missing" = no file
    pa.field("indexed", pa.bool_(), nullable=False),     # has a vector in the build
])
FileState = tuple[str, str]   # (path, content fingerprint of data.fingerprint)


class ReindexError(RuntimeError):
    """Re-indexing cannot go on; the message names the dataset, the run and the problem."""


@dataclass
class Plan:
    """What changed between the previous build's per-video state and the manifest now."""

    added: list[str]            # in the manifest, not covered by the previous build
    changed: list[str]          # covered, but the file's path or fingerprint differs
    removed: list[str]          # covered, no longer in the manifest
    reused: list[str]           # unchanged and indexed: the old vector is kept
    retry: list[str]            # unchanged, not indexed then, frames ok in the store now
    unindexable: list[str]      # unchanged, not indexed then, still no ok frames: skipped

    @property
    def to_encode(self) -> list[str]:
        return self.added + self.changed + self.retry

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed or self.retry)


def file_states(manifest: Manifest) -> dict[str, FileState]:
    """``video_id -> (path, fingerprint)`` of every manifest video as its file is now."""
    fingerprints = current_fingerprints(manifest)
    return {vid: (rel, fingerprints[vid])
            for vid, rel in zip(manifest.video_ids, manifest.table.column("path").to_pylist())}


def read_state(table: pa.Table) -> dict[str, tuple[FileState, bool]] | None:
    """``video_id -> ((path, fingerprint), indexed)`` from a build's ``videos.parquet``; None for a
    state written before fingerprints (size and mtime columns only)."""
    if any(n not in table.column_names for n in STATE_SCHEMA.names):
        return None
    cols = [table.column(n).to_pylist() for n in STATE_SCHEMA.names]
    return {vid: ((path, fp), bool(indexed)) for vid, path, fp, indexed in zip(*cols)}


def state_table(states: dict[str, FileState], indexed: set[str]) -> pa.Table:
    """The ``videos.parquet`` of a new build: every manifest video, in manifest order."""
    ids = list(states)
    return pa.table({"video_id": ids, "path": [states[v][0] for v in ids],
                     "fingerprint": [states[v][1] for v in ids],
                     "indexed": [v in indexed for v in ids]}, schema=STATE_SCHEMA)


def make_plan(now: dict[str, FileState], before: dict[str, tuple[FileState, bool]],
              frames_ok: Callable[[list[str]], set[str]]) -> Plan:
    """Compare the manifest's file states with a previous build's; ``frames_ok(ids)`` says which
    of ``ids`` have ``ok`` frame features in the store now (asked only for never-indexed videos)."""
    added = [v for v in now if v not in before]
    changed = [v for v in now if v in before and before[v][0] != now[v]]
    same = [v for v in now if v in before and before[v][0] == now[v]]
    reused = [v for v in same if before[v][1]]
    waiting = [v for v in same if not before[v][1]]
    ok = frames_ok(waiting) if waiting else set()
    return Plan(added, changed, [v for v in before if v not in now], reused,
                [v for v in waiting if v in ok], [v for v in waiting if v not in ok])


def model_signature(loaded) -> str:
    """Hash of the model's name, config and weights: vectors can be reused only under the same one."""
    h = hashlib.sha256(json.dumps([loaded.name, loaded.config], sort_keys=True, default=str).encode())
    for name, tensor in sorted(loaded.model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def previous_build(dataset: str, run: str, loaded, signature: str, settings: Settings
                   ) -> tuple[IndexBuild | None, dict | None, np.ndarray | None, str]:
    """The current build, its per-video state (when usable for this model's extractors), its
    vectors ``[N, E]`` (when reusable by this model), and a sentence saying which and why."""
    try:
        build = open_build(dataset, run, settings)
    except IndexFolderError:
        return None, None, None, "no previous build: every video is encoded"
    table = build.video_state()
    if table is None:
        return build, None, None, (f"build {build.info['build_id']} has no per-video state "
                                   f"(made by python -m retrieval.index): every video is encoded")
    if build.info.get("extractor_ids") != dict(loaded.extractor_ids):
        return build, None, None, (f"build {build.info['build_id']} used other extractors "
                                   f"{build.info.get('extractor_ids')}: every video is encoded")
    state = read_state(table)
    if state is None:
        return build, None, None, (f"build {build.info['build_id']} has a per-video state without content "
                                   f"fingerprints (an older version): every video is encoded")
    vectors = build.stored_vectors()
    if build.info.get("model_signature") != signature or vectors is None:
        return build, state, None, (f"build {build.info['build_id']} was made by another model version "
                                    f"or without stored vectors: every video is encoded")
    return build, state, vectors, f"unchanged videos reuse the vectors of build {build.info['build_id']}"


def index_options(previous: dict | None, *, index_type: str | None = None, memory_gb: float | None = None,
                  factory: str | None = None, shards: int | None = None, tune_target: float | None = None) -> dict:
    """The :func:`retrieval.index.writer.stage_build` options of the new build: those of the
    ``previous`` build's ``info.json`` (:func:`retrieval.index.layout.build_options`; defaults
    without one), with the given ones (not None) replacing them. The index choice (``index_type``,
    ``memory_gb``, ``factory``) is replaced as a whole when any of the three is given; ``shards``
    and ``tune_target`` one by one."""
    out = {"index_type": "auto", "memory_gb": None, "factory": None, "shards": 1, "tune_target": None}
    if previous is not None:
        out.update({k: v for k, v in build_options(previous).items() if k in out})
    if (index_type, memory_gb, factory) != (None, None, None):
        out.update(index_type=index_type or "auto", memory_gb=memory_gb, factory=factory)
    if shards is not None:
        out["shards"] = shards
    if tune_target is not None:
        out["tune_target"] = tune_target
    return out
