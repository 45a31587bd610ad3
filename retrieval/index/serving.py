"""The serving run of a dataset: the run whose index the service answers from and the nightly
re-index keeps fresh.

Recorded as ``indexes/<dataset>/.serving.json`` (``{"run": ..., "set_at": ...}``), written
atomically; run ids cannot start with '.', so the file never collides with a run folder.
Set it with ``python -m retrieval.index --dataset D --run R --serve``; without a record the
serving run is the zero-shot run.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from data.atomic import write_json_atomic
from data.names import check_name
from data.settings import Settings, get_settings
from retrieval.runs import ZERO_SHOT

SERVING_FILE = ".serving.json"


def serving_path(dataset: str, settings: Settings | None = None) -> Path:
    return (settings or get_settings()).indexes_dir / check_name(dataset, "dataset") / SERVING_FILE


def recorded_serving_run(dataset: str, settings: Settings | None = None) -> str | None:
    """The recorded serving run, or None when none was recorded."""
    path = serving_path(dataset, settings)
    try:
        run = json.loads(path.read_text())["run"]
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: unreadable serving-run record ({exc}); set it again with "
                         f"`python -m retrieval.index --dataset {dataset} --run R --serve`") from None
    return check_name(run, "run")


def serving_run(dataset: str, settings: Settings | None = None) -> str:
    """The dataset's serving run: the recorded one, else the zero-shot run."""
    return recorded_serving_run(dataset, settings) or ZERO_SHOT


def set_serving_run(dataset: str, run: str, settings: Settings | None = None) -> Path:
    """Record ``run`` as the dataset's serving run (atomic replace); returns the record's path."""
    path = serving_path(dataset, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"run": check_name(run, "run"),
                             "set_at": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    return path
