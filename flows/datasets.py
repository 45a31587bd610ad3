"""Deployments of a prepared dataset that ``prefect.yaml`` does not list (``python -m flows.local
deploy --dataset NAME``): ``extract/NAME`` and ``reindex/NAME``, made exactly like prefect.yaml's
own (its ``definitions``: entrypoint, work pool, tags, concurrency rule), with the dataset's own
re-index schedule and extraction concurrency limit.

Everything is checked before the server is asked (:class:`DeployRefused`, one line each): the name
(:func:`data.names.check_name`, and none of the characters Prefect refuses in deployment names), a
name prefect.yaml already deploys (its schedule lives there), a dataset without a manifest, a cron
string Prefect would not accept, an interval or a concurrency limit below 1.

:func:`deployment_file` is the prefect.yaml-format document that ``prefect deploy --prefect-file``
applies; the server stores the deployments in its database under ``$TVR_HOME/prefect``, so they
outlive ``flows.local down`` / ``up`` (``up`` re-applies prefect.yaml and leaves them alone), and
deploying again updates both in place (the new schedule replaces the old one).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from data.names import check_name
from data.settings import Settings

PROJECT = Path(__file__).resolve().parents[1]
PREFECT_YAML = PROJECT / "prefect.yaml"
DEFAULT_CRON = "0 5 * * *"  # daily 05:00 UTC: after prefect.yaml's nightly re-indexes (03:00-04:40)
BANNED = "%&<>"  # refused by Prefect in deployment names, besides "/" (which check_name refuses)


class DeployRefused(ValueError):
    """A ``deploy --dataset`` request refused before anything is deployed (one line: why, what to do)."""


def project_spec() -> dict:
    """``prefect.yaml``, parsed (its anchors resolved)."""
    return yaml.safe_load(PREFECT_YAML.read_text())


def builtin_datasets(spec: dict) -> set[str]:
    """Names of the datasets whose ``extract`` / ``reindex`` deployments prefect.yaml declares."""
    kinds = (spec["definitions"]["extract"]["entrypoint"], spec["definitions"]["reindex"]["entrypoint"])
    return {d["name"] for d in spec["deployments"] if d["entrypoint"] in kinds}


def schedule(cron: str | None = None, interval_s: int | None = None) -> dict:
    """The ``reindex`` schedule: every ``interval_s`` seconds, else ``cron`` (UTC; default
    :data:`DEFAULT_CRON`), as prefect.yaml writes it; :class:`DeployRefused` when Prefect would refuse it."""
    if interval_s is not None:
        if cron is not None:
            raise DeployRefused("give --schedule (a cron string) or --interval (seconds), not both")
        if interval_s < 1:
            raise DeployRefused(f"--interval {interval_s}: expected a number of seconds, 1 or more")
        return {"interval": interval_s}
    from pydantic import ValidationError
    from prefect.client.schemas.schedules import CronSchedule

    cron = DEFAULT_CRON if cron is None else cron
    try:
        CronSchedule(cron=cron, timezone="UTC")
    except ValidationError:
        raise DeployRefused(f"--schedule {cron!r} is not a cron string: expected 5 fields, minute hour "
                            f"day-of-month month day-of-week, in UTC (e.g. '0 3 * * *': daily at 03:00)") from None
    return {"cron": cron, "timezone": "UTC"}


def check_dataset(name: str, settings: Settings, spec: dict) -> None:
    """:class:`DeployRefused` unless ``name`` is a prepared dataset that prefect.yaml does not deploy
    (:class:`data.names.InvalidName` for a name that is not one path part)."""
    check_name(name, "dataset name")
    banned = sorted(set(BANNED) & set(name))
    if banned:
        raise DeployRefused(f"dataset name {name!r} contains {' '.join(banned)}, which Prefect refuses in deployment "
                            f"names; prepare it under another name (python -m data.prepare ... --name NEW)")
    if name in builtin_datasets(spec):
        raise DeployRefused(f"extract/{name} and reindex/{name} are deployed from prefect.yaml: change them there "
                            f"and run python -m flows.local deploy")
    manifest = settings.manifest_path(name)
    if not manifest.is_file():
        prepared = sorted(p.parent.name for p in settings.datasets_dir.glob("*/manifest.parquet"))
        raise DeployRefused(f"dataset {name!r} is not prepared: no manifest at {manifest}; prepare it first "
                            f"(python -m data.prepare folder --annotations FILE --videos DIR --name {name}); "
                            f"prepared: {', '.join(prepared) or 'none'}")


def deployment_file(name: str, settings: Settings, cron: str | None = None, interval_s: int | None = None,
                    concurrency: int = 1) -> dict:
    """The prefect.yaml-format document of ``extract/<name>`` (at most ``concurrency`` runs at once,
    more wait) and ``reindex/<name>`` (one at a time, a second is cancelled; on :func:`schedule`),
    after every check (:class:`DeployRefused` / :class:`data.names.InvalidName` otherwise)."""
    reindex_schedule = schedule(cron, interval_s)
    if concurrency < 1:
        raise DeployRefused(f"--concurrency {concurrency}: expected 1 or more runs of extract/{name} at once")
    spec = project_spec()
    check_dataset(name, settings, spec)
    extract, reindex = spec["definitions"]["extract"], spec["definitions"]["reindex"]
    parameters = {"dataset": name}
    return {"name": spec["name"], "prefect-version": spec["prefect-version"], "deployments": [
        {**extract, "name": name, "parameters": parameters,
         "concurrency_limit": {**extract["concurrency_limit"], "limit": concurrency}},
        {**reindex, "name": name, "parameters": parameters, "schedules": [reindex_schedule]},
    ]}
