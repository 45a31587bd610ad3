"""Shared command-line bits of every entry point (``tvr-*`` console scripts and ``python -m ...``):
``--version``, the one table of exit codes, and the one way a command reports an error.

A command's ``main(argv) -> int`` is wrapped in :func:`guarded`: the errors it names (and always a
bad ``TVR_*`` setting, :class:`data.settings.SettingsError`) print one line, ``error: <message>``,
on stderr and return :attr:`Exit.USAGE` (or the code given), never a traceback.
"""
from __future__ import annotations

import argparse
import functools
import sys
import tomllib
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Callable

from data.settings import SettingsError

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class Exit(IntEnum):
    """The exit codes of every command (docs/operations.md lists them for users)."""

    OK = 0
    FAILED = 1   # the work started and did not finish: a flow run failed, a server did not start, ...
    USAGE = 2    # refused before any work: bad arguments, a bad TVR_* setting, a missing or invalid file


def version() -> str:
    """The installed ``tvr`` version, else the one in the source tree's ``pyproject.toml``."""
    try:
        return metadata.version("tvr")
    except metadata.PackageNotFoundError:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"] + " (source tree, not installed)"


def add_version(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser


def error(message: object, code: int = Exit.USAGE) -> int:
    """Print ``error: <message>`` as one line on stderr and return ``code`` for ``main`` to return."""
    print(f"error: {message}", file=sys.stderr)
    return int(code)


def guarded(*errors: type[BaseException], code: int = Exit.USAGE) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for ``main(argv=None) -> int``: :class:`SettingsError` and each of ``errors`` raised
    anywhere in it (argument defaults included) become :func:`error` with ``code``."""
    caught = (SettingsError, *errors)

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except caught as err:
                return error(err, code)
        return run
    return wrap
