"""Fault injection for the kill -9 tests: the one pair of hooks that every crash-tested step calls.

Unset (always, outside the tests), both do nothing.

- ``crash_point(ENV, "step")``: when ``$ENV`` is ``step``, the process SIGKILLs itself there (no
  cleanup, no ``finally``), exactly as ``kill -9`` would (index builds: ``TVR_INDEX_CRASH_AT``).
- ``pause_point(ENV, "step")``: when ``$ENV`` is ``step:<marker path>``, the process writes its pid
  to the marker and waits there for the test to kill it (a video mid-decode:
  ``TVR_EXTRACT_TEST_PAUSE``; a re-index mid-stage: ``TVR_REINDEX_TEST_PAUSE``).
"""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

PAUSE_S = 600   # how long a paused process waits to be killed before it goes on


def crash_point(env: str, step: str) -> None:
    """SIGKILL this process at ``step`` when ``$env`` names it."""
    if os.environ.get(env) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def pause_point(env: str, step: str) -> None:
    """At ``step``, when ``$env`` is ``step:<marker>``: write this pid to ``<marker>``, then wait."""
    name, _, marker = os.environ.get(env, "").partition(":")
    if name == step and marker:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(PAUSE_S)
