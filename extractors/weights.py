"""Where an extractor's model weights come from, and loading them once per process.

:class:`Weights` names the source (``random`` from a seed, a local file with its SHA-256, or a
pretrained tag); it is part of every extractor-id, so features from different weights never mix.
:func:`seeded_build` makes random weights rebuildable from their seed; :func:`cached_local_model`
builds a model from ``random`` or a local state-dict file once per process (a worker that runs many
shards loads each model once) and re-checks the file's hash on every call.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

from data.fingerprint import sha256_file
from extractors.precision import PRECISION_DTYPES

_SHA_CACHE: dict[tuple, str] = {}


class WeightsError(ValueError):
    """A weights file that cannot be used: unreadable, not a state dict, changed since recorded, or
    not fitting the model. Systemic (no video can be extracted with it), so commands end on it with
    one line."""


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
            raise WeightsError(f"weights file {self.source}: sha256 differs from the recorded {self.sha256}")


def seeded_build(weights: Weights, build):
    """Call ``build()`` with torch's RNG seeded from ``weights.seed`` (random weights are rebuildable)."""
    if not weights.is_random:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(weights.seed)
        return build()


def load_state_dict_file(path: str) -> dict:
    """A state dict from ``.safetensors`` or a torch file, never unpickling arbitrary objects; a file
    that is neither is a :class:`WeightsError` naming it."""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise WeightsError(f"weights file {path}: refused by weights-only loading (it is damaged, or holds "
                           "Python objects besides tensors, which are never unpickled); give 'random' or a "
                           ".safetensors / torch state-dict file") from err
    except Exception as err:   # torch and safetensors raise many kinds for a damaged file
        first = (str(err).strip().splitlines() or [""])[0]
        why = type(err).__name__ + (f": {first}" if first and len(first) <= 120 else "")
        raise WeightsError(f"weights file {path}: not a readable state dict ({why}); give 'random' "
                           "or a .safetensors / torch state-dict file") from err
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path}: expected a state dict, found {type(state).__name__}")
    return state


def apply_state_dict(model: torch.nn.Module, state: dict, source: str) -> None:
    """Load ``state`` into ``model``; any missing, unexpected or mis-shaped key is an error naming it."""
    expected = model.state_dict()
    problems = [f"{k} has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
                for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    problems += [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    if problems:
        raise WeightsError(f"{source}: state dict does not fit {type(model).__name__} "
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
