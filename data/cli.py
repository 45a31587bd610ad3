"""Shared command-line bits of every entry point (``tvr-*`` console scripts and ``python -m ...``):
``--version``, the one table of exit codes, and the one way a command reports an error.

A command's ``main(argv) -> int`` is wrapped in :func:`guarded`: the errors it names (and always a
bad ``TVR_*`` setting, :class:`data.settings.SettingsError`) print one line, ``error: <message>``,
on stderr and return :attr:`Exit.USAGE` (or the code given), never a traceback. An operator fault
on the disk (:func:`disk_fault`: a read-only file system, a full disk or quota, no permission, e.g.
``TVR_HOME`` on a read-only mount or in another user's folder) is one line naming the path and
what to do, with :attr:`Exit.FAILED`, in every command. Every write under ``TVR_HOME`` publishes by
rename (:mod:`data.atomic`, the store's markers), so such a fault leaves no partial file for readers.
"""
from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import tomllib
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Callable

from data.settings import DEFAULT_ROOT, ROOT_ENV, SettingsError

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


DISK_FAULTS = {errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def disk_fault(err: BaseException) -> str | None:
    """One line for an operator fault on the disk found in ``err`` or the exceptions it wraps
    (``__cause__`` / ``__context__``): the path (``TVR_HOME`` when the error names none), what is
    wrong and what to do; None when ``err`` is no such fault."""
    while err is not None and not (isinstance(err, OSError) and err.errno in DISK_FAULTS):
        err = err.__cause__ or err.__context__
    if err is None:
        return None
    home = os.path.abspath(os.path.expanduser(os.environ.get(ROOT_ENV, DEFAULT_ROOT)))
    path = os.fsdecode(err.filename) if err.filename is not None else None
    in_home = path is None or os.path.commonpath([home, os.path.abspath(path)]) == home
    where = f"TVR_HOME ({home})" if in_home else path
    if err.errno == errno.EROFS:
        todo = (f"{where} must be writable: remount it read-write or point {ROOT_ENV} at a writable folder"
                if in_home else "write somewhere writable")
    elif err.errno in (errno.ENOSPC, errno.EDQUOT):
        todo = f"free space on the disk of {where} or point {ROOT_ENV} at a larger one, then run again"
    else:
        owner = _owner(path or home)
        todo = (f"{where} {owner}and you (uid {os.geteuid()}) may not write there: run as its owner, get write "
                f"access, or point {ROOT_ENV} at a folder of your own" if in_home
                else f"check its permissions{' (' + owner.strip() + ')' if owner else ''}")
    shown = path or home
    return f"{shown}: {DISK_FAULTS[err.errno]}; {todo}"


def _owner(path: str) -> str:
    """``"belongs to uid N "`` of ``path`` or of its nearest existing parent ('' when unknown)."""
    while path and not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        return f"belongs to uid {os.stat(path).st_uid} "
    except OSError:
        return ""


def guarded(*errors: type[BaseException], code: int = Exit.USAGE) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorator for ``main(argv=None) -> int``: :class:`SettingsError` and each of ``errors`` raised
    anywhere in it (argument defaults included) become :func:`error` with ``code``; an operator
    fault on the disk (:func:`disk_fault`) becomes its line with :attr:`Exit.FAILED`."""
    caught = (SettingsError, *errors)

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except caught as err:
                return error(err, code)
            except OSError as err:
                fault = disk_fault(err)
                if fault is None:
                    raise
                return error(fault, Exit.FAILED)
        return run
    return wrap
