"""The RANDOM WEIGHTS label: the one wording that every output (metrics JSON, reports, logs, table
artifacts, search results, the service page) uses when features come from randomly initialised
extractors, so that no number from random weights is ever mistaken for a real result."""
from __future__ import annotations

RANDOM_WEIGHTS = "RANDOM WEIGHTS"
NOTICE = "the features come from randomly initialised extractors; numbers say nothing about real retrieval"


def random_weights_label(detail: bool = True) -> str:
    """``RANDOM WEIGHTS: <why>`` for logs, reports and JSON warnings; ``RANDOM WEIGHTS`` alone
    (``detail=False``) for a table cell or a title."""
    return f"{RANDOM_WEIGHTS}: {NOTICE}" if detail else RANDOM_WEIGHTS


def random_weights_banner(label: str | None = None) -> str:
    """The loud console line, ``!!! RANDOM WEIGHTS: <why> !!!``; ``label``: a stored label to repeat
    (an index's or a file's ``WARNING``), else :func:`random_weights_label`."""
    return f"!!! {label or random_weights_label()} !!!"
