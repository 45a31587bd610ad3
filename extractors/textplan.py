"""Per-caption skip-if-done for text rows (a feature set keyed by captions, e.g. ``clip_text``).

Each text row carries its own caption digest (:func:`data.fingerprint.caption_digest` over its
caption index and text), so when a video's captions change only its changed or new captions are
encoded again. All rows of one video still live in one shard (the store's rule, on which
newest-shard-wins, compaction and every reader rely): the video's new shard holds the newly
encoded rows plus its unchanged stored rows written again as they are, and the row of a removed
caption is not written again, so it is superseded and compacted away like any older row.

Rows written before per-caption digests (they carry the video's captions digest, or nothing)
match no caption digest: such a video's captions are all encoded once, then it is skipped.
"""
from __future__ import annotations

from dataclasses import dataclass

from data.manifest import VideoRecord
from data.store import FeatureRow, FeatureSet, VideoState

Captions = list[tuple[int, str]]


@dataclass
class CaptionPlan:
    """What one shard's run does for a set keyed by captions.

    ``encode``: video -> the ``(caption index, caption)`` pairs to encode; ``keep``: video -> its
    stored rows to write again unchanged (a video only in ``keep`` lost a caption: rewritten, not
    encoded). Videos in neither are done.
    """

    order: list[str]
    encode: dict[str, Captions]
    keep: dict[str, list[FeatureRow]]

    @property
    def redo(self) -> set[str]:
        """Videos whose rows this run writes."""
        return set(self.encode) | set(self.keep)

    def complete(self, new: list[FeatureRow]) -> tuple[list[FeatureRow], int]:
        """``new`` rows plus the kept rows of every video that did not fail (a failed video's kept
        rows are dropped: its next run encodes all its captions), in shard order and caption order;
        returns the rows and how many were kept."""
        failed = {r.video_id for r in new if r.status == "failed"}
        kept = [r for v, rows in self.keep.items() if v not in failed for r in rows]
        place = {v: k for k, v in enumerate(self.order)}
        rows = sorted(new + kept, key=lambda r: (place[r.video_id], _index(r)))
        return rows, len(kept)


def _index(row: FeatureRow) -> int:
    index = row.extra.get("caption_index")
    return -1 if index is None else index


def plan_captions(fs: FeatureSet, expected: dict[str, tuple[str, ...]], records: dict[str, VideoRecord],
                  states: dict[str, VideoState] | None = None) -> CaptionPlan:
    """Compare each video's stored rows with ``expected`` (video -> its captions' digests, in order).

    ``states``: ``fs.video_states()`` when the caller has read them already. Only the rows of
    videos that keep some captions are read (values included); a caption whose stored row is gone
    meanwhile (another run compacted or quarantined it) is simply encoded.
    """
    states = fs.video_states() if states is None else states
    encode: dict[str, Captions] = {}
    same: dict[str, set[int]] = {}
    for vid, want in expected.items():
        state = states.get(vid)
        if state is not None and state.done_for(want):
            continue
        have = state.fingerprint if state is not None and isinstance(state.fingerprint, tuple) else ()
        same[vid] = {i for i, digest in enumerate(want) if i < len(have) and have[i] == digest}
    keep: dict[str, list[FeatureRow]] = {}
    partial = [v for v, idx in same.items() if idx]
    if partial:
        table = fs.read(partial)
        for i, (vid, index, fingerprint, status) in enumerate(zip(
                table.video_ids, table.column("caption_index"), table.column("fingerprint"), table.status)):
            if status == "ok" and index in same[vid] and fingerprint == expected[vid][index]:
                keep.setdefault(vid, []).append(table.feature_row(i))
    for vid in same:
        kept = {r.extra["caption_index"] for r in keep.get(vid, [])}
        captions = records[vid].captions
        todo = [(i, captions[i]) for i in range(len(expected[vid])) if i not in kept]
        if todo or not captions:
            encode[vid] = todo
    return CaptionPlan(list(expected), encode, keep)
