"""Small helpers shared by the flows: the run logger, parameter checks, artifact keys, time limits,
and the check that the Prefect server a command is about to use answers (:func:`unreachable_api`).

Flow parameters that become path parts (dataset names, run ids) are checked with
:func:`data.names.check_name` before any work starts, so a deployment run with ``dataset="../x"``
fails at once with a clear message instead of touching files outside ``TVR_HOME``.
"""
from __future__ import annotations

import logging
import string

from prefect import get_run_logger
from prefect.context import FlowRunContext

from data.names import check_name

HOUR = 3600
KEY_CHARACTERS = frozenset(string.ascii_lowercase + string.digits)
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
    """The stable Prefect artifact key of ``parts``: joined by dashes, lowercased, every character
    but ASCII a-z and 0-9 made a dash (Prefect accepts nothing else), e.g. ``("extract", "My_Set",
    "progress")`` -> ``extract-my-set-progress``. The keys of every artifact: docs/operations.md."""
    text = "-".join(parts).lower()
    return "".join(ch if ch in KEY_CHARACTERS else "-" for ch in text).strip("-") or "artifact"


def unreachable_api() -> str | None:
    """One line when ``PREFECT_API_URL`` names a server that does not answer its health check (the
    address, why, and what to do), else None; None too when it is unset (a flow run then starts a
    temporary local server). Commands call it before a flow run starts, so nothing is written."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return None
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is None:
        return None
    return (f"the Prefect server at {url} (PREFECT_API_URL) cannot be reached ({problem.__class__.__name__}: "
            f"{problem}); start it (python -m flows.local up) or unset PREFECT_API_URL to run with a temporary "
            f"local server")
