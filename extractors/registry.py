"""One place that turns (modality, model name, weights) into an extractor (like open_clip's factory).

Models are cached per process by their loaders, so building an extractor for every shard costs
nothing after the first: a worker process loads each model once.
"""
from __future__ import annotations

import logging
from typing import Any

from data.devices import resolve_device
from data.modalities import AUDIO, CLIP_FRAMES, CLIP_TEXT, MODALITIES, MOTION
from data.settings import QUERY_PRECISIONS
from extractors.audio import AudioExtractor
from extractors.base import Extractor
from extractors.clip import ClipFramesExtractor, ClipTextExtractor
from extractors.motion import MotionExtractor
from extractors.precision import cpu_has_fast_bf16, resolve_precision
from extractors.weights import Weights

log = logging.getLogger(__name__)

EXTRACTORS: dict[str, type[Extractor]] = {
    CLIP_FRAMES: ClipFramesExtractor,
    CLIP_TEXT: ClipTextExtractor,
    AUDIO: AudioExtractor,
    MOTION: MotionExtractor,
}
DEFAULT_MODELS = {CLIP_FRAMES: "ViT-B-32", CLIP_TEXT: "ViT-B-32", AUDIO: "vggish", MOTION: "slowfast_r50"}


def build_extractor(modality: str, model: str | None = None, weights: str | Weights | None = "random", *,
                    seed: int = 0, device: str = "auto", precision: str = "auto",
                    batch_size: int | None = None, **options: Any) -> Extractor:
    """An extractor for ``modality``.

    ``weights``: ``random`` (initialised from ``seed``), a local file, or a pretrained tag (CLIP).
    ``options``: modality parameters (clip_frames: ``fps``; motion: ``fps``, ``size``, ``clip_frames``).
    """
    if modality not in EXTRACTORS:
        raise ValueError(f"unknown modality {modality!r}; known: {', '.join(MODALITIES)}")
    if not isinstance(weights, Weights):
        weights = Weights.parse(weights, seed)
    dev = resolve_device(device)
    return EXTRACTORS[modality](model or DEFAULT_MODELS[modality], weights, dev, resolve_precision(precision, dev),
                                batch_size, **options)


def build_text_encoder(info: dict, device: str = "auto", precision: str = "stored") -> ClipTextExtractor:
    """The ``clip_text`` encoder described by a stored ``_extractor.json`` dict (``FeatureSet.info``).

    Random weights are re-created from the recorded seed, a weights file is checked against its
    recorded sha256. The result's ``.encode(captions)`` returns ``[(values [L_valid, D], eot_index)]``
    computed as extraction did. ``precision`` (:data:`QUERY_PRECISIONS`): ``stored`` keeps the
    recorded precision on CUDA and uses fp32 on CPU (the extraction's values); ``bf16`` halves the
    weights read per query (fast on CPUs with native bf16, e.g. AVX512-BF16; values within a
    small angle of fp32's, see docs/retrieval.md); ``fp32`` / ``fp16`` as named.
    """
    if precision not in QUERY_PRECISIONS:
        raise ValueError(f"query precision {precision!r}: expected one of {', '.join(QUERY_PRECISIONS)}")
    if info.get("modality") != CLIP_TEXT:
        raise ValueError(f"build_text_encoder needs a clip_text extractor description, got {info.get('modality')!r}")
    params = info["params"]
    weights = Weights(params["weights"], params.get("weights_sha256"), params.get("seed"))
    dev = resolve_device(device)
    if precision == "stored":
        precision = params.get("precision", "fp32") if dev.type == "cuda" else "fp32"
    if precision == "bf16" and dev.type == "cpu" and not cpu_has_fast_bf16():
        log.warning("query precision bf16 on a CPU without bf16 support in oneDNN: PyTorch emulates it and it "
                    "may be slower than fp32 (compare with python -m bench.serve --query-precision stored,bf16)")
    encoder = ClipTextExtractor(params["model"], weights, dev, precision)
    rebuilt = encoder.spec.params
    for key in ("model", "weights", "weights_sha256", "seed", "context_length", "code_version"):
        if rebuilt.get(key) != params.get(key):
            raise ValueError(f"rebuilt text encoder differs from the stored one in {key!r}: "
                             f"{rebuilt.get(key)!r} vs {params.get(key)!r}")
    return encoder
