"""The typed configuration schema: one pydantic model per model name, unknown keys forbidden at
every depth, every value type- and range-checked (pydantic's lax mode: ``3`` is a fine float,
``"many"`` is no int).

:func:`fusion.config.load_config` validates every merged configuration against the schema the
model registry (:mod:`fusion.registry`) names for it (:class:`BaseConfig` for the models without
options of their own); the keys and their meaning are documented in ``fusion/configs/*.yaml`` and
docs/models.md.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainConfig(Strict):
    epochs: int = Field(ge=0)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    betas: tuple[float, float]
    warmup: float = Field(ge=0, le=1)
    grad_clip: float = Field(gt=0)
    checkpoint_every: int = Field(gt=0)
    eval_batch: int = Field(gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


class MomentsConfig(Strict):
    """The moment head (``moments:``; docs/models.md "Moment head", docs/methods.md §8)."""

    enabled: Union[Literal["auto"], bool]
    modalities: list[Literal["audio", "motion"]]
    step_s: float = Field(gt=0)
    max_steps: int = Field(gt=0)
    width: int = Field(gt=0)
    layers: int = Field(ge=0)
    channels: int = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    temperature: float = Field(gt=0)
    match_weight: float = Field(ge=0)
    boundary_sigma_s: float = Field(ge=0)
    epochs: int = Field(ge=1)
    batch_size: int = Field(gt=0)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)


class BaseConfig(Strict):
    model: str
    max_frames: int = Field(gt=0)
    max_words: int = Field(gt=1)
    temperature: float = Field(gt=0)
    learn_temperature: bool
    text_adapter: bool
    width: int | None = Field(default=None, gt=0)
    text_layers: int = Field(ge=0)
    frame_layers: int = Field(ge=0)
    heads: int = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    frame_sampling: Literal["uniform", "two-view"]
    extractors: dict[str, str]
    val_holdout: float = Field(ge=0)
    train: TrainConfig
    moments: MomentsConfig


class MeanPConfig(BaseConfig):
    frame_adapter: bool


class M2HFConfig(BaseConfig):
    branches: list[Literal["V", "AV", "MV"]] = Field(min_length=1)
    cross_layers: int = Field(ge=0)
    source_norm: Literal["train-zscore", "none"]
    resample: Literal["interval-mean"]
    fusion: Literal["end-to-end", "ensemble"]
    ensemble_grid: float = Field(gt=0, le=1)
    fused_loss: bool
    balance: Literal["uncertainty", "loss-ratio", "contribution", "none"]
    balance_temperature: float = Field(gt=0)
    balance_weight: float = Field(ge=0)


class HCMIConfig(BaseConfig):
    clustering: Literal["dpc-knn", "learned-query", "contiguous"]
    knn: int = Field(gt=0)
    clips: Union[Literal["auto"], int]
    words_per_phrase: int = Field(gt=0)
    level_weights: list[float] = Field(min_length=3, max_length=3)
    label_denoising: bool
    warmup_epochs: int = Field(ge=0)
    hard_samples: bool
    margin: float = Field(ge=0)
    hard_weight: float = Field(ge=0)

