"""The model registry: every model name, in this one table (in the spirit of open_clip's ``_MODEL_CONFIGS``).

A name in :data:`MODELS` is a model: its entry names the class that builds it (with the options
that tell variants of one class apart) and the typed schema (:mod:`fusion.schema`) that checks its
configuration, whose defaults are ``fusion/configs/<name>.yaml`` over ``base.yaml``. Every caller
asks this table: the factory (:func:`fusion.factory.build_model`), the configuration loader
(:func:`fusion.config.load_config`), ``python -m fusion.train --model`` (its choices), the fast
ablation and the benchmarks. Adding a model is one entry here plus its YAML file;
``tests/test_train.py`` checks that the two agree and that ``prefect.yaml``'s ``train/<model>``
deployments name registered models.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fusion.base import RetrievalModel
from fusion.baselines import MeanPooling
from fusion.hcmi import HCMI
from fusion.m2hf import M2HF
from fusion.schema import BaseConfig, HCMIConfig, M2HFConfig, MeanPConfig


@dataclass(frozen=True)
class ModelEntry:
    """How one model name turns into a model."""

    builds: type[RetrievalModel]                    # called as ``builds(width, config, **options)``
    schema: type[BaseConfig]                        # the configuration's typed schema
    options: dict = field(default_factory=dict)     # constructor options of this variant of ``builds``
    trained: bool = True                            # False: nothing to train (CLIP's own space): 0 epochs,
                                                    # and no training profile (width, layers) applies


MODELS: dict[str, ModelEntry] = {
    "zero-shot": ModelEntry(MeanPooling, BaseConfig, trained=False),
    "meanP": ModelEntry(MeanPooling, MeanPConfig),
    "seqTransf": ModelEntry(MeanPooling, BaseConfig, {"temporal": True}),
    "m2hf": ModelEntry(M2HF, M2HFConfig),
    "hcmi": ModelEntry(HCMI, HCMIConfig),
}


def model_names() -> list[str]:
    """Every model the factory can build, sorted."""
    return sorted(MODELS)


def trained_models() -> list[str]:
    """The models that train (every one but zero-shot), in registry order."""
    return [name for name, entry in MODELS.items() if entry.trained]


def model_entry(name: str) -> ModelEntry:
    """The entry of ``name``; a ValueError naming the known models when there is none."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(model_names())}")
    return MODELS[name]
