"""The single source of paths and defaults.

Every stage asks :func:`get_settings` for its folders instead of building paths itself.
The root folder is ``$TVR_HOME`` when set, else ``./tvr_home`` in the working directory.

Layout under the root (DESIGN.md "Data at rest")::

    datasets/<name>/manifest.parquet
    features/<dataset>/<modality>/<extractor-id>/part-NNNNN.parquet
    runs/<run-id>/
    indexes/<dataset>/<run-id>/
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT_ENV = "TVR_HOME"
DEFAULT_ROOT = "tvr_home"
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


class SettingsError(ValueError):
    """A ``TVR_*`` environment variable (or a ``get_settings`` argument) with a bad value."""


class Settings(BaseSettings):
    """Resolved paths and defaults; build with :func:`get_settings`.

    Fields other than ``root`` come from ``TVR_<FIELD>`` environment variables (pydantic-settings),
    type- and range-checked: a bad value is a :class:`SettingsError` naming the variable.
    """

    model_config = SettingsConfigDict(env_prefix="TVR_", frozen=True, extra="ignore")

    root: Annotated[Path, Field(exclude=True)]
    device: str = "auto"          # "auto" picks CUDA when present, else CPU
    shard_size: int = Field(default=64, gt=0)   # videos per feature shard
    seed: int = 0
    dask_address: str | None = None   # scheduler of an existing Dask cluster (flows/runners.py)
    dask_local_workers: int = Field(default=0, ge=0)  # > 0: a temporary local Dask cluster of that many workers

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip()
        kind, _, index = value.partition(":")
        if value in ("auto", "cpu", "cuda") or (kind == "cuda" and index.isdigit()):
            return value
        raise ValueError(f"expected {DEVICE_HELP}")

    @field_validator("dask_address")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @property
    def datasets_dir(self) -> Path:
        return self.root / "datasets"

    @property
    def features_dir(self) -> Path:
        return self.root / "features"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def indexes_dir(self) -> Path:
        return self.root / "indexes"

    def dataset_dir(self, name: str) -> Path:
        return self.datasets_dir / name

    def manifest_path(self, name: str) -> Path:
        return self.dataset_dir(name) / "manifest.parquet"

    def feature_dir(self, dataset: str, modality: str, extractor_id: str) -> Path:
        return self.features_dir / dataset / modality / extractor_id


def get_settings(root: str | os.PathLike | None = None) -> Settings:
    """Settings for ``root``, else ``$TVR_HOME``, else ``./tvr_home``.

    Environment overrides: ``TVR_HOME`` (root), ``TVR_DEVICE`` (auto/cpu/cuda/cuda:N),
    ``TVR_SHARD_SIZE`` (videos per shard, > 0), ``TVR_SEED``, ``TVR_DASK_ADDRESS`` (e.g.
    ``tcp://10.0.0.5:8786``), ``TVR_DASK_LOCAL_WORKERS`` (worker processes of a local Dask cluster, >= 0).
    Raises :class:`SettingsError` naming the variable for a bad value.
    """
    chosen = root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)
    try:
        return Settings(root=Path(chosen).expanduser().resolve())
    except ValidationError as exc:
        problems = "; ".join(f"environment variable TVR_{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}"
                             for e in exc.errors())
        raise SettingsError(problems) from None
