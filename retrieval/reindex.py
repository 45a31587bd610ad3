"""Scheduled re-indexing: bring ``indexes/<dataset>/<run>`` up to date with the dataset's manifest.

``reindex(dataset, run)`` compares the manifest with the per-video state of the ``current`` index
build (``videos.parquet``: video_id, path, the file's content fingerprint, indexed or not) and

- extracts (``extractors.run.extract_shard``) only the videos that are new or whose file changed
  (other path or fingerprint: a replaced file; the one definition in :mod:`data.fingerprint`, taken
  from the files as they are now, so a replaced file is seen even before ``data.prepare`` runs
  again). A changed video's stored rows carry the old fingerprint, so extraction redoes it and the
  store's newest-row-wins rule (then compaction) keeps only the new features;
- encodes (``fusion.api.video_id_vector_batches``) only those videos, drops removed ones and reuses the
  stored vectors (``vectors.npy``) of every unchanged video, assembling the new build's vectors on
  disk ``batch`` rows at a time (:func:`_assemble`; never all in memory);
- writes the new build beside the old one and then swaps ``current`` atomically
  (``retrieval.index.stage_build`` / ``publish_build``). Searches keep answering from the old build
  until the swap; a failed or killed run leaves the old build current, and the next run redoes it.

The new build is made with the current build's index options (``info.json["build_options"]``:
index type, memory budget, factory string, shard count, tuning target; :func:`index_options`)
unless others are given; other options than the current build's make a rebuild even when nothing
else changed. ``mapper`` builds the shards as jobs elsewhere (the flow's Dask task runner).

Nothing new -> no new build, no extraction, no model forward pass. Vectors are reused only when the
old build was made with the same extractor ids and the same model (a hash of its weights and
config); otherwise every video is encoded again (extraction still skips what the store holds).
A video whose extraction failed is not retried until its file changes (the store's retry still
happens when its frames become ``ok`` by other means, e.g. ``python -m flows.extract``).

``python -m retrieval.reindex <dataset> [--run R]`` runs it as plain Python; the Prefect flow
``flows/reindex.py`` wraps the same function for the daily schedule.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import torch

from data.cli import add_version
from data import locks
from data.fingerprint import current_fingerprints
from data.manifest import Manifest, ManifestError, manifest_fingerprint, read_manifest
from data.names import InvalidName, check_name
from data.settings import Settings, get_settings
from data.store import FeatureSet, StoreError, list_extractors
from retrieval.index import (ENCODE_BATCH, ENCODING_LOCK, RANDOM_WARNING, IndexBuild, IndexFolderError, build_options,
                             index_root, model_info, open_build, publish_build, remove_partial_builds, stage_build,
                             write_vectors)
from retrieval.shards import Mapper
from retrieval.runs import ZERO_SHOT, RunNotFound, fusion_api, load, run_name

log = logging.getLogger("tvr.reindex")
Log = Callable[[str], None]

FRAMES = "clip_frames"
STATE_SCHEMA = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("path", pa.string(), nullable=False),
    pa.field("fingerprint", pa.string(), nullable=False),   # data.fingerprint; "missing" = no file
    pa.field("indexed", pa.bool_(), nullable=False),     # has a vector in the build
])
# Extractor options that ExtractConfig takes per modality (the rest of _extractor.json follows
# from the model); the rebuilt extractor-id is checked against the stored one anyway.
OPTION_KEYS = {"clip_frames": ("fps",), "motion": ("fps", "size", "clip_frames")}
# Tests only: "<stage>:<marker file>" makes the run write the marker and sleep at that stage
# ("extracted", "staged": new build written but not yet current), so a test can kill it there.
PAUSE_ENV = "TVR_REINDEX_TEST_PAUSE"


class ReindexError(RuntimeError):
    """Re-indexing cannot go on; the message names the dataset, the run and the problem."""


FileState = tuple[str, str]   # (path, content fingerprint of data.fingerprint)


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


@dataclass
class ReindexResult:
    """The outcome; ``status``: ``rebuilt``, ``up-to-date``, ``nothing-to-index`` (no manifest),
    ``not-extracted`` (zero-shot without stored CLIP features) or ``busy`` (another run holds the lock)."""

    dataset: str
    run: str
    status: str
    message: str = ""
    build_id: str | None = None
    previous_build_id: str | None = None
    n_indexed: int = 0
    added: int = 0
    changed: int = 0
    removed: int = 0
    reused: int = 0
    encoded: int = 0
    without_features: int = 0
    vector_reuse: str = ""                  # why vectors were or were not reused
    index_options: dict = field(default_factory=dict)           # what the build was made with (index_options)
    extraction: dict[str, dict] = field(default_factory=dict)   # modality -> ModalityCounts fields
    random_weights: bool = False
    seconds: float = 0.0

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.random_weights:
            out["WARNING"] = RANDOM_WARNING
        return out

    def lines(self) -> list[str]:
        head = f"reindex {self.dataset} / {self.run}: {self.status}"
        if self.status not in ("rebuilt", "up-to-date"):
            return [f"{head}: {self.message}"]
        out = [f"{head}, current build {self.build_id} ({self.n_indexed} videos indexed; "
               f"previous {self.previous_build_id or 'none'}) in {self.seconds:.1f} s",
               f"  added {self.added}, changed {self.changed}, removed {self.removed}, reused {self.reused}, "
               f"encoded {self.encoded}, without features {self.without_features}",
               f"  vectors: {self.vector_reuse}",
               "  index options: " + ", ".join(f"{k} {v}" for k, v in self.index_options.items() if v is not None)]
        if self.extraction:
            from extractors.run import ModalityCounts, summary_lines

            counts = {m: ModalityCounts(**c) for m, c in self.extraction.items()}
            out += ["  " + line for line in summary_lines(self.dataset, counts) if not line.startswith("!!!")]
        if self.random_weights:
            out.append(f"!!! {RANDOM_WARNING} !!!")
        return out

    def markdown(self) -> str:
        """The summary as Markdown (the flow publishes it as an artifact)."""
        out = [f"# Re-indexing `{self.dataset}` / `{self.run}`: {self.status}", ""]
        if self.random_weights:
            out += [f"**{RANDOM_WARNING}**", ""]
        if self.status not in ("rebuilt", "up-to-date"):
            return "\n".join(out + [self.message]) + "\n"
        out += ["| current build | previous | indexed | added | changed | removed | reused | encoded | "
                "without features |", "|---|---|---|---|---|---|---|---|---|",
                f"| `{self.build_id}` | `{self.previous_build_id}` | {self.n_indexed} | {self.added} | "
                f"{self.changed} | {self.removed} | {self.reused} | {self.encoded} | {self.without_features} |",
                "", f"Vectors: {self.vector_reuse}."]
        for m, c in self.extraction.items():
            out.append(f"- extraction {m} (`{c['extractor_id']}`): {c['done']} done, {c['empty']} empty, "
                       f"{c['failed']} failed, {c['skipped']} skipped")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# What changed
# ---------------------------------------------------------------------------------------------
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


def _previous(dataset: str, run: str, loaded, signature: str, settings: Settings
              ) -> tuple[IndexBuild | None, dict | None, np.ndarray | None, str]:
    """The current build, its per-video state (when usable for this model's extractors), its
    vectors (when reusable by this model), and a sentence saying which and why."""
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


# ---------------------------------------------------------------------------------------------
# Extraction of just some videos
# ---------------------------------------------------------------------------------------------
def _extractor_info(dataset: str, modality: str, extractor_id: str, loaded, settings: Settings) -> dict:
    for ds in dict.fromkeys([dataset, loaded.dataset]):
        try:
            return FeatureSet(settings.feature_dir(ds, modality, extractor_id)).info
        except StoreError:
            continue
    raise ReindexError(f"{dataset}: no _extractor.json for {modality} extractor {extractor_id} under "
                       f"{settings.features_dir}; cannot tell how to extract new videos for it")


def extract_configs(dataset: str, loaded, settings: Settings, device: str | None = None) -> list:
    """``extractors.run.ExtractConfig`` s that re-create the model's extractors from their stored
    ``_extractor.json`` (one config per random-weight seed and precision; usually one)."""
    from extractors.run import ExtractConfig  # retrieval -> extractors only here, kept lazy (like fusion.api)

    groups: dict[tuple, dict] = {}
    for modality, extractor_id in loaded.extractor_ids.items():
        params = _extractor_info(dataset, modality, extractor_id, loaded, settings)["params"]
        key = (params.get("seed"), params.get("precision", "auto"))
        group = groups.setdefault(key, {"modalities": [], "models": {}, "weights": {}, "options": {}})
        group["modalities"].append(modality)
        group["models"][modality] = params["model"]
        group["weights"][modality] = params["weights"]
        options = {k: params[k] for k in OPTION_KEYS.get(modality, ()) if k in params}
        if options:
            group["options"][modality] = options
    return [ExtractConfig(modalities=tuple(g["modalities"]), weights=g["weights"], models=g["models"],
                          options=g["options"], seed=seed or 0, precision=precision,
                          device=device or settings.device)
            for (seed, precision), g in groups.items()]


def extract_videos(dataset: str, video_ids: list[str], loaded, *, settings: Settings,
                   shard_size: int | None = None, device: str | None = None, say: Log = log.info) -> dict:
    """Extract the model's modalities for ``video_ids`` (those already done for their current
    content are skipped). Returns ``extractors.run.ModalityCounts`` per modality."""
    from extractors.run import (ModalityCounts, content_keys, extract_shard, finish_run, merge_counts,
                                plan_shards)

    folders = {m: settings.feature_dir(dataset, m, i) for m, i in loaded.extractor_ids.items()}
    sets = {m: FeatureSet(f) for m, f in folders.items() if (f / "_extractor.json").is_file()}
    manifest = read_manifest(settings.manifest_path(dataset))
    fingerprints = current_fingerprints(manifest, video_ids)
    if len(sets) == len(folders) and all(
            set(video_ids) <= fs.done_ids(content_keys(fs, manifest, video_ids, fingerprints)) for fs in sets.values()):
        say(f"{dataset}: the {len(video_ids)} videos are already extracted; no extractor is loaded")
        return {m: ModalityCounts(m, fs.spec.extractor_id, fs.spec.random_weights, skipped=len(video_ids))
                for m, fs in sets.items()}
    configs = extract_configs(dataset, loaded, settings, device)
    for config in configs:
        rebuilt = {e.modality: e.extractor_id for e in config.build()}
        wrong = {m: (i, loaded.extractor_ids[m]) for m, i in rebuilt.items() if i != loaded.extractor_ids[m]}
        if wrong:
            shown = "; ".join(f"{m}: rebuilt {a}, stored {b}" for m, (a, b) in wrong.items())
            raise ReindexError(f"{dataset}: the stored extractors cannot be re-created here ({shown}); extract "
                               f"the new videos with python -m flows.extract {dataset} using the same settings")
    total: dict = {}
    size = shard_size or settings.shard_size
    for config in configs:
        plan_shards(dataset, config, shard_size=size, settings=settings)   # prepares folders, tidies if idle
        for start in range(0, len(video_ids), size):
            merge_counts(total, extract_shard(dataset, video_ids[start:start + size], config,
                                              settings=settings, progress=say))
    finish_run(dataset, total, settings)
    return total


def _frames_ok(dataset: str, loaded, settings: Settings) -> Callable[[list[str]], set[str]]:
    def ok(ids: list[str]) -> set[str]:
        folder = settings.feature_dir(dataset, FRAMES, loaded.extractor_ids[FRAMES])
        status = FeatureSet(folder).video_status() if (folder / "_extractor.json").is_file() else {}
        return {v for v in ids if status.get(v) == "ok"}
    return ok


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def _pause_point(stage: str) -> None:
    """Tests only (``TVR_REINDEX_TEST_PAUSE=<stage>:<marker>``): write the marker, then wait to be killed."""
    spec = os.environ.get(PAUSE_ENV, "")
    if spec.partition(":")[0] == stage:
        Path(spec.partition(":")[2]).write_text(str(os.getpid()))
        time.sleep(600)


def index_options(previous: dict | None, *, index_type: str | None = None, memory_gb: float | None = None,
                  factory: str | None = None, shards: int | None = None, tune_target: float | None = None) -> dict:
    """The :func:`retrieval.index.stage_build` options of the new build: those of the ``previous``
    build's ``info.json`` (:func:`retrieval.index.build_options`; defaults without one), with the
    given ones (not None) replacing them. The index choice (``index_type``, ``memory_gb``,
    ``factory``) is replaced as a whole when any of the three is given; ``shards`` and
    ``tune_target`` one by one."""
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


def reindex(dataset: str, run: str = ZERO_SHOT, *, index_type: str | None = None, memory_gb: float | None = None,
            factory: str | None = None, shards: int | None = None, tune_target: float | None = None,
            shard_size: int | None = None, device: str | None = None, settings: Settings | None = None,
            keep: int = 3, progress: Log | None = None, mapper: Mapper | None = None,
            batch: int = ENCODE_BATCH) -> ReindexResult:
    """Bring the index of ``dataset`` for ``run`` up to date with the manifest; see the module doc.
    ``index_type`` / ``memory_gb`` / ``factory`` / ``shards`` / ``tune_target``: :func:`index_options`
    (None: as the current build). ``batch``: videos encoded, vectors assembled and vectors added to
    the index per batch (:func:`_assemble`)."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    settings = settings or get_settings()
    say = progress or log.info
    manifest_path = settings.manifest_path(dataset)   # refuses a dataset name that is not one path part
    if not manifest_path.is_file():
        return ReindexResult(dataset, str(run), "nothing-to-index",
                             f"no manifest at {manifest_path}: nothing to index (build it with "
                             f"python -m data.prepare {dataset} ...)")
    if str(run) == ZERO_SHOT and not list_extractors(settings.features_dir, dataset, FRAMES):
        return ReindexResult(dataset, str(run), "not-extracted",
                             f"no {FRAMES} features stored for {dataset!r}: nothing to index with the zero-shot "
                             f"model yet (extract first: python -m flows.extract {dataset} "
                             f"--modalities clip_frames,clip_text)")
    loaded = load(run, dataset, settings)
    name = check_name(run_name(loaded.run_dir), "run id")
    with locks.try_exclusive(index_root(dataset, name, settings) / ".reindex.lock") as held:
        if not held:
            return ReindexResult(dataset, name, "busy", "another reindex of this dataset and run is running; "
                                 "this one did nothing", random_weights=bool(loaded.random_weights))
        debris = remove_partial_builds(dataset, name, settings)
        if debris:
            say(f"removed {len(debris)} partial build folder(s) left by a killed run: {', '.join(debris)}")
        given = {"index_type": index_type, "memory_gb": memory_gb, "factory": factory, "shards": shards,
                 "tune_target": tune_target}
        return _reindex_locked(dataset, name, loaded, given=given, shard_size=shard_size, device=device,
                               settings=settings, keep=keep, say=say, mapper=mapper, batch=batch)


