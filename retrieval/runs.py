"""Loading a model for retrieval through ``fusion.api`` (contract B), with retrieval's own refusal
of a missing run so the message is the same whatever fusion says."""
from __future__ import annotations

import importlib
from pathlib import Path

from data.settings import Settings, get_settings
from data.store import FeatureSet, StoreError

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


def extractor_infos(dataset: str, loaded, settings: Settings) -> dict[str, dict]:
    """The stored ``_extractor.json`` of each of the run's extractors (modality -> info), from
    ``dataset``'s store or else the run's own dataset's; LookupError naming the first one missing."""
    infos = {}
    for modality, extractor_id in loaded.extractor_ids.items():
        for ds in dict.fromkeys([dataset, loaded.dataset]):
            try:
                infos[modality] = FeatureSet(settings.feature_dir(ds, modality, extractor_id)).info
                break
            except StoreError:
                continue
        else:
            raise LookupError(f"{dataset}: no _extractor.json for {modality} extractor {extractor_id} under "
                              f"{settings.features_dir}")
    return infos
