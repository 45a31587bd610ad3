"""The common extractor base (the video_features pattern).

A subclass says what one video needs from the decoder (:attr:`Extractor.request`), turns each
decoded window of a video into model *units* (:meth:`units`: CLIP frames, audio windows, SlowFast
clips; :meth:`last_units` for what is left at the end of the video, e.g. captions or a partial
clip), runs the model on a batch of units (:meth:`forward`) and turns a video's unit outputs into
store rows (:meth:`to_rows`). The base class owns everything else:

- streaming: a video arrives as :class:`~extractors.decode.DecodedChunk` windows
  (:meth:`begin`, :meth:`feed`, :meth:`end`; :func:`push_video` feeds several extractors from one
  decode), and a window's units go to the model as soon as a batch is full, so memory holds at
  most about one batch of units and one window per extractor, whatever the video's length;
- batching across videos: units of consecutive videos are packed into batches of ``batch_size``,
  and each video's rows are released as soon as its last unit has gone through the model;
- error recording: a decode failure (at open or in the middle of the stream), a failure while
  preparing units, or a failed batch (each of its parts is then retried alone) becomes a
  ``failed`` row with the error text; the run goes on;
- identity and skip-if-done: :attr:`spec` (the extractor-id and what a row's fingerprint names:
  the video file, or for an extractor that decodes nothing, i.e. text, the row's own caption) and
  :meth:`feature_set` (the :class:`data.store.FeatureSet` that the run checks and writes).

Where the weights come from and how models are loaded once per process: :mod:`extractors.weights`;
precision names and dtypes: :mod:`extractors.precision`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from data.manifest import VideoRecord
from data.store import ExtractorSpec, FeatureRow, FeatureSet
from extractors.decode import DecodedChunk, DecodedVideo, DecodeError, DecodeRequest
from extractors.precision import PRECISION_DTYPES
from extractors.weights import Weights


@dataclass
class VideoItem:
    """One video on its way through the extractors: the manifest record and its decode.

    ``decoded``: the stream facts (and, from :func:`~extractors.decode.decode_video`, all arrays);
    ``chunks``: the decoded windows, one pass (a generator that may raise
    :class:`~extractors.decode.DecodeError`) or a list; ``None`` = ``decoded`` as one window.
    ``error``: the file could not be opened. ``captions``: per text modality, the
    ``(caption index, caption)`` pairs to encode (a modality absent: all of the record's captions).
    """

    record: VideoRecord
    decoded: DecodedVideo | None = None
    error: str | None = None
    chunks: Iterable[DecodedChunk] | None = None
    captions: dict[str, list[tuple[int, str]]] = field(default_factory=dict)

    @property
    def video_id(self) -> str:
        return self.record.video_id

    def windows(self) -> Iterable[DecodedChunk]:
        if self.chunks is not None:
            return self.chunks
        return [self.decoded.as_chunk()] if self.decoded is not None else []


class Extractor(ABC):
    """Base of every modality extractor; see the module docstring for the split of work."""

    modality: ClassVar[str]
    code_version: ClassVar[str]
    extra_columns: ClassVar[dict[str, pa.DataType]] = {}

    def __init__(self, model_name: str, weights: Weights, device: torch.device, precision: str,
                 batch_size: int):
        self.model_name = model_name
        self.weights = weights
        self.device = device
        self.precision = precision
        self.batch_size = batch_size
        self.dtype = PRECISION_DTYPES[precision]
        self._queue: list[_Queued] = []

    # ---- what a subclass provides ----------------------------------------------------------
    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature dimension D."""

    @property
    def request(self) -> DecodeRequest:
        """What one video needs from the decoder (empty for text)."""
        return DecodeRequest()

    @abstractmethod
    def extra_params(self) -> dict:
        """Sampling / size / window parameters that change the numbers."""

    @abstractmethod
    def units(self, item: VideoItem, chunk: DecodedChunk, state: dict) -> tuple[Any, np.ndarray | None]:
        """``(units, times)`` of one decoded window: model inputs indexable along the first axis and
        their ``[n]`` timestamps (s) or None. ``state`` is this video's scratch dict (carry-over)."""

    def last_units(self, item: VideoItem, state: dict) -> tuple[Any, np.ndarray | None]:
        """Units left when the video ends (default none)."""
        return [], None

    @abstractmethod
    def forward(self, batch: Any) -> Sequence:
        """Model outputs for a batch of units (first axis = units)."""

    @abstractmethod
    def to_rows(self, item: VideoItem, outputs: list, times: np.ndarray) -> list[FeatureRow]:
        """Store rows of one video from its per-unit outputs and ``[n]`` unit times (in order)."""

    def collate(self, parts: list) -> Any:
        """Join unit slices of several videos into one batch (tensors/arrays by default)."""
        if isinstance(parts[0], torch.Tensor):
            return torch.cat(parts)
        return np.concatenate(parts)

    def no_unit_rows(self, item: VideoItem) -> list[FeatureRow]:
        """Rows of a video that decoded fine but has no unit (default: an ``empty`` row)."""
        return [FeatureRow(item.video_id, np.zeros((0, self.dim), np.float32), np.zeros(0), "empty")]

    def failed_rows(self, item: VideoItem, error: str) -> list[FeatureRow]:
        return [FeatureRow.failed(item.video_id, self.dim, error, **self.failed_extra(item))]

    def failed_extra(self, item: VideoItem) -> dict:
        return {}

    def decode_error(self, item: VideoItem) -> str | None:
        """The decode problem that stops this extractor for ``item`` (None: go on)."""
        if item.error is not None:
            return item.error
        if self.request.wants_video and item.decoded is not None and item.decoded.video_error:
            return item.decoded.video_error
        return None

    # ---- identity ------------------------------------------------------------------------------
    @property
    def spec(self) -> ExtractorSpec:
        params = {"model": self.model_name, **self.weights.as_params(), "precision": self.precision,
                  "code_version": self.code_version, **self.extra_params()}
        return ExtractorSpec(self.modality, self.dim, params, self.weights.is_random, dict(self.extra_columns),
                             keyed_by="captions" if self.request.empty else "file")

    @property
    def extractor_id(self) -> str:
        return self.spec.extractor_id

    def feature_set(self, settings, dataset: str) -> FeatureSet:
        return FeatureSet(settings.feature_dir(dataset, self.modality, self.extractor_id), self.spec)

    # ---- streaming and batching across videos -----------------------------------------------------
    def push(self, item: VideoItem) -> list[FeatureRow]:
        """One whole video (all its windows); returns the rows of every video finished meanwhile."""
        return push_video([self], item)[self.modality]

    def begin(self, item: VideoItem) -> list[FeatureRow]:
        """Start a video; a decode problem that stops this extractor gives its failed rows at once."""
        error = self.decode_error(item)
        if error is not None:
            return self.failed_rows(item, error)
        self._queue.append(_Queued(item))
        return []

    def feed(self, item: VideoItem, chunk: DecodedChunk) -> list[FeatureRow]:
        """Units of one window of a started video; runs every batch that is full."""
        q = self._find(item)
        if q is None:
            return []
        try:
            units, times = self.units(item, chunk, q.state)
        except Exception as exc:  # noqa: BLE001 - any failure of one video is recorded, not fatal
            return self._fail(q, f"{item.record.path}: {self.modality} input preparation failed: "
                                 f"{exc.__class__.__name__}: {exc}")
        return self._add(q, units, times)

    def end(self, item: VideoItem) -> list[FeatureRow]:
        """The video's windows are all fed; its rows come when its last unit went through the model."""
        q = self._find(item)
        if q is None:
            return []
        try:
            units, times = self.last_units(item, q.state)
        except Exception as exc:  # noqa: BLE001
            return self._fail(q, f"{item.record.path}: {self.modality} input preparation failed: "
                                 f"{exc.__class__.__name__}: {exc}")
        q.closed = True
        rows = self._add(q, units, times)
        if q.n_units == 0 and q in self._queue:
            self._queue.remove(q)
            return rows + self.no_unit_rows(item)
        return rows + self._release()

    def abort(self, item: VideoItem, error: str) -> list[FeatureRow]:
        """The decode failed mid-stream: drop what was queued of the video and record it failed."""
        q = self._find(item)
        return [] if q is None else self._fail(q, error)

    def flush(self) -> list[FeatureRow]:
        """Run whatever is queued; returns the remaining rows."""
        rows: list[FeatureRow] = []
        while any(q.pending for q in self._queue):
            rows += self._run_batch()
        return rows + self._release()

    def _find(self, item: VideoItem) -> "_Queued | None":
        return next((q for q in self._queue if q.item is item), None)

    def _fail(self, q: "_Queued", error: str) -> list[FeatureRow]:
        self._queue.remove(q)
        return self.failed_rows(q.item, error)

    def _add(self, q: "_Queued", units, times) -> list[FeatureRow]:
        if len(units):
            q.pending.append(units)
            q.n_units += len(units)
            if times is not None:
                q.times.append(np.asarray(times, np.float64))
        rows: list[FeatureRow] = []
        while sum(len(p) for x in self._queue for p in x.pending) - sum(x.offset for x in self._queue) \
                >= self.batch_size:
            rows += self._run_batch()
        return rows

    def _forward(self, parts: list) -> list:
        with torch.inference_mode():
            return list(self.forward(self.collate(parts)))

    def _run_batch(self) -> list[FeatureRow]:
        """Forward the next ``batch_size`` pending units; a failed batch is re-run part by part."""
        owners, room = [], self.batch_size
        for q in self._queue:
            while q.pending and room:
                units = q.pending[0]
                take = min(len(units) - q.offset, room)
                owners.append((q, units[q.offset:q.offset + take]))
                q.offset += take
                room -= take
                if q.offset == len(units):
                    q.pending.pop(0)
                    q.offset = 0
            if not room:
                break
        try:
            outputs = self._forward([part for _, part in owners])
        except Exception:  # noqa: BLE001 - find the culprit: each part of the batch alone
            return self._isolate(owners)
        pos = 0
        for q, part in owners:
            q.outputs.extend(outputs[pos:pos + len(part)])
            pos += len(part)
        return self._release()

    def _isolate(self, owners: list) -> list[FeatureRow]:
        """Run each part of a failed batch on its own, so a bad video fails alone."""
        rows = []
        for q, part in owners:
            if q not in self._queue:
                continue  # an earlier part of the same video already failed
            try:
                q.outputs.extend(self._forward([part]))
            except Exception as exc:  # noqa: BLE001
                rows += self._fail(q, f"{q.item.record.path}: {self.modality} model failed: "
                                      f"{exc.__class__.__name__}: {exc}")
        return rows + self._release()

    def _release(self) -> list[FeatureRow]:
        """Rows of every ended video whose units have all gone through the model."""
        rows = []
        for q in [q for q in self._queue if q.closed and len(q.outputs) == q.n_units]:
            self._queue.remove(q)
            times = np.concatenate(q.times) if q.times else np.zeros(0)
            try:
                rows += self.to_rows(q.item, q.outputs, times)
            except Exception as exc:  # noqa: BLE001
                rows += self.failed_rows(q.item, f"{q.item.record.path}: {self.modality} output failed: "
                                                 f"{exc.__class__.__name__}: {exc}")
        return rows


def push_video(extractors: Sequence[Extractor], item: VideoItem) -> dict[str, list[FeatureRow]]:
    """Feed every window of one decode to each extractor; returns the rows finished, per modality.

    A :class:`~extractors.decode.DecodeError` in the middle of the stream (corrupt data, time
    budget) records the video as failed in every extractor that uses the file (text rows go on).
    """
    rows: dict[str, list[FeatureRow]] = {e.modality: e.begin(item) for e in extractors}
    try:
        for chunk in item.windows():
            for e in extractors:
                rows[e.modality] += e.feed(item, chunk)
    except DecodeError as exc:
        for e in extractors:
            rows[e.modality] += e.end(item) if e.request.empty else e.abort(item, str(exc))
        return rows
    for e in extractors:
        rows[e.modality] += e.end(item)
    return rows


@dataclass
class _Queued:
    """A started video in an extractor's queue: units waiting for the model, outputs so far."""

    item: VideoItem
    state: dict = field(default_factory=dict)       # the subclass's carry-over between windows
    pending: list = field(default_factory=list)     # unit arrays not yet (fully) forwarded
    offset: int = 0                                 # units of pending[0] already forwarded
    n_units: int = 0                                # units of the video so far
    times: list = field(default_factory=list)       # [n] unit times per window
    outputs: list = field(default_factory=list)     # per-unit outputs so far
    closed: bool = False                            # end() was called
