"""Atomic, durable file writes: write to a temporary name in the same folder, fsync, rename, fsync
the folder.

A reader never sees a half-written file: either the old one, the new one, or none. After a crash of
the machine (power cut, kernel panic) a published file is complete: its data is fsynced before the
rename, and its folder after it, because a rename lives in the folder's entries, which the file's
fsync does not flush; without it the rename may be lost while later writes survive (SQLite and
PostgreSQL sync the directory for the same reason). Every publish step of the project goes through
:func:`atomic_path` or :func:`replace_durably` / :func:`rename_durably` (docs/foundation.md
"Durability"). Files get the permissions a plain ``open`` would give them (``0o666`` less the
umask, usually ``0o644``), not the ``0o600`` of :func:`tempfile.mkstemp`, so other users and
services of the group can read them.
"""
from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# A folder that cannot be opened or fsynced on some file systems (as PostgreSQL's fsync_fname allows).
_DIR_SYNC_UNSUPPORTED = (errno.EACCES, errno.EISDIR, errno.EBADF, errno.EINVAL)


def current_umask() -> int:
    """The process umask, read without changing it (``/proc``), else by the set-and-restore dance."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to disk. A file system that cannot open or fsync
    a folder (``EACCES``, ``EISDIR``, ``EBADF``, ``EINVAL``) is skipped; other errors propagate."""
    is_dir = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as err:
        if is_dir and err.errno in _DIR_SYNC_UNSUPPORTED:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not (is_dir and err.errno in _DIR_SYNC_UNSUPPORTED):
            raise
    finally:
        os.close(fd)


def fsync_tree(folder: str | os.PathLike) -> None:
    """Fsync every file and sub-folder under ``folder`` (a folder after its contents), then ``folder``."""
    for parent, dirs, files in os.walk(folder, topdown=False):
        for name in files + dirs:
            fsync_path(os.path.join(parent, name))
    fsync_path(folder)


def rename_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename ``src`` over ``dst`` (:func:`os.replace`), then fsync ``dst``'s folder (and ``src``'s,
    when it is another one): the rename survives a crash. The caller has fsynced ``src`` itself."""
    os.replace(src, dst)
    dst_parent, src_parent = Path(dst).absolute().parent, Path(src).absolute().parent
    fsync_path(dst_parent)
    if src_parent != dst_parent:
        fsync_path(src_parent)


def replace_durably(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Fsync ``src`` (a file; a folder: :func:`fsync_tree`), then :func:`rename_durably` it over ``dst``."""
    if os.path.isdir(src):
        fsync_tree(src)
    else:
        fsync_path(src)
    rename_durably(src, dst)


@contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success publish it as ``final``
    (:func:`replace_durably`: fsync the file, rename, fsync the folder).

    On an exception the temporary file is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        replace_durably(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(final: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``final`` through :func:`atomic_path`."""
    with atomic_path(final) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(final: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``final`` through :func:`atomic_path`."""
    write_text_atomic(final, json.dumps(obj, indent=2, sort_keys=True) + "\n")
