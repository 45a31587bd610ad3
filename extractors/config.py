"""What an extraction run does, as plain values: :class:`ExtractConfig`.

The config holds only plain values (no models, no paths), so it travels as a dict to Prefect tasks
and Dask workers (``to_dict`` / ``ExtractConfig(**d)``). The command line
(:func:`extractors.cli.config_from_args`) and the flow's parameters (``flows/extract.py``) both
build it with :meth:`ExtractConfig.from_parameters`, so a plain run, a ``--prefect`` run and a
deployment run get the same config from the same options.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

from data.devices import resolve_device
from data.modalities import CLIP_FRAMES, CLIP_TEXT, MODALITIES, MOTION
from data.settings import Settings
from extractors.base import Extractor
from extractors.decode import DecodeOptions
from extractors.registry import DEFAULT_MODELS, build_extractor

# Options an extractor records in its _extractor.json that ExtractConfig takes per modality (the
# rest follows from the model); a rebuilt extractor-id is checked against the stored one anyway.
OPTION_KEYS = {CLIP_FRAMES: ("fps",), MOTION: ("fps", "size", "clip_frames")}


@dataclass
class ExtractConfig:
    """What to extract and how; plain values only, so it travels to tasks and workers.

    ``weights`` / ``models`` / ``batch_sizes``: per modality (``clip_text`` defaults to the
    ``clip_frames`` model and weights). ``options``: per-modality parameters, e.g.
    ``{"motion": {"size": 128, "fps": 15}, "clip_frames": {"fps": 1}}``. ``decode``,
    ``decode_threads``, ``decode_budget_s``, ``hwaccel``: see :class:`DecodeOptions` (``hwaccel``
    ``auto`` = NVDEC when the device is CUDA). ``retry_failed``: decode again the videos whose
    failure is recorded for the file as it is now (by default they are skipped and counted as
    recorded failures, :mod:`extractors.plan`).
    """

    modalities: tuple[str, ...] = MODALITIES
    weights: dict[str, str] = field(default_factory=dict)
    models: dict[str, str] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    options: dict[str, dict] = field(default_factory=dict)
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    decode_workers: int = 1
    prefetch: int = 4
    decode: str = "fast"
    decode_threads: int = 0
    decode_budget_s: float = 900.0
    hwaccel: str = "auto"
    retry_failed: bool = False

    def __post_init__(self):
        self.modalities = tuple(self.modalities)
        unknown = [m for m in self.modalities if m not in MODALITIES]
        if unknown or not self.modalities:
            raise ValueError(f"modalities {unknown or '[]'}: choose from {', '.join(MODALITIES)}")

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, Any], settings: Settings) -> "ExtractConfig":
        """The config from named values, e.g. a flow's parameters or the command line's options: a
        name that is not a field is ignored; a value None (or absent) takes the field's default, for
        ``seed`` and ``device`` the settings' (``$TVR_SEED``, ``$TVR_DEVICE``)."""
        names = {f.name for f in fields(cls)}
        given = {k: v for k, v in parameters.items() if k in names and v is not None}
        return cls(**{"seed": settings.seed, "device": settings.device, **given})

    @classmethod
    def from_infos(cls, infos: Mapping[str, dict], device: str) -> list["ExtractConfig"]:
        """Configs that re-create stored extractors from their ``_extractor.json`` dicts (modality ->
        info): one config per random-weight seed and precision (usually one)."""
        groups: dict[tuple, dict] = {}
        for modality, info in infos.items():
            params = info["params"]
            key = (params.get("seed"), params.get("precision", "auto"))
            group = groups.setdefault(key, {"modalities": [], "models": {}, "weights": {}, "options": {}})
            group["modalities"].append(modality)
            group["models"][modality] = params["model"]
            group["weights"][modality] = params["weights"]
            options = {k: params[k] for k in OPTION_KEYS.get(modality, ()) if k in params}
            if options:
                group["options"][modality] = options
        return [cls(modalities=tuple(g["modalities"]), weights=g["weights"], models=g["models"],
                    options=g["options"], seed=seed or 0, precision=precision, device=device)
                for (seed, precision), g in groups.items()]

    def model_for(self, modality: str) -> str:
        if modality == CLIP_TEXT and modality not in self.models:
            return self.models.get(CLIP_FRAMES, DEFAULT_MODELS[modality])
        return self.models.get(modality, DEFAULT_MODELS[modality])

    def weights_for(self, modality: str) -> str:
        if modality == CLIP_TEXT and modality not in self.weights:
            return self.weights.get(CLIP_FRAMES, "random")
        return self.weights.get(modality, "random")

    def build(self) -> list[Extractor]:
        """Fresh extractors (the models behind them are cached per process)."""
        return [build_extractor(m, self.model_for(m), self.weights_for(m), seed=self.seed, device=self.device,
                                precision=self.precision, batch_size=self.batch_sizes.get(m),
                                **self.options.get(m, {}))
                for m in self.modalities]

    def to_dict(self) -> dict:
        return asdict(self)

    def decode_options(self) -> DecodeOptions:
        """How this run decodes; decoder threads default to the cores shared by the decode workers."""
        hwaccel = self.hwaccel
        if hwaccel == "auto":
            hwaccel = "cuda" if resolve_device(self.device).type == "cuda" else "none"
        threads = self.decode_threads or max(1, (os.cpu_count() or 1) // max(1, self.decode_workers))
        return DecodeOptions(mode=self.decode, threads=threads, hwaccel=None if hwaccel == "none" else hwaccel,
                             budget_s=self.decode_budget_s)
