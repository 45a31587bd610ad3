"""The write side of a run: one shard's rows into the store, and the store tidied at the end.

:func:`write_shard_rows` completes each modality's rows (text: unchanged caption rows written again
beside a video's re-encoded ones; every row stamped with the content fingerprint it was computed
from), writes one store shard per modality and counts the outcome per video
(:class:`~extractors.summary.ModalityCounts`). :func:`finish_run` tidies each folder when no other
writer is busy (see data/store.py for the locking), so the store at rest is plain Parquet.
"""
from __future__ import annotations

from data.settings import Settings, get_settings
from data.store import FeatureRow, FeatureSet
from extractors.plan import ShardPlan
from extractors.summary import ModalityCounts


def write_shard_rows(plan: ShardPlan, rows: dict[str, list[FeatureRow]]) -> dict[str, ModalityCounts]:
    """Write ``rows`` (per modality: every row the shard produced, in order) as one store shard per
    modality; returns the counts per modality (recorded failures attempted again and crash records
    count as ``retried``). The in-progress records of ``plan.crashed`` videos are removed
    afterwards: their failure is stored now."""
    stamps = {"file": plan.fingerprints, "captions": plan.manifest.captions_digests()}
    counts: dict[str, ModalityCounts] = {}
    for m, fs in plan.sets.items():
        c = counts[m] = ModalityCounts(m, fs.spec.extractor_id, fs.spec.random_weights, skipped=plan.skipped[m],
                                       known_failed=plan.known_failed[m])
        c.retried = len({r.video_id for r in rows[m]} & (plan.retrying[m] | set(plan.crashed)))
        if m in plan.captions:
            rows[m], c.kept = plan.captions[m].complete(rows[m])
        for r in rows[m]:
            if r.fingerprint is None:   # text rows carry their caption's digest; the video's otherwise
                r.fingerprint = stamps[fs.spec.keyed_by][r.video_id]
        if rows[m]:
            fs.write_shard(rows[m])
        c.add_rows(rows[m])
    for path in plan.crash_files:
        path.unlink(missing_ok=True)
    return counts


def finish_run(dataset: str, counts: dict[str, ModalityCounts], settings: Settings | None = None) -> None:
    """End of a run: tidy each modality's folder (debris out, superseded rows compacted away) so
    the store at rest is plain Parquet; skipped where another writer is busy (the last one tidies)."""
    settings = settings or get_settings()
    for m, c in counts.items():
        folder = settings.feature_dir(dataset, m, c.extractor_id)
        if (folder / "_extractor.json").is_file():
            FeatureSet(folder).tidy()
