"""Content fingerprints: the one definition of "this video file" and "these captions".

A video's fingerprint is ``"<size>-<mtime_ns>-<h>"`` where ``h`` is the first 16 hex digits of
SHA-256 over the file size and its first and last :data:`EDGE_BYTES` bytes (at most 2 MiB read per
file, whatever its length). Replacing a file changes its size, its modification time or both ends;
touching it changes the mtime. A missing file has the fingerprint :data:`MISSING`.

A captions digest is the first 16 hex digits of SHA-256 over the JSON list of a video's captions;
correcting, adding or removing a caption changes it. A caption digest (:func:`caption_digest`) is the
same over ``[index, caption]`` of ONE caption: the fingerprint of that caption's text row, so a
corrected caption is the only one encoded again.

The manifest records the file fingerprint and the captions digest per video (``data.prepare``);
extraction stamps every stored row with the one its content came from (a text row: its caption
digest); re-indexing compares them. :func:`current_fingerprints` re-checks the
files cheaply: a ``stat`` per video, hashing only files whose size or mtime moved since the manifest.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, Mapping, Sequence

EDGE_BYTES = 1 << 20
MISSING = "missing"


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a whole file, read in 1 MiB blocks (checksums of builds and bundles)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def stat_key(path: str | os.PathLike) -> tuple[int, int] | None:
    """``(size, mtime_ns)`` of ``path``, or None when it is not a readable file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def file_fingerprint(path: str | os.PathLike) -> str:
    """The fingerprint of the file at ``path`` (see the module doc); :data:`MISSING` if unreadable."""
    key = stat_key(path)
    if key is None:
        return MISSING
    size, mtime_ns = key
    h = hashlib.sha256(str(size).encode())
    try:
        with open(path, "rb") as fh:
            h.update(fh.read(EDGE_BYTES))
            if size > EDGE_BYTES:
                fh.seek(max(EDGE_BYTES, size - EDGE_BYTES))
                h.update(fh.read(EDGE_BYTES))
    except OSError:
        return MISSING
    return f"{size}-{mtime_ns}-{h.hexdigest()[:16]}"


def fingerprint_stat(fingerprint: str | None) -> tuple[int, int] | None:
    """The ``(size, mtime_ns)`` a fingerprint was taken at (None for missing / malformed ones)."""
    parts = (fingerprint or "").split("-")
    if len(parts) != 3:
        return None
    try:
        return int(parts[0]), int(parts[1])
    except ValueError:
        return None


def captions_digest(captions: Sequence[str]) -> str:
    """Digest of one video's captions, in order."""
    return hashlib.sha256(json.dumps(list(captions), ensure_ascii=False).encode()).hexdigest()[:16]


def caption_digest(index: int, caption: str) -> str:
    """Digest of one caption at its place ``index`` in its video's caption list (a text row's fingerprint)."""
    return hashlib.sha256(json.dumps([int(index), caption], ensure_ascii=False).encode()).hexdigest()[:16]


def caption_digests(captions: Sequence[str]) -> tuple[str, ...]:
    """The :func:`caption_digest` of each of a video's captions, in order."""
    return tuple(caption_digest(i, c) for i, c in enumerate(captions))


def refresh(paths: Mapping[str, str | os.PathLike], known: Mapping[str, str | None]) -> dict[str, str]:
    """``id -> fingerprint`` of each file in ``paths``: ``known[id]`` while the file's size and mtime
    still match it (one ``stat``), else hashed again."""
    out = {}
    for key, path in paths.items():
        old = known.get(key)
        now = stat_key(path)
        if now is not None and old is not None and fingerprint_stat(old) == now:
            out[key] = old
        else:
            out[key] = file_fingerprint(path)
    return out


def current_fingerprints(manifest, ids: Iterable[str] | None = None) -> dict[str, str]:
    """``video_id -> fingerprint`` of the manifest's videos (all, or ``ids``) as the files are now."""
    table = manifest.table
    wanted = None if ids is None else set(ids)
    vids = table.column("video_id").to_pylist()
    rels = table.column("path").to_pylist()
    stored = table.column("fingerprint").to_pylist() if "fingerprint" in table.column_names else [None] * len(vids)
    paths, known, outside = {}, {}, {}
    for vid, rel, fp in zip(vids, rels, stored):
        if wanted is None or vid in wanted:
            try:
                paths[vid] = manifest.video_path(rel)
                known[vid] = fp
            except ValueError:   # ManifestError: resolves outside the video root, so it is never read
                outside[vid] = MISSING
    return {**refresh(paths, known), **outside}
