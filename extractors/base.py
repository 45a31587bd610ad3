"""The common extractor base (the video_features pattern).

A subclass says what one video needs from the decoder (:attr:`Extractor.request`), turns a decoded
video into model *units* (:meth:`units`: CLIP frames, audio windows, SlowFast clips, captions), runs
the model on a batch of units (:meth:`forward`) and turns a video's unit outputs into store rows
(:meth:`to_rows`). The base class owns everything else:

- batching across videos: units of consecutive videos are packed into batches of ``batch_size``,
  and each video's rows are released as soon as its last unit has gone through the model;
- error recording: a decode failure, a failure while preparing units, or a failed batch (each of its
  videos is then retried alone) becomes a ``failed`` row with the error text; the run goes on;
- identity and skip-if-done: :attr:`spec` (the extractor-id and what a row's fingerprint names:
  the video file, or for an extractor that decodes nothing, i.e. text, the video's captions) and
  :meth:`feature_set` (the :class:`data.store.FeatureSet` that the run checks and writes).
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import pyarrow as pa
import torch

from data.manifest import VideoRecord
from data.store import ExtractorSpec, FeatureRow, FeatureSet
from extractors.decode import DecodedVideo, DecodeRequest


@dataclass
class VideoItem:
    """One video on its way through the extractors: the manifest record and its decode result."""

    record: VideoRecord
    decoded: DecodedVideo | None = None
    error: str | None = None  # decode failed (the whole file)

    @property
    def video_id(self) -> str:
        return self.record.video_id


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> ``fp16`` on CUDA, ``fp32`` elsewhere."""
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
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_CACHE[key] = h.hexdigest()
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
        _LOCAL_MODELS[full_key] = model.eval().to(device, torch.float16 if precision == "fp16" else torch.float32)
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
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
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
    def units(self, item: VideoItem) -> Any:
        """Model inputs of one video, indexable along the first axis (``len`` = number of units)."""

    @abstractmethod
    def forward(self, batch: Any) -> Sequence:
        """Model outputs for a batch of units (first axis = units)."""

    @abstractmethod
    def to_rows(self, item: VideoItem, outputs: list) -> list[FeatureRow]:
        """Store rows of one video from its per-unit outputs (in order)."""

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

    # ---- batching across videos ------------------------------------------------------------------
    def push(self, item: VideoItem) -> list[FeatureRow]:
        """Queue one video; returns the rows of every video finished by the batches this triggered."""
        error = self.decode_error(item)
        if error is not None:
            return self.failed_rows(item, error)
        try:
            units = self.units(item)
        except Exception as exc:  # noqa: BLE001 - any failure of one video is recorded, not fatal
            return self.failed_rows(item, f"{item.record.path}: {self.modality} input preparation failed: "
                                          f"{exc.__class__.__name__}: {exc}")
        if len(units) == 0:
            return self.no_unit_rows(item)
        self._queue.append(_Queued(item, units))
        rows: list[FeatureRow] = []
        while sum(len(q.units) - q.sent for q in self._queue) >= self.batch_size:
            rows += self._run_batch()
        return rows

    def flush(self) -> list[FeatureRow]:
        """Run whatever is queued; returns the remaining rows."""
        rows: list[FeatureRow] = []
        while self._queue:
            rows += self._run_batch()
        return rows

    def _forward(self, parts: list) -> list:
        with torch.inference_mode():
            return list(self.forward(self.collate(parts)))

    def _run_batch(self) -> list[FeatureRow]:
        """Forward the next ``batch_size`` queued units; release the videos they complete."""
        owners, room = [], self.batch_size
        for q in self._queue:
            take = min(len(q.units) - q.sent, room)
            owners.append((q, q.units[q.sent:q.sent + take]))
            room -= take
            if room == 0:
                break
        try:
            outputs = self._forward([part for _, part in owners])
        except Exception:  # noqa: BLE001 - find the culprit: each video of the batch alone
            return self._isolate([q for q, _ in owners])
        pos, rows = 0, []
        for q, part in owners:
            q.outputs.extend(outputs[pos:pos + len(part)])
            q.sent += len(part)
            pos += len(part)
            if q.sent == len(q.units):
                self._queue.remove(q)
                rows += self._finish(q)
        return rows

    def _isolate(self, queued: list["_Queued"]) -> list[FeatureRow]:
        """Run each video of a failed batch on its own, so a bad video fails alone."""
        rows = []
        for q in queued:
            self._queue.remove(q)
            q.sent, q.outputs = 0, []
            try:
                while q.sent < len(q.units):
                    part = q.units[q.sent:q.sent + self.batch_size]
                    q.outputs.extend(self._forward([part]))
                    q.sent += len(part)
            except Exception as exc:  # noqa: BLE001
                rows += self.failed_rows(q.item, f"{q.item.record.path}: {self.modality} model failed: "
                                                 f"{exc.__class__.__name__}: {exc}")
                continue
            rows += self._finish(q)
        return rows

    def _finish(self, q: "_Queued") -> list[FeatureRow]:
        try:
            return self.to_rows(q.item, q.outputs)
        except Exception as exc:  # noqa: BLE001
            return self.failed_rows(q.item, f"{q.item.record.path}: {self.modality} output failed: "
                                            f"{exc.__class__.__name__}: {exc}")


@dataclass
class _Queued:
    """A video waiting in an extractor's batch queue."""

    item: VideoItem
    units: Any
    sent: int = 0                                   # units already forwarded
    outputs: list = field(default_factory=list)     # per-unit outputs so far
