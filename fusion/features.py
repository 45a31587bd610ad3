"""The one feature loader shared by training, indexing and evaluation: a dataset's stored
features (:class:`DatasetFeatures`) from the contract-A store (``data.store``), read with bounded memory.

:func:`load_features` opens ``clip_frames`` + ``clip_text`` (and ``audio`` / ``motion`` when asked)
through each feature folder's memory-mapped cache (:mod:`fusion.featurecache`, built once from the
shards) as one :class:`~fusion.batches.Ragged` per modality: frames ``[T, D]`` per video, caption
tokens ``[L, D]`` per caption, audio windows ``[Ta, 128]`` and motion clips ``[Tm, 2304]`` per video
(length 0 and ``has_audio`` / ``has_motion`` False where a video has none). Only row indices live
in memory; :class:`DatasetFeatures` selects splits and captions and assembles padded batches
(:mod:`fusion.batches`) with one vectorised gather per batch, which reads just the steps it takes
(frames sampled by :mod:`fusion.sampling`). ``in_memory=True`` reads the values into memory instead
(same rows, same batches).

Videos are the manifest's videos whose frames are ``ok``; captions the ``ok`` text rows of those
videos. Splits come from the manifest; when it has no ``val`` split, a fixed fraction of ``train``
is held out (seed 0, the same for every model) so model selection never sees the test split;
``val_holdout: 0`` holds out nothing (every training video trains; selection = the last epoch).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from data.manifest import read_manifest
from data.modalities import AUDIO, CLIP_FRAMES, CLIP_TEXT, MOTION
from data.settings import Settings, get_settings
from data.store import FeatureSet, list_extractors
from fusion.batches import Ragged, TextBatch, VideoBatch, truncate_tokens
from fusion.featurecache import StoredRows, open_rows
from fusion.sampling import other_view, segment_positions, uniform_positions

AUDIO_WINDOW_S = 0.96  # VGGish window; audio timestamps are window starts, centres are used
STATISTICS_CHUNK_BYTES = 64 << 20   # float64 rows per chunk of input_statistics (65,536 audio windows)


def pick_extractor(settings: Settings, dataset: str, modality: str, explicit: str | None = None) -> dict:
    """The ``_extractor.json`` of the extractor to use for ``dataset`` / ``modality``.

    Default: the single one stored. Raises FileNotFoundError when none is stored and ValueError
    listing the choices when there are several (or when ``explicit`` is not among them).
    """
    choices = list_extractors(settings.features_dir, dataset, modality)
    where = settings.features_dir / dataset / modality
    if not choices:
        raise FileNotFoundError(f"no {modality!r} features for dataset {dataset!r} under {where}; "
                                f"run the extraction first")
    if explicit:
        for info in choices:
            if info["extractor_id"] == explicit:
                return info
        raise ValueError(f"extractor-id {explicit!r} not stored for {dataset}/{modality}; stored: "
                         f"{_describe(choices)}")
    if len(choices) > 1:
        raise ValueError(f"{len(choices)} extractors stored for {dataset}/{modality} ({_describe(choices)}); "
                         f"choose one with extractors: {{{modality}: ID}} in the config")
    return choices[0]


def _describe(choices: list[dict]) -> str:
    parts = []
    for c in choices:
        p = c.get("params", {})
        parts.append(f"{c['extractor_id']} (model={p.get('model')}, weights={p.get('weights')})")
    return ", ".join(parts)


@dataclass
class DatasetFeatures:
    """Every stored feature a model needs for one dataset, ragged and ready to batch.

    Videos are the manifest videos whose frames are ``ok``; ``captions`` are the ``ok`` text rows
    of those videos (``caption_video[q]`` = index of the video caption ``q`` describes).
    """

    dataset: str
    extractor_ids: dict[str, str]
    infos: dict[str, dict]
    video_ids: list[str]
    splits: dict[str, np.ndarray]      # split name -> video indices
    frames: Ragged
    text: Ragged
    eot: torch.Tensor                  # [Q]
    caption_video: torch.Tensor        # [Q] video index
    captions: list[str]
    caption_index: list[int]           # index in the manifest's caption list
    audio: Ragged | None = None
    has_audio: torch.Tensor | None = None
    motion: Ragged | None = None
    has_motion: torch.Tensor | None = None
    notes: list[str] | None = None     # what was dropped while loading (failed rows ...)
    listed: dict[str, tuple[int, int]] | None = None   # manifest split -> (videos, captions) it lists

    def __post_init__(self):
        self._uniform: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._captions_of: dict[int, list[int]] | None = None

    @property
    def random_weights(self) -> bool:
        return any(info.get("random_weights", False) for info in self.infos.values())

    # ---- selection ---------------------------------------------------------------------------
    def split_videos(self, split: str) -> np.ndarray:
        if split not in self.splits:
            raise ValueError(f"dataset {self.dataset!r} has no split {split!r}; splits: {sorted(self.splits)}")
        return self.splits[split]

    def listed_counts(self, split: str, which: str = "all") -> tuple[int, int]:
        """(videos, queries) the manifest lists for ``split``, before videos without usable features
        were dropped; a ``val`` split held out of ``train`` here counts what was held out."""
        if self.listed and split in self.listed:
            videos, captions = self.listed[split]
            return videos, captions if which == "all" else videos
        return len(self.split_videos(split)), len(self.split_captions(split, which))

    def split_captions(self, split: str, which: str = "all") -> np.ndarray:
        """Caption indices of a split's videos: every caption (``all``) or each video's first (``first``)."""
        if which not in ("all", "first"):
            raise ValueError(f"captions={which!r}: expected 'all' or 'first'")
        if self._captions_of is None:
            self._captions_of = {}
            for q, v in enumerate(self.caption_video.tolist()):
                self._captions_of.setdefault(v, []).append(q)
        out = []
        for v in self.split_videos(split).tolist():
            caps = self._captions_of.get(v, [])
            out.extend(caps if which == "all" else caps[:1])
        return np.asarray(out, np.int64)

    def input_statistics(self, split: str = "train", chunk_rows: int | None = None
                         ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``(mean [C], std [C])`` of every stored row of ``audio`` / ``motion`` over ``split``'s
        videos that have the modality (modalities without such rows are left out). Accumulated in
        float64 over chunks of ``chunk_rows`` steps of the videos in order (default: 64 MiB of
        float64 per chunk), so memory stays flat for any dataset size."""
        out = {}
        for name in (AUDIO, MOTION):
            ragged, has = getattr(self, name), getattr(self, f"has_{name}")
            if ragged is None:
                continue
            chunk = chunk_rows or max(1, STATISTICS_CHUNK_BYTES // (8 * ragged.flat.shape[1]))
            chosen = torch.zeros(len(ragged.lengths), dtype=torch.bool)
            chosen[torch.as_tensor(self.split_videos(split), dtype=torch.int64)] = True
            keep = torch.repeat_interleave(chosen & has, ragged.lengths)          # [S] steps to count
            ends = torch.cumsum(ragged.lengths, 0)
            where = torch.repeat_interleave(ragged.starts - (ends - ragged.lengths), ragged.lengths) \
                + torch.arange(len(keep))                                          # [S] rows of flat
            total = torch.zeros(ragged.flat.shape[1], dtype=torch.float64)
            squares, count = torch.zeros_like(total), 0
            for start in range(0, len(keep), chunk):
                rows = ragged.flat[where[start: start + chunk][keep[start: start + chunk]]].double()
                total += rows.sum(0)
                squares += (rows * rows).sum(0)
                count += len(rows)
            if count:
                mean = total / count
                out[name] = (mean.float(), (squares / count - mean * mean).clamp(min=0).sqrt().float())
        return out

    # ---- batches -----------------------------------------------------------------------------
    def video_batch(self, videos: torch.Tensor | np.ndarray, max_frames: int, sampling: str = "uniform",
                    generator: torch.Generator | None = None) -> VideoBatch:
        """Padded inputs of ``videos`` (indices); ``sampling`` = ``uniform`` or ``two-view`` (random)."""
        rows = torch.as_tensor(videos, dtype=torch.int64)
        return self._batch_at(rows, *self._positions(rows, max_frames, sampling, generator))

    def video_views(self, videos: torch.Tensor | np.ndarray, max_frames: int, sampling: str,
                    generator: torch.Generator) -> tuple[VideoBatch, VideoBatch]:
        """Two views of ``videos`` for HCMI's label denoising: the ``sampling`` view and
        :func:`other_view` of it, which differs for every video of two or more frames."""
        rows = torch.as_tensor(videos, dtype=torch.int64)
        positions, mask = self._positions(rows, max_frames, sampling, generator)
        second = other_view(self.frames.lengths[rows], positions, mask, max_frames, generator)
        return self._batch_at(rows, positions, mask), self._batch_at(rows, *second)

    def _positions(self, rows: torch.Tensor, max_frames: int, sampling: str,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        if sampling == "uniform":
            if max_frames not in self._uniform:
                self._uniform[max_frames] = uniform_positions(self.frames.lengths, max_frames)
            return tuple(t[rows] for t in self._uniform[max_frames])
        if sampling == "two-view":
            if generator is None:
                raise ValueError("two-view sampling needs a torch.Generator")
            return segment_positions(self.frames.lengths[rows], max_frames, generator)
        raise ValueError(f"frame sampling {sampling!r}: expected 'uniform' or 'two-view'")

    def _batch_at(self, rows: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> VideoBatch:
        return video_batch_at(rows, positions, mask, self.frames, (self.audio, self.has_audio),
                              (self.motion, self.has_motion))

    def text_batch(self, queries: torch.Tensor | np.ndarray, max_words: int, eot_only: bool = False) -> TextBatch:
        """Tokens of ``queries`` (caption indices); longer captions keep their first L-1 tokens + EOT.

        ``eot_only``: just the EOT embedding as a one-token caption ``[Q, 1, D]`` (for models that
        read nothing else; saves gathering every token).
        """
        rows = torch.as_tensor(queries, dtype=torch.int64)
        if eot_only:
            ones = torch.ones(len(rows), 1, dtype=torch.bool)
            tokens, _ = self.text.gather(rows, self.eot[rows][:, None], ones)
            return TextBatch(tokens, ones, torch.zeros(len(rows), dtype=torch.int64))
        return truncate_tokens(self.text, rows, self.eot[rows], max_words)


def video_batch_at(rows: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, frames: Ragged,
                   audio: tuple[Ragged | None, torch.Tensor | None] = (None, None),
                   motion: tuple[Ragged | None, torch.Tensor | None] = (None, None)) -> VideoBatch:
    """The model's video inputs of ``rows``: frames at within-row ``positions`` / ``mask`` ``[B, N]``
    and, when given, whole audio / motion rows with their ``[R]`` bool presence flags."""
    values, frame_t = frames.gather(rows, positions, mask)
    batch = VideoBatch(values, mask, frame_t)
    if audio[0] is not None:
        batch.audio, batch.audio_mask, batch.audio_t = audio[0].pad(rows)
        batch.has_audio = audio[1][rows]
    if motion[0] is not None:
        batch.motion, batch.motion_mask, batch.motion_t = motion[0].pad(rows)
        batch.has_motion = motion[1][rows]
    return batch


def load_features(dataset: str, modalities: list[str] | tuple[str, ...], *, extractors: dict | None = None,
                  settings: Settings | None = None, val_holdout: float = 0.1,
                  in_memory: bool = False) -> DatasetFeatures:
    """Load ``clip_frames`` + ``clip_text`` and the extra ``modalities`` (``audio``, ``motion``).

    ``extractors`` maps modality -> extractor-id (default: the single one stored). The values stay
    memory-mapped (:mod:`fusion.featurecache`) unless ``in_memory``.
    """
    settings = settings or get_settings()
    extractors = dict(extractors or {})
    manifest = read_manifest(settings.manifest_path(dataset))
    wanted = [CLIP_FRAMES, CLIP_TEXT] + [m for m in (AUDIO, MOTION) if m in modalities]
    infos = {m: pick_extractor(settings, dataset, m, extractors.get(m)) for m in wanted}
    tables = {m: open_rows(FeatureSet(settings.feature_dir(dataset, m, infos[m]["extractor_id"])), in_memory=in_memory)
              for m in wanted}
    notes: list[str] = []

    frames_t = tables[CLIP_FRAMES]
    status = np.asarray(frames_t.status)
    pos_in_table = {v: i for i, v in enumerate(frames_t.video_ids) if status[i] == "ok"}
    manifest_ids = manifest.video_ids
    video_ids = [v for v in manifest_ids if v in pos_in_table and frames_t.lengths[pos_in_table[v]] > 0]
    if len(video_ids) < len(manifest_ids):
        notes.append(f"{len(manifest_ids) - len(video_ids)} manifest videos without ok frames were left out")
    if not video_ids:
        raise ValueError(f"dataset {dataset!r}: no video has ok {CLIP_FRAMES} features")
    index = {v: i for i, v in enumerate(video_ids)}
    frames = _ragged(frames_t).select(torch.tensor([pos_in_table[v] for v in video_ids], dtype=torch.int64))

    text_t = tables[CLIP_TEXT]
    tstatus = np.asarray(text_t.status)
    text_rows = [i for i, v in enumerate(text_t.video_ids) if v in index and tstatus[i] == "ok"]
    text = _ragged(text_t).select(torch.tensor(text_rows, dtype=torch.int64))
    # selected before the cast: rows that are not ok (e.g. videos without captions) hold no eot index
    eot = torch.tensor(np.asarray(text_t.column("eot_index"), object)[text_rows].astype(np.int64))
    caption_video = torch.tensor([index[v] for v in np.asarray(text_t.video_ids, object)[text_rows]], dtype=torch.int64)
    all_captions = text_t.column("caption")
    captions = [all_captions[i] for i in text_rows]
    cap_index = [int(c) for c in np.asarray(text_t.column("caption_index"), object)[text_rows]]

    out = DatasetFeatures(dataset, {m: infos[m]["extractor_id"] for m in wanted}, infos, video_ids,
                          _splits(manifest, index, val_holdout), frames, text, eot, caption_video,
                          captions, cap_index, notes=notes, listed=_listed(manifest))
    if AUDIO in wanted:
        out.audio, out.has_audio = _optional_modality(tables[AUDIO], video_ids, AUDIO, notes,
                                                      audio_centre_s(infos[AUDIO]), "has_audio")
    if MOTION in wanted:
        out.motion, out.has_motion = _optional_modality(tables[MOTION], video_ids, MOTION, notes, 0.0, None)
    return out


def _listed(manifest) -> dict[str, tuple[int, int]]:
    """Manifest split -> (videos, captions) it lists (``validation`` read as ``val``)."""
    out: dict[str, tuple[int, int]] = {}
    for split, caps in zip(manifest.table.column("split").to_pylist(), manifest.table.column("captions").to_pylist()):
        name = "val" if split == "validation" else split
        videos, captions = out.get(name, (0, 0))
        out[name] = (videos + 1, captions + len(caps))
    return out


def audio_centre_s(info: dict) -> float:
    """Half the audio example length: the extractor records it as ``example_s`` (0.96 s)."""
    return float(info.get("params", {}).get("example_s", AUDIO_WINDOW_S)) / 2


def _ragged(table: StoredRows, time_offset_s: float = 0.0) -> Ragged:
    """Every row of ``table`` as a :class:`Ragged` over its (mapped) values; ``time_offset_s`` is
    added to the times (audio: window starts -> centres)."""
    times = table.times + np.float32(time_offset_s) if time_offset_s else table.times
    offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(table.lengths)]).astype(np.int64))
    return Ragged.from_offsets(torch.from_numpy(table.values), offsets, torch.from_numpy(times))


