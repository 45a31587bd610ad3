"""Kernel file locks that die with their holder (``flock``), shared by the store, extraction and re-indexing.

A lock lives on a small hidden file beside what it protects; the file stays in place, only the
lock on it comes and goes. The kernel releases a lock when its holder exits for any reason
(``kill -9``, OOM kill, segfault), so "the lock can be taken" is proof that no live process holds
it. The lock file's folder must be writable; where it is not (a read-only copy of the store),
:func:`shared` gives no lock, since no writer can be working there either.

- :func:`shared`: blocking shared lock; many holders at once (writers of a feature folder, readers);
- :func:`exclusive`: blocking exclusive lock;
- :func:`try_exclusive`: non-blocking exclusive lock; yields False at once when anyone else holds it
  (debris cleanup and compaction run only then, so they never touch a live writer's files).
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o666)


@contextmanager
def shared(path: str | os.PathLike) -> Iterator[None]:
    """Hold a shared lock on ``path`` (created if needed) for the ``with`` block."""
    try:
        fd = _open(Path(path))
    except (PermissionError, OSError) as exc:
        if isinstance(exc, PermissionError) or exc.errno == 30:  # EROFS: a read-only copy, nobody writes
            yield
            return
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed), waiting for it."""
    fd = _open(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def try_exclusive(path: str | os.PathLike) -> Iterator[bool]:
    """Try an exclusive lock on ``path`` without waiting: yields True while held, False if busy."""
    fd = _open(Path(path))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def held_fd(path: str | os.PathLike) -> int:
    """Open ``path`` and lock it exclusively; the lock lasts until the returned descriptor is closed.

    For per-item records (a video being decoded) whose lifetime does not follow a ``with`` block.
    """
    fd = _open(Path(path))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def abandoned(path: str | os.PathLike) -> bool:
    """True when the record at ``path`` was left by a holder that died: nobody holds its lock and it
    is still in place. Its owner removes the file *before* releasing the lock, so a file that is
    still there once its lock is free was never finished."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        try:
            return os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            return False
    finally:
        os.close(fd)
