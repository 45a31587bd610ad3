"""Loading a model for retrieval through ``fusion.api`` (contract B), with retrieval's own refusal
of a missing run so the message is the same whatever fusion says."""
from __future__ import annotations

import importlib
from pathlib import Path

from data.settings import Settings, get_settings

ZERO_SHOT = "zero-shot"


class RunNotFound(FileNotFoundError):
    """The named run is neither a folder nor a run id under ``runs/``."""


def fusion_api():
    """``fusion.api``, imported when needed (retrieval's metrics and indexes work without it)."""
    return importlib.import_module("fusion.api")


def check_run(run: str | Path, settings: Settings | None = None) -> None:
    """Refuse a run that does not exist (``zero-shot`` always exists)."""
    if str(run) == ZERO_SHOT:
        return
    settings = settings or get_settings()
    if Path(run).is_dir() or (settings.runs_dir / str(run)).is_dir():
        return
    raise RunNotFound(f"no run {str(run)!r}: not a folder, and not a run id under {settings.runs_dir}; "
                      f"train one (python -m fusion.train ...) or use --run zero-shot")


def run_name(run_dir: Path | None) -> str:
    """The folder name of a run under ``indexes/<dataset>/``: the run id, or ``zero-shot``."""
    return ZERO_SHOT if run_dir is None else Path(run_dir).name


def load(run: str | Path, dataset: str, settings: Settings | None = None):
    """``fusion.api.load_model`` after :func:`check_run`; returns the ``LoadedModel``."""
    settings = settings or get_settings()
    check_run(run, settings)
    return fusion_api().load_model(run, dataset=dataset, settings=settings)
