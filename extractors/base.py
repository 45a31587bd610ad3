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
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable, Sequence

import numpy as np
import pyarrow as pa
import torch

from data.fingerprint import sha256_file
from data.manifest import VideoRecord
from data.store import ExtractorSpec, FeatureRow, FeatureSet
from extractors.decode import DecodedChunk, DecodedVideo, DecodeError, DecodeRequest


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


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN reports bf16 support on this CPU (AVX-512 or better); elsewhere PyTorch
    emulates bf16 matrix products, which may be slower than fp32. False when torch cannot tell."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``fp32`` elsewhere (extraction; query encoding may also use bf16)."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if precision not in ("fp16", "fp32"):
        raise ValueError(f"precision {precision!r}: expected auto, fp16 or fp32")
    return precision


_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file (cached per path, size and mtime)."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(path)
    return _SHA_CACHE[key]


@dataclass(frozen=True)
class Weights:
    """Where model weights come from: ``random`` (seeded), a local file, or a pretrained tag."""

    source: str           # "random", an absolute file path, or a tag
    sha256: str | None    # file hash for local files
    seed: int | None      # torch seed for random weights

    @classmethod
    def parse(cls, weights: str | None, seed: int = 0) -> "Weights":
        weights = weights or "random"
        if weights == "random":
            return cls("random", None, int(seed))
        if os.path.sep in weights or os.path.exists(weights):
            path = Path(weights).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"weights file {weights!r} not found")
            return cls(str(path.resolve()), file_sha256(path), None)
        return cls(weights, None, None)

    @property
    def is_random(self) -> bool:
        return self.source == "random"

    @property
    def is_file(self) -> bool:
        return self.sha256 is not None

    def as_params(self) -> dict:
        return {"weights": self.source, "weights_sha256": self.sha256, "seed": self.seed}

    def check_file(self) -> None:
        """Refuse a weights file whose content changed since it was recorded."""
        if self.is_file and file_sha256(self.source) != self.sha256:
            raise ValueError(f"weights file {self.source}: sha256 differs from the recorded {self.sha256}")


def seeded_build(weights: Weights, build):
    """Call ``build()`` with torch's RNG seeded from ``weights.seed`` (random weights are rebuildable)."""
    if not weights.is_random:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed)
        return build()


def load_state_dict_file(path: str) -> dict:
    """A state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state


def apply_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error naming it."""
    expected = model.state_dict()
    problems = [f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems += [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    if problems:
        raise ValueError(f"{source}: state dict does not fit {type(model).__name__} "
                         f"({len(problems)} problems: {', '.join(problems[:6])})")
    model.load_state_dict(state)


_LOCAL_MODELS: dict[tuple, torch.nn.Module] = {}


def cached_local_model(what: str, key: tuple, weights: Weights, build, adapt_state, device: torch.device,
                       precision: str) -> torch.nn.Module:
    """A model whose weights are ``random`` or a local state-dict file, built once per process.

    ``build()`` makes the architecture (seeded when random); a file's state dict goes through
    ``adapt_state`` (drop the keys the extractor replaces) and must then fit exactly; any other
    weights source is refused. Returned in eval mode on ``device`` at ``precision``. ``key`` holds the
    build parameters; the file is re-checked on every call, so a changed file never hides behind
    the cache.
    """
    weights.check_file()
    full_key = (what, *key, weights, str(device), precision)
    if full_key not in _LOCAL_MODELS:
        model = seeded_build(weights, build)
        if weights.is_file:
            apply_state_dict(model, adapt_state(load_state_dict_file(weights.source)), weights.source)
        elif not weights.is_random:
            raise ValueError(f"{what} weights {weights.source!r}: no named pretrained weights here; "
                             f"give 'random' or a local file")
        _LOCAL_MODELS[full_key] = model.eval().to(device, PRECISION_DTYPES[precision])
    return _LOCAL_MODELS[full_key]


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
