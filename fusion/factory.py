"""One factory: a model name plus its configuration (``fusion/configs``) -> a :class:`RetrievalModel`."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from fusion.base import RetrievalModel
from fusion.baselines import MeanPooling
from fusion.config import load_config
from fusion.hcmi import HCMI
from fusion.m2hf import M2HF

CLASSES = {"zero-shot": MeanPooling, "meanP": MeanPooling, "seqTransf": MeanPooling, "m2hf": M2HF, "hcmi": HCMI}


def build_model(config: dict, width: int) -> RetrievalModel:
    """The model ``config["model"]`` for features of width ``width`` (D)."""
    name = config["model"]
    if name not in CLASSES:
        raise ValueError(f"no model class for {name!r}; known: {', '.join(sorted(CLASSES))}")
    return CLASSES[name](width, config)


def create(name: str, config_file: str | Path | None = None, overrides: Iterable[str | dict] = (),
           width: int = 512) -> tuple[RetrievalModel, dict]:
    """Load the configuration of ``name`` (+ file, + overrides) and build the model."""
    config = load_config(name, config_file, overrides)
    return build_model(config, width), config


def modalities_for(config: dict) -> tuple[str, ...]:
    """Extra feature modalities (``audio``, ``motion``) a configuration needs."""
    if config["model"] != "m2hf":
        return ()
    return tuple(m for b, m in (("AV", "audio"), ("MV", "motion")) if b in config["branches"])
