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
from dataclasses import dataclass
from pathlib import Path

from data.names import check_name

ROOT_ENV = "TVR_HOME"
DEFAULT_ROOT = "tvr_home"


@dataclass(frozen=True)
class Settings:
    """Resolved paths and defaults; build with :func:`get_settings`."""

    root: Path
    device: str = "auto"          # "auto" picks CUDA when present, else CPU
    shard_size: int = 64          # videos per feature shard
    seed: int = 0
    dask_address: str | None = None   # scheduler of an existing Dask cluster (flows/runners.py)
    dask_local_workers: int = 0       # > 0: a temporary local Dask cluster of that many worker processes

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

    Environment overrides: ``TVR_HOME`` (root), ``TVR_DEVICE`` (auto/cpu/cuda),
    ``TVR_SHARD_SIZE`` (videos per shard), ``TVR_SEED``, ``TVR_DASK_ADDRESS`` (e.g.
    ``tcp://10.0.0.5:8786``), ``TVR_DASK_LOCAL_WORKERS`` (worker processes of a local Dask cluster).
    """
    chosen = root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)
    return Settings(
        root=Path(chosen).expanduser().resolve(),
        device=os.environ.get("TVR_DEVICE", "auto"),
        shard_size=int(os.environ.get("TVR_SHARD_SIZE", "64")),
        seed=int(os.environ.get("TVR_SEED", "0")),
        dask_address=os.environ.get("TVR_DASK_ADDRESS") or None,
        dask_local_workers=_int_env("TVR_DASK_LOCAL_WORKERS", 0),
    )


def _int_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    try:
        return int(text) if text else default
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r}: expected an integer") from None
