"""The single source of paths and defaults.

Every stage asks :func:`get_settings` for its folders instead of building paths itself.
The root folder is ``$TVR_HOME`` when set, else ``./tvr_home`` in the working directory.

Layout under the root (docs/design.md "Data at rest")::

    datasets/<name>/manifest.parquet
    features/<dataset>/<modality>/<extractor-id>/part-NNNNN.parquet
    runs/<run-id>/
    indexes/<dataset>/<run-id>/
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from data.names import check_name

ROOT_ENV = "TVR_HOME"
DEFAULT_ROOT = "tvr_home"
DEVICE_HELP = "auto, cpu, cuda or cuda:N"


QueryPrecision = Literal["stored", "fp32", "bf16", "fp16"]
QUERY_PRECISIONS: tuple[str, ...] = get_args(QueryPrecision)
QUERY_PRECISION_HELP = ("weights of the text tower that encodes queries: stored (as extraction ran: fp32 on CPU), "
                        "fp32, bf16 (faster on CPUs with native bf16, e.g. AVX512-BF16; query vectors "
                        "within a small angle of fp32's; docs/retrieval.md) or fp16 (CUDA); "
                        "default $TVR_QUERY_PRECISION, else stored")


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
    query_precision: QueryPrecision = "stored"   # the query text tower's weights (QUERY_PRECISION_HELP)
    shard_size: int = Field(default=64, gt=0)   # videos per feature shard
    seed: int = 0
    dask_address: str | None = None   # scheduler of an existing Dask cluster (flows/runners.py)
    dask_local_workers: int = Field(default=0, ge=0)  # > 0: a temporary local Dask cluster of that many workers
    index_mmap_gb: float | None = Field(default=None, ge=0)  # index files above this many GB open memory-mapped (default: half the RAM)

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
        """``datasets/<name>``; ``name`` must be one safe path part (:func:`data.names.check_name`)."""
        return self.datasets_dir / check_name(name, "dataset name")

    def manifest_path(self, name: str) -> Path:
        return self.dataset_dir(name) / "manifest.parquet"

    def feature_dir(self, dataset: str, modality: str, extractor_id: str) -> Path:
        return (self.features_dir / check_name(dataset, "dataset name") / check_name(modality, "modality")
                / check_name(extractor_id, "extractor id"))


def get_settings(root: str | os.PathLike | None = None) -> Settings:
    """Settings for ``root``, else ``$TVR_HOME``, else ``./tvr_home``.

    Environment overrides: ``TVR_HOME`` (root), ``TVR_DEVICE`` (auto/cpu/cuda/cuda:N),
    ``TVR_SHARD_SIZE`` (videos per shard, > 0), ``TVR_SEED``, ``TVR_DASK_ADDRESS`` (e.g.
    ``tcp://10.0.0.5:8786``), ``TVR_DASK_LOCAL_WORKERS`` (worker processes of a local Dask cluster, >= 0),
    ``TVR_INDEX_MMAP_GB`` (index files larger than this many GB are opened memory-mapped, >= 0).
    Raises :class:`SettingsError` naming the variable for a bad value.
    """
    chosen = root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)
    try:
        return Settings(root=Path(chosen).expanduser().resolve())
    except ValidationError as exc:
        problems = "; ".join(f"environment variable TVR_{str(e['loc'][0]).upper()}={e.get('input')!r}: {e['msg']}"
                             for e in exc.errors())
        raise SettingsError(problems) from None