def _reindex_locked(dataset: str, run: str, loaded, *, given: dict, shard_size: int | None, device: str | None,
                    settings: Settings, keep: int, say: Log, mapper: Mapper | None, batch: int) -> ReindexResult:
    start = time.perf_counter()
    manifest = read_manifest(settings.manifest_path(dataset))
    now = file_states(manifest)
    signature = model_signature(loaded)
    previous, before, old_vectors, reuse_note = _previous(dataset, run, loaded, signature, settings)
    options = index_options(previous and previous.info, **given)
    result = ReindexResult(dataset, run, "up-to-date", build_id=previous and previous.info["build_id"],
                           previous_build_id=previous and previous.info["build_id"], vector_reuse=reuse_note,
                           random_weights=bool(loaded.random_weights), index_options=options)
    if before is None:
        # nothing known about the files: extract what the store lacks, encode every video
        covered = set(previous.ids) if previous is not None else set()
        plan = Plan([v for v in now if v not in covered], [], [v for v in covered if v not in now], [], [], [])
        extract, encode = list(now), list(now)
    else:
        plan = make_plan(now, before, _frames_ok(dataset, loaded, settings))
        extract = plan.added + plan.changed
        encode = plan.to_encode if old_vectors is not None else list(now)
        if old_vectors is None:
            plan.reused = []
    result.added, result.changed, result.removed = len(plan.added), len(plan.changed), len(plan.removed)
    result.reused = len(plan.reused)
    if (old_vectors is not None and plan.empty and previous.warning is None   # a fallback build: repair 'current'
            and previous.info.get("manifest_fingerprint") == manifest_fingerprint(manifest)
            and options == index_options(previous.info)):                      # other options: build again
        result.n_indexed, result.without_features = len(previous.ids), len(plan.unindexable)
        result.message = "nothing new: the current build covers the manifest"
        result.seconds = time.perf_counter() - start
        return result

    if extract:
        say(f"{dataset}: extracting {len(extract)} videos ({len(plan.changed)} of them changed on disk)")
        counts = extract_videos(dataset, extract, loaded, settings=settings, shard_size=shard_size,
                                device=device, say=say)
        result.extraction = {m: asdict(c) for m, c in counts.items()}
    _pause_point("extracted")
    root = index_root(dataset, run, settings)
    token = uuid.uuid4().hex
    encoded, assembled = root / f".encoded-{token}-new.npy", root / f".encoded-{token}.npy"
    with locks.shared(root / ENCODING_LOCK):          # remove_partial_builds leaves .encoded-* files alone
        try:
            new, new_ids = None, []
            if encode:
                say(f"{dataset}: encoding {len(encode)} videos with {loaded.name}")
                new_ids, batches = fusion_api().video_id_vector_batches(loaded, dataset, encode, batch=batch,
                                                                        settings=settings)
                if new_ids:
                    write_vectors(encoded, len(new_ids), batches)
                    new = np.load(encoded, mmap_mode="r", allow_pickle=False)
            result.encoded = len(new_ids)
            ids, blocks = _assemble(list(now), plan.reused, previous, old_vectors, new, new_ids, batch)
            result.without_features = len(now) - len(ids)
            if not ids:
                raise ReindexError(f"{dataset}: no video has features to index (did every extraction fail? see "
                                   f"the extraction summary)")
            if ids == new_ids:        # nothing kept and encoded in the new order: that file is the assembly
                os.replace(encoded, assembled)
            else:
                write_vectors(assembled, len(ids), blocks)
            info = {**model_info(loaded), "splits": sorted(set(manifest.table.column("split").to_pylist())),
                    "model_signature": signature,
                    "reindex": {k: getattr(result, k) for k in ("added", "changed", "removed", "reused", "encoded",
                                                                 "without_features", "previous_build_id")}}
            folder = stage_build(dataset, run, assembled, ids, info=info, settings=settings, manifest=manifest,
                                 video_state=state_table(now, set(ids)), store_vectors=True, mapper=mapper,
                                 batch=batch, **options)
        finally:
            encoded.unlink(missing_ok=True)
            assembled.unlink(missing_ok=True)
    _pause_point("staged")
    publish_build(folder, keep)
    result.status, result.build_id, result.n_indexed = "rebuilt", folder.name, len(ids)
    result.seconds = time.perf_counter() - start
    return result


