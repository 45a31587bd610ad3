"""Planning a run: which videos form each shard, and what each shard still needs per modality.

:func:`plan_shards` splits the manifest into shards of videos (in manifest order) and prepares each
modality's feature folder. :func:`plan_shard` decides, for one shard, per modality, the videos not
yet done for the same extractor-id *and the same content*: a stored row counts only when its
fingerprint equals the video file's fingerprint now (:func:`content_keys`); text is decided per
caption, each row carrying its own caption digest, and only changed or new captions are encoded
(:mod:`extractors.textplan`). A video whose newest stored outcome is ``failed`` for the content it
has now is a *recorded failure* (:func:`stored_outcomes`): it is not attempted again, and counts
apart from the videos done, unless the config says ``retry_failed``; a changed file (or changed
captions) is always attempted. A video whose decoding killed an earlier process is planned as
``failed`` without being decoded again (:mod:`extractors.inprogress`). Planning reads the store and
the manifest and writes nothing but the folders' preparation.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from data.fingerprint import caption_digests, current_fingerprints
from data.manifest import Manifest, VideoRecord, read_manifest
from data.modalities import VIDEO_MODALITIES
from data.settings import Settings, get_settings
from data.store import FeatureSet, VideoState
from extractors.base import Extractor
from extractors.config import ExtractConfig
from extractors.decode import DecodeOptions, DecodeRequest
from extractors.inprogress import crash_error, dead_records, records_dir
from extractors.reader import merged_request
from extractors.textplan import CaptionPlan, plan_captions


def load_manifest(dataset: str, settings: Settings) -> Manifest:
    return read_manifest(settings.manifest_path(dataset))


def checked_manifest(dataset: str, config: ExtractConfig, settings: Settings) -> Manifest:
    """The dataset's manifest, refused (:class:`data.manifest.ManifestError`, one line) when
    ``config`` decodes videos and the manifest's video root does not exist."""
    manifest = load_manifest(dataset, settings)
    if any(m in VIDEO_MODALITIES for m in config.modalities):
        manifest.require_video_root()
    return manifest


def plan_shards(dataset: str, config: ExtractConfig, *, shard_size: int | None = None,
                settings: Settings | None = None) -> list[list[str]]:
    """Video ids of each shard, in manifest order; prepares every modality's feature folder.
    Refuses a manifest whose video root does not exist when a modality decodes videos
    (:func:`checked_manifest`).

    Preparing tidies a folder (killed writers' debris, superseded rows) only when no other writer
    is busy in it, so it is safe to call while other runs of the same dataset are going on.
    """
    settings = settings or get_settings()
    ids = checked_manifest(dataset, config, settings).video_ids
    size = shard_size or settings.shard_size
    if size < 1:
        raise ValueError(f"shard size {size}: must be at least 1")
    for ext in config.build():
        ext.feature_set(settings, dataset).prepare()
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def content_keys(fs: FeatureSet, manifest: Manifest, video_ids: list[str],
                 file_fingerprints: dict[str, str]) -> dict[str, str | tuple[str, ...]]:
    """``video_id -> fingerprint`` each stored row of ``fs`` must carry to count as done; for a set
    keyed by captions, the tuple of the video's caption digests (one per text row, in order)."""
    if fs.spec.keyed_by == "captions":
        captions = dict(zip(manifest.video_ids, manifest.table.column("captions").to_pylist()))
        return {v: caption_digests(captions[v]) for v in video_ids}
    return {v: file_fingerprints[v] for v in video_ids}


def stored_outcomes(fs: FeatureSet, manifest: Manifest, keys: dict[str, str | tuple[str, ...]],
                    states: dict[str, VideoState] | None = None) -> tuple[set[str], set[str]]:
    """``(done, recorded failures)`` among the videos of ``keys`` (:func:`content_keys`): done =
    newest rows ``ok`` / ``empty`` for that content; recorded failure = newest rows ``failed`` and
    computed from the same content (the file's fingerprint; for a set keyed by captions, the failed
    rows carry the video's captions digest, read only for such videos). ``states``: ``fs.video_states()``
    when the caller has it already."""
    states = fs.video_states() if states is None else states
    done = {v for v, key in keys.items() if v in states and states[v].done_for(key)}
    if fs.spec.keyed_by == "file":
        return done, {v for v, key in keys.items() if v in states and states[v].failed_for(key)}
    failed = {v for v in keys if v in states and states[v].status == "failed"}
    if not failed:
        return done, set()
    digests = manifest.captions_digests()
    table = fs.read(sorted(failed))
    return done, {v for v, status, fp in zip(table.video_ids, table.status, table.column("fingerprint"))
                  if v in failed and status == "failed" and fp == digests[v]}


