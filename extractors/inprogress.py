"""In-progress records: a video whose decoding killed its process is not decoded again.

While a video is being decoded, ``features/<dataset>/.inprogress/<hash>.<pid>.<random>.json``
exists (``<hash>``: of the video id, so any id is a safe file name), locked with ``flock`` by the
decoding process and removed before that lock is released. A later run that finds such a record
with its lock free knows the process died while decoding (killed for memory, a segfault in a
decoder, ``kill -9``) and records the video as ``failed`` with :func:`crash_error`
(``worker died while decoding ...``) instead of decoding it again. The store treats that failure as
final for the file's content (:data:`data.store.FINAL_FAILURE`): it stands until the file's
fingerprint changes (replace or ``touch`` the file) or a run asks for ``--retry-failed``. A temporary
record (``.<name>.tmp``, created and then locked) left by a process that died before publishing it
is removed once older than :data:`TMP_GRACE_S`; a younger one may be another process's record in
the instant between its creation and its lock. With ``decode_workers > 1`` every
video being decoded at the moment of death is recorded.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from data import locks
from data.atomic import replace_durably
from data.faults import pause_point
from data.manifest import VideoRecord
from data.names import check_name
from data.settings import Settings
from data.store import FINAL_FAILURE

INPROGRESS = ".inprogress"
# Tests only: "<video_id>:<marker file>" makes the run write the marker and sleep while it holds that
# video's in-progress record (as if its decoder hung), so a test can kill it there.
PAUSE_ENV = "TVR_EXTRACT_TEST_PAUSE"
# A temporary record is created, then locked: for that instant its lock is free. Another process must
# neither delete it nor take its lock then, so only temporary records older than this are debris.
TMP_GRACE_S = 60.0


def records_dir(dataset: str, settings: Settings) -> Path:
    """``features/<dataset>/.inprogress``."""
    return settings.features_dir / check_name(dataset, "dataset name") / INPROGRESS


def _record_key(video_id: str) -> str:
    return hashlib.sha256(video_id.encode()).hexdigest()[:20]


@contextmanager
def decoding(folder: Path, record: VideoRecord) -> Iterator[None]:
    """Hold an in-progress record of ``record`` (locked by this process) while the block runs."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{_record_key(record.video_id)}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    tmp, final = folder / f".{name}.tmp", folder / f"{name}.json"
    fd = locks.held_fd(tmp)
    try:
        os.write(fd, json.dumps({"video_id": record.video_id, "path": record.path, "pid": os.getpid(),
                                 "host": os.uname().nodename, "started": time.time()}).encode())
        replace_durably(tmp, final)   # visible under its final name only once locked
        pause_point(PAUSE_ENV, record.video_id)   # tests: kill -9 while this video decodes
        yield
    finally:
        final.unlink(missing_ok=True)   # removed before the lock goes: a record left in place means a death
        tmp.unlink(missing_ok=True)
        os.close(fd)


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except FileNotFoundError:
        return False


def dead_records(folder: Path, video_ids: Iterable[str]) -> dict[str, tuple[dict, list[Path]]]:
    """``video_id -> (record, files)`` of the ``video_ids`` whose decoding process died."""
    if not folder.is_dir():
        return {}
    wanted = {_record_key(v): v for v in video_ids}
    out: dict[str, tuple[dict, list[Path]]] = {}
    for path in folder.iterdir():
        if path.name.startswith(".") and path.suffix == ".tmp":
            if _older_than(path, TMP_GRACE_S) and locks.abandoned(path):
                path.unlink(missing_ok=True)   # died between creating and publishing its record
            continue
        vid = wanted.get(path.name.split(".")[0])
        if vid is None or path.suffix != ".json" or not locks.abandoned(path):
            continue
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            info = {}
        entry = out.setdefault(vid, (info, []))
        entry[1].append(path)
    return out


def crash_error(record: VideoRecord, info: dict) -> str:
    """The ``failed`` row's error for a video whose decoding process died (``info``: its record)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return (f"{FINAL_FAILURE} {record.path}: process {info.get('pid', '?')} on {info.get('host', '?')} died while "
            f"decoding it (started {when}; killed for memory or a decoder crash); not retried until the file "
            f"changes (replace or touch it, or run with --retry-failed, to try again)")