def _optional_modality(table: StoredRows, video_ids: list[str], name: str, notes: list[str],
                       time_offset_s: float, flag_column: str | None) -> tuple[Ragged, torch.Tensor]:
    """Rows aligned with ``video_ids``; missing / empty / failed rows become length 0 and flag False."""
    status = np.asarray(table.status)
    flags = np.asarray(table.column(flag_column), bool) if flag_column and len(table) else None
    pos = {v: i for i, v in enumerate(table.video_ids)}
    full = _ragged(table, time_offset_s)
    rows, present = [], []
    for v in video_ids:
        i = pos.get(v)
        ok = i is not None and status[i] == "ok" and table.lengths[i] > 0 and (flags is None or flags[i])
        rows.append(i if ok else -1)
        present.append(ok)
    missing = len(video_ids) - sum(present)
    if missing:
        notes.append(f"{missing} videos have no usable {name} (absent, empty or failed): branch masked")
    return full.select(torch.tensor(rows, dtype=torch.int64)), torch.tensor(present)


def _splits(manifest, index: dict[str, int], val_holdout: float) -> dict[str, np.ndarray]:
    splits: dict[str, list[int]] = {}
    for vid, split in zip(manifest.video_ids, manifest.table.column("split").to_pylist()):
        if vid in index:
            splits.setdefault("val" if split == "validation" else split, []).append(index[vid])
    out = {k: np.asarray(v, np.int64) for k, v in splits.items()}
    if "val" not in out and "train" in out and val_holdout > 0:
        train = out["train"]
        n_val = int(round(val_holdout * len(train))) if val_holdout < 1 else int(val_holdout)
        n_val = min(max(n_val, 1), len(train) - 1)
        perm = np.random.default_rng(0).permutation(len(train))
        out["val"] = np.sort(train[perm[:n_val]])
        out["train"] = np.sort(train[perm[n_val:]])
    return out
