"""Find a dataset's video files by id, whatever their extension, with one walk of the folder.

Datasets name videos by id (``video9770``, ``-4wsuPCjDBc_5_15``,
``10015567@N08_3655084291_d8b58466fa.mov``, ``v_uqiMw7tQ1Cc``); the files on disk carry one of
:data:`VIDEO_EXTENSIONS` (any case), or are named exactly like the id. Ids may contain dots, ``@``
or end in a dot, so the extension is only ever the part after the *last* dot of a file name.

:class:`VideoFiles` walks the folder once (subfolders included, e.g. LSMDC's ``<movie>/<clip>.avi``)
and answers every lookup from memory: no ``stat`` per candidate extension.
"""
from __future__ import annotations

import os
from pathlib import Path

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg")
DEFAULT_EXTENSION = ".mp4"
# FFmpeg options for opening a local media file: the file protocol only (no http, no other protocol
# reached through a playlist or a name such as ``concat:a|b`` or ``subfile,,...``).
FILE_ONLY = {"protocol_whitelist": "file"}


def file_url(path: str | os.PathLike) -> str:
    """``file:`` URL of ``path`` for FFmpeg (``av.open(file_url(p), options=FILE_ONLY)``): a colon in
    the name is then never read as a protocol."""
    return "file:" + os.path.abspath(path)


class VideoFiles:
    """Index of the video files under ``root`` (paths relative to it, POSIX form).

    When one id matches several files, the preferred one is: the extension earliest in
    :data:`VIDEO_EXTENSIONS`, then the shallowest, then the first in sorted order.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.exists = self.root.is_dir()
        self._by_stem: dict[str, tuple[tuple, str]] = {}
        self._by_name: dict[str, tuple[tuple, str]] = {}
        if self.exists:
            self._scan()

    def _scan(self) -> None:
        rank = {ext: i for i, ext in enumerate(VIDEO_EXTENSIONS)}
        for folder, dirs, files in os.walk(self.root):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel_folder = Path(folder).relative_to(self.root).as_posix()
            depth = 0 if rel_folder == "." else rel_folder.count("/") + 1
            for name in files:
                if name.startswith("."):
                    continue
                rel = name if depth == 0 else f"{rel_folder}/{name}"
                stem, dot, ext = name.rpartition(".")
                ext_rank = rank.get(f".{ext.lower()}") if dot and stem else None
                if ext_rank is not None:
                    _keep_best(self._by_stem, stem, (ext_rank, depth, rel), rel)
                _keep_best(self._by_name, name, (depth, rel), rel)

    def __len__(self) -> int:
        return len(self._by_name)

    def find(self, video_id: str, aliases: tuple[str, ...] = ()) -> str | None:
        """Relative path of the video called ``video_id`` (or one of ``aliases``), else None.

        ``<id>.<video extension>`` is preferred over a file named exactly ``<id>``.
        """
        for key in (video_id, *aliases):
            for table in (self._by_stem, self._by_name):
                hit = table.get(key)
                if hit is not None:
                    return hit[1]
        return None

    def path_for(self, video_id: str, aliases: tuple[str, ...] = ()) -> str:
        """:meth:`find`, or ``<id>.mp4`` when absent (the manifest then counts the video missing)."""
        return self.find(video_id, aliases) or f"{video_id}{DEFAULT_EXTENSION}"


def _keep_best(table: dict[str, tuple[tuple, str]], key: str, rank: tuple, rel: str) -> None:
    current = table.get(key)
    if current is None or rank < current[0]:
        table[key] = (rank, rel)