def _assemble(order: list[str], reused: list[str], previous: IndexBuild | None, old: np.ndarray | None,
              new: np.ndarray | None, new_ids: list[str], batch: int) -> tuple[list[str], Iterator[np.ndarray]]:
    """The new build's ids, in manifest ``order`` (reused and newly encoded videos; a new vector
    replaces an old one), and their vectors ``[b, E]`` float32 in that order, ``batch`` rows at a
    time: each batch gathers its rows from ``old`` (the previous build's vectors, rows as its ids)
    and ``new`` (rows as ``new_ids``), both memory-mapped, so only one batch is ever in memory."""
    source = {}
    if reused:
        row = {vid: i for i, vid in enumerate(previous.ids)}
        source.update((vid, (0, row[vid])) for vid in reused)
    source.update((vid, (1, j)) for j, vid in enumerate(new_ids))
    ids = [vid for vid in order if vid in source]
    dim = new.shape[1] if new is not None else (old.shape[1] if old is not None else 0)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(ids), batch):
            which, rows = np.array([source[vid] for vid in ids[start:start + batch]], np.int64).T
            out = np.empty((len(rows), dim), np.float32)
            for k, array in enumerate((old, new)):
                if (which == k).any():
                    out[which == k] = array[rows[which == k]]
            yield out
    return ids, blocks()


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.reindex",
        description="Bring a dataset's index up to date with its manifest: extract and encode only new or "
                    "changed videos, drop removed ones, reuse the vectors of the rest, then swap the "
                    "index's 'current' pointer atomically. Nothing new: no model work, no new build.")
    parser.add_argument("dataset", help="dataset name under datasets/")
    parser.add_argument("--run", default=ZERO_SHOT, help="run folder, run id, or 'zero-shot' (default)")
    parser.add_argument("--index-type", choices=("auto", "flat", "ivf", "hnsw"),
                        help="FAISS index type of the new build (auto: flat up to 200,000 videos)")
    parser.add_argument("--memory-gb", type=float, help="memory budget of the new build (python -m retrieval.index)")
    parser.add_argument("--factory", help="FAISS index_factory string of the new build")
    parser.add_argument("--shards", type=int, help="parts by video-id hash")
    parser.add_argument("--tune", type=float, metavar="RECALL", dest="tune_target",
                        help="tune nprobe / efSearch / rerank for this recall@10")
    # none of the four or --index-type given: the new build is made like the current one
    parser.add_argument("--shard-size", type=int, default=None,
                        help="videos per extraction shard (default $TVR_SHARD_SIZE or 64)")
    parser.add_argument("--device", default=None, help="extraction device: auto, cpu, cuda (default $TVR_DEVICE)")
    parser.add_argument("--batch", type=int, default=ENCODE_BATCH,
                        help=f"videos encoded and vectors assembled and indexed per batch (default {ENCODE_BATCH})")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_version(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        if args.shards is not None and args.shards < 1:
            raise ValueError("--shards must be at least 1")
        result = reindex(args.dataset, args.run, index_type=args.index_type, memory_gb=args.memory_gb,
                         factory=args.factory, shards=args.shards, tune_target=args.tune_target,
                         shard_size=args.shard_size, device=args.device, batch=args.batch)
    except (ReindexError, RunNotFound, IndexFolderError, ManifestError, StoreError, InvalidName,
            FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result.to_dict(), indent=2) if args.json else "\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
