"""Small helpers shared by the flows: the run logger, parameter checks, artifact keys, time limits.

Flow parameters that become path parts (dataset names, run ids) are checked with
:func:`data.names.check_name` before any work starts, so a deployment run with ``dataset="../x"``
fails at once with a clear message instead of touching files outside ``TVR_HOME``.
"""
from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.context import FlowRunContext

from data.names import check_name

HOUR = 3600
# flow time limits (timeout_seconds): a hung run ends as TimedOut instead of blocking later runs
TIMEOUTS = {"extract": 24 * HOUR, "train": 24 * HOUR, "evaluate": 2 * HOUR, "reindex": 6 * HOUR,
            "pipeline": 4 * HOUR}


def in_flow_run() -> bool:
    return FlowRunContext.get() is not None


def flow_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger, or a plain one when called without a run (``flow.fn(...)``)."""
    return get_run_logger() if in_flow_run() else logging.getLogger(f"tvr.{name}")


def check_names(**names: str | None) -> None:
    """Raise :class:`data.names.InvalidName` for the first value that is not one safe path part."""
    for what, value in names.items():
        if value is not None:
            check_name(value, what.replace("_", " "))


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key (lowercase letters, digits and dashes) from ``parts``."""
    text = "-".join(parts).lower()
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-") or "artifact"
