"""One re-index run: :func:`reindex` (see :mod:`retrieval.reindex` for what it does) and its
outcome, :class:`ReindexResult` (terminal lines, JSON, the flow's Markdown artifact)."""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np

from data import locks
from data.atomic import rename_durably
from data.faults import pause_point
from data.manifest import manifest_fingerprint, read_manifest
from data.modalities import CLIP_FRAMES, CLIP_TEXT
from data.names import check_name
from data.provenance import random_weights_banner, random_weights_label
from data.settings import Settings, get_settings
from data.store import list_extractors
from retrieval.index.layout import ENCODE_BATCH, ENCODING_LOCK, index_root
from retrieval.index.shards import Mapper
from retrieval.index.writer import (model_info, model_segments, publish_build, remove_partial_builds, stage_build,
                                     write_vectors)
from retrieval.reindex.assemble import assemble
from retrieval.reindex.extract import Log, extract_videos, extraction_failure, extraction_lines, frames_ok
from retrieval.reindex.plan import (Plan, ReindexError, file_states, index_options, make_plan, model_signature,
                                    previous_build, state_table)
from retrieval.runs import ZERO_SHOT, fusion_api, load, run_name

log = logging.getLogger("tvr.reindex")
# Tests only: "<stage>:<marker file>" makes the run write the marker and sleep at that stage
# ("extracted", "staged": new build written but not yet current), so a test can kill it there.
PAUSE_ENV = "TVR_REINDEX_TEST_PAUSE"


@dataclass
class ReindexResult:
    """The outcome; ``status``: ``rebuilt``, ``up-to-date``, ``nothing-to-index`` (no manifest),
    ``not-extracted`` (zero-shot without stored CLIP features) or ``busy`` (another run holds the lock).
    ``failure``: the extraction's systemic failure (every video it attempted in some modality
    failed, none a known failure), else empty; the build is still made from the other videos, and
    the command exits 1 / the flow run ends Failed."""

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
    failure: str = ""

    def to_dict(self) -> dict:
        out = asdict(self)
        if self.random_weights:
            out["WARNING"] = random_weights_label()
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
            out += ["  " + line for line in extraction_lines(self.dataset, self.extraction)]
        if self.failure:
            out.append(f"  systemic extraction failure: {self.failure}")
        if self.random_weights:
            out.append(random_weights_banner())
        return out

    def markdown(self) -> str:
        """The summary as Markdown (the flow publishes it as an artifact)."""
        out = [f"# Re-indexing `{self.dataset}` / `{self.run}`: {self.status}", ""]
        if self.random_weights:
            out += [f"**{random_weights_label()}**", ""]
        if self.status not in ("rebuilt", "up-to-date"):
            return "\n".join(out + [self.message]) + "\n"
        out += ["| current build | previous | indexed | added | changed | removed | reused | encoded | "
                "without features |", "|---|---|---|---|---|---|---|---|---|",
                f"| `{self.build_id}` | `{self.previous_build_id}` | {self.n_indexed} | {self.added} | "
                f"{self.changed} | {self.removed} | {self.reused} | {self.encoded} | {self.without_features} |",
                "", f"Vectors: {self.vector_reuse}."]
        for m, c in self.extraction.items():
            out.append(f"- extraction {m} (`{c['extractor_id']}`): {c['done']} done, {c['empty']} empty, "
                       f"{c['failed']} failed, {c['skipped']} skipped, {c.get('known_failed', 0)} skipped: "
                       f"recorded failure")
        if self.failure:
            out += ["", f"**Systemic extraction failure:** {self.failure}"]
        return "\n".join(out) + "\n"


def reindex(dataset: str, run: str = ZERO_SHOT, *, index_type: str | None = None, memory_gb: float | None = None,
            factory: str | None = None, shards: int | None = None, tune_target: float | None = None,
            shard_size: int | None = None, device: str | None = None, settings: Settings | None = None,
            keep: int = 3, progress: Log | None = None, mapper: Mapper | None = None,
            batch: int = ENCODE_BATCH) -> ReindexResult:
    """Bring the index of ``dataset`` for ``run`` up to date with the manifest; see
    :mod:`retrieval.reindex`. ``index_type`` / ``memory_gb`` / ``factory`` / ``shards`` /
    ``tune_target``: :func:`retrieval.reindex.plan.index_options` (None: as the current build).
    ``batch``: videos encoded, vectors assembled and vectors added to the index per batch
    (:func:`retrieval.reindex.assemble.assemble`)."""
    if batch < 1:
        raise ValueError(f"batch size must be at least 1, got {batch}")
    settings = settings or get_settings()
    say = progress or log.info
    manifest_path = settings.manifest_path(dataset)   # refuses a dataset name that is not one path part
    if not manifest_path.is_file():
        return ReindexResult(dataset, str(run), "nothing-to-index",
                             f"no manifest at {manifest_path}: nothing to index (build it with "
                             f"python -m data.prepare {dataset} ...)")
    if str(run) == ZERO_SHOT and not list_extractors(settings.features_dir, dataset, CLIP_FRAMES):
        return ReindexResult(dataset, str(run), "not-extracted",
                             f"no {CLIP_FRAMES} features stored for {dataset!r}: nothing to index with the zero-shot "
                             f"model yet (extract first: python -m flows.extract {dataset} "
                             f"--modalities {CLIP_FRAMES},{CLIP_TEXT})")
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
    previous, before, old_vectors, reuse_note = previous_build(dataset, run, loaded, signature, settings)
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
        plan = make_plan(now, before, frames_ok(dataset, loaded, settings))
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
        result.failure = extraction_failure(dataset, result.extraction) or ""
    pause_point(PAUSE_ENV, "extracted")
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
            ids, blocks = assemble(list(now), plan.reused, previous, old_vectors, new, new_ids, batch)
            result.without_features = len(now) - len(ids)
            if not ids:
                raise ReindexError(f"{dataset}: no video has features to index (did every extraction fail? see "
                                   f"the extraction summary)")
            if ids == new_ids:        # nothing kept and encoded in the new order: that file is the assembly
                rename_durably(encoded, assembled)   # write_vectors fsynced it
            else:
                write_vectors(assembled, len(ids), blocks)
            info = {**model_info(loaded), "splits": sorted(set(manifest.table.column("split").to_pylist())),
                    "model_signature": signature,
                    "reindex": {k: getattr(result, k) for k in ("added", "changed", "removed", "reused", "encoded",
                                                                 "without_features", "previous_build_id")}}
            folder = stage_build(dataset, run, assembled, ids, info=info, settings=settings, manifest=manifest,
                                 video_state=state_table(now, set(ids)), store_vectors=True, mapper=mapper,
                                 batch=batch, segments=model_segments(loaded, dataset, ids, settings), **options)
        finally:
            encoded.unlink(missing_ok=True)
            assembled.unlink(missing_ok=True)
    pause_point(PAUSE_ENV, "staged")
    publish_build(folder, keep)
    result.status, result.build_id, result.n_indexed = "rebuilt", folder.name, len(ids)
    result.seconds = time.perf_counter() - start
    return result
