"""Extraction of just some videos for a re-index: the model's extractors re-created from their
stored ``_extractor.json``, run on the new or changed videos only.

This module is retrieval's only way into ``extractors``, and it imports them inside the functions
that extract: a re-index with nothing new, a search or the service never load extraction code.
"""
from __future__ import annotations

import logging
from typing import Callable

from data.fingerprint import current_fingerprints
from data.manifest import read_manifest
from data.modalities import CLIP_FRAMES
from data.settings import Settings
from data.store import FeatureSet
from retrieval.reindex.plan import ReindexError
from retrieval.runs import extractor_infos

log = logging.getLogger("tvr.reindex")
Log = Callable[[str], None]
def extract_configs(dataset: str, loaded, settings: Settings, device: str | None = None) -> list:
    """``ExtractConfig`` s that re-create the model's extractors from their stored
    ``_extractor.json`` (one config per random-weight seed and precision; usually one)."""
    from extractors.config import ExtractConfig

    try:
        infos = extractor_infos(dataset, loaded, settings)
    except LookupError as err:
        raise ReindexError(f"{err}; cannot tell how to extract new videos for it") from None
    return ExtractConfig.from_infos(infos, device or settings.device)


def extract_videos(dataset: str, video_ids: list[str], loaded, *, settings: Settings,
                   shard_size: int | None = None, device: str | None = None, say: Log = log.info) -> dict:
    """Extract the model's modalities for ``video_ids`` (those already done, and recorded failures,
    for their current content are skipped; no extractor is loaded when that is all of them).
    Returns ``ModalityCounts`` per modality."""
    from extractors.plan import content_keys, plan_shards, stored_outcomes
    from extractors.runner import extract_shard
    from extractors.summary import ModalityCounts, merge_counts
    from extractors.writer import finish_run

    folders = {m: settings.feature_dir(dataset, m, i) for m, i in loaded.extractor_ids.items()}
    sets = {m: FeatureSet(f) for m, f in folders.items() if (f / "_extractor.json").is_file()}
    manifest = read_manifest(settings.manifest_path(dataset))
    fingerprints = current_fingerprints(manifest, video_ids)
    outcomes = {m: stored_outcomes(fs, manifest, content_keys(fs, manifest, video_ids, fingerprints))
                for m, fs in sets.items()}
    if len(sets) == len(folders) and all(set(video_ids) <= done | known for done, known in outcomes.values()):
        say(f"{dataset}: the {len(video_ids)} videos are already extracted or recorded as failed; "
            f"no extractor is loaded")
        return {m: ModalityCounts(m, fs.spec.extractor_id, fs.spec.random_weights, skipped=len(outcomes[m][0]),
                                  known_failed=len(outcomes[m][1])) for m, fs in sets.items()}
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


def extraction_lines(dataset: str, extraction: dict[str, dict]) -> list[str]:
    """The extraction summary's lines (its RANDOM WEIGHTS line left out) from the counts' fields."""
    from extractors.summary import ModalityCounts, summary_lines

    counts = {m: ModalityCounts(**c) for m, c in extraction.items()}
    return [line for line in summary_lines(dataset, counts) if not line.startswith("!!!")]


def extraction_failure(dataset: str, extraction: dict[str, dict]) -> str | None:
    """The extraction's systemic failure (:func:`extractors.summary.systemic_failure`) from the
    counts' fields, else None."""
    from extractors.summary import ModalityCounts, systemic_failure

    return systemic_failure(dataset, {m: ModalityCounts(**c) for m, c in extraction.items()})


def frames_ok(dataset: str, loaded, settings: Settings) -> Callable[[list[str]], set[str]]:
    """``ok(ids)``: which of ``ids`` have ``ok`` frame features in the model's clip_frames folder now."""
    def ok(ids: list[str]) -> set[str]:
        folder = settings.feature_dir(dataset, CLIP_FRAMES, loaded.extractor_ids[CLIP_FRAMES])
        status = FeatureSet(folder).video_status() if (folder / "_extractor.json").is_file() else {}
        return {v for v in ids if status.get(v) == "ok"}
    return ok