@dataclass
class ShardPlan:
    """What one shard still needs. Per modality: ``todo`` (video ids to encode), ``skipped``
    (videos already done), ``known_failed`` (recorded failures left alone), ``retrying`` (recorded
    failures attempted again: ``retry_failed``), ``captions`` (text modalities: the
    :class:`CaptionPlan`). ``crashed``: ``video_id -> error`` of videos whose decoding killed an
    earlier process (their in-progress records, ``crash_files``, are removed once their failure is
    stored)."""

    video_ids: list[str]
    manifest: Manifest
    records: dict[str, VideoRecord]
    extractors: list[Extractor]
    sets: dict[str, FeatureSet]
    fingerprints: dict[str, str]          # video_id -> the file's content fingerprint now
    todo: dict[str, set[str]]
    skipped: dict[str, int]
    known_failed: dict[str, int]
    retrying: dict[str, set[str]]
    captions: dict[str, CaptionPlan]
    in_progress: Path                     # the dataset's in-progress records folder
    crashed: dict[str, str]
    crash_files: list[Path]

    def extractors_for(self, video_id: str) -> list[Extractor]:
        """The extractors that still need ``video_id``."""
        return [e for e in self.extractors if video_id in self.todo[e.modality]]

    def captions_for(self, video_id: str) -> dict[str, list[tuple[int, str]]]:
        """Per text modality, the ``(caption index, caption)`` pairs of ``video_id`` to encode."""
        return {m: plan.encode[video_id] for m, plan in self.captions.items() if video_id in plan.encode}

    def jobs(self, options: DecodeOptions) -> list[tuple[VideoRecord, DecodeRequest]]:
        """One decode job per video that some extractor still needs, in shard order."""
        return [(self.records[v], replace(merged_request(wanted), options=options))
                for v in self.video_ids if (wanted := self.extractors_for(v))]


def plan_shard(dataset: str, video_ids: list[str], config: ExtractConfig, settings: Settings) -> ShardPlan:
    """The :class:`ShardPlan` of ``video_ids`` (raises ``KeyError`` for ids not in the manifest)."""
    manifest = load_manifest(dataset, settings)
    wanted_ids = set(video_ids)
    records = {r.video_id: r for r in manifest.records() if r.video_id in wanted_ids}
    missing = [v for v in video_ids if v not in records]
    if missing:
        raise KeyError(f"dataset {dataset!r}: videos not in the manifest: {missing[:5]}")
    extractors = config.build()
    sets = {e.modality: e.feature_set(settings, dataset) for e in extractors}
    fingerprints = current_fingerprints(manifest, video_ids)
    todo: dict[str, set[str]] = {}
    skipped: dict[str, int] = {}
    known_failed: dict[str, int] = {}
    retrying: dict[str, set[str]] = {}
    captions: dict[str, CaptionPlan] = {}
    for m, fs in sets.items():
        keys = content_keys(fs, manifest, video_ids, fingerprints)
        states = fs.video_states()
        done, known = stored_outcomes(fs, manifest, keys, states)
        retrying[m] = known if config.retry_failed else set()
        left_alone = known - retrying[m]
        known_failed[m] = len(left_alone)
        wanted = {v: key for v, key in keys.items() if v not in left_alone}
        if fs.spec.keyed_by == "captions":
            captions[m] = plan = plan_captions(fs, wanted, records, states)
            todo[m] = set(plan.encode)
            skipped[m] = len(wanted) - len(plan.redo)
        else:
            todo[m] = {v for v in wanted if v not in done}
            skipped[m] = len(wanted) - len(todo[m])
    in_progress = records_dir(dataset, settings)
    dead = dead_records(in_progress, video_ids)
    return ShardPlan(video_ids, manifest, records, extractors, sets, fingerprints, todo, skipped, known_failed,
                     retrying, captions, in_progress,
                     crashed={v: crash_error(records[v], info) for v, (info, _) in dead.items()},
                     crash_files=[path for _, files in dead.values() for path in files])
