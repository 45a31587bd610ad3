"""The read side of an index: open and verify a build, follow ``current``, fall back to the newest
verified build, and check that a build fits the model and manifest it is used with.

Never imports the write side (:mod:`retrieval.index.writer`, :mod:`retrieval.index.cli`,
:mod:`retrieval.reindex`); the search, the evaluation and the service import only this side.

A reader that finds ``current`` missing or naming a missing or corrupt build falls back to the
newest verified build with a warning (:attr:`IndexBuild.warning`); :func:`rebuild_reason` then
asks for a rebuild, which repairs ``current``. Indexes larger than ``TVR_INDEX_MMAP_GB`` (default:
half the machine's memory) are opened memory-mapped (``faiss.IO_FLAG_MMAP``).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import faiss

from data.fingerprint import sha256_file
from data.manifest import Manifest, manifest_fingerprint, read_manifest
from data.settings import Settings, get_settings
from retrieval.index.faiss_index import IndexFolderError, apply_search_params
from retrieval.index.layout import (POINTER, REQUIRED_FILES, IndexBuild, build_ids, index_root, mmap_threshold_bytes,
                                    stamp_build)
from retrieval.index.shards import PartitionedIndex

log = logging.getLogger("retrieval.index")


def read_index(folder: Path, info: dict):
    """The build's FAISS index (memory-mapped when larger than :func:`mmap_threshold_bytes`) or its
    :class:`retrieval.index.shards.PartitionedIndex`."""
    partitions = info.get("partitions")
    files = ([folder / f"part-{i:03d}.faiss" for i in range(partitions["count"])] if partitions
             else [folder / "index.faiss"])
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise IndexFolderError(f"{folder} lacks {missing[:3]}")
    flags = faiss.IO_FLAG_MMAP if sum(p.stat().st_size for p in files) > mmap_threshold_bytes() else 0
    if partitions:
        return PartitionedIndex.read(folder, partitions["count"], int(info["dim"]), flags)
    return faiss.read_index(str(files[0]), flags)


def verify_build(folder: Path) -> IndexBuild:
    """Open the build ``folder`` and check it: every required file present, every file matching
    the sha256 recorded in ``info.json`` (builds written before checksums were recorded are checked
    by loading only), the FAISS index loading with as many vectors as ``ids.json`` has ids and the
    dimension ``info.json`` states. Returns the opened build, with the identity of its folder and
    files as they were before any was read (:attr:`IndexBuild.stamps`, for :meth:`IndexBuild.check_files`);
    raises :class:`IndexFolderError` naming the first problem."""
    needed = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if needed:
        raise IndexFolderError(f"{folder} lacks {needed}")
    try:
        stamps = stamp_build(folder)          # before any read: a change from here on is damage
    except OSError as err:
        raise IndexFolderError(f"{folder} cannot be listed ({err.strerror})") from None
    try:
        info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
        ids = json.loads((folder / "ids.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise IndexFolderError(f"{folder}: unreadable info.json or ids.json ({err})") from None
    if not isinstance(info, dict) or not isinstance(ids, list):
        raise IndexFolderError(f"{folder}: info.json is not an object or ids.json is not a list")
    for name, digest in (info.get("checksums") or {}).items():
        path = folder / name
        if name == "info.json" or not path.is_file() or sha256_file(path) != digest:
            raise IndexFolderError(f"{path}: missing or its sha256 differs from the one recorded in info.json "
                                   f"(a damaged or partly written build)")
    try:
        index = read_index(folder, info)
        manifest = read_manifest(folder / "manifest.parquet")
    except (RuntimeError, ValueError, OSError) as err:
        raise IndexFolderError(f"{folder}: index.faiss or manifest.parquet cannot be read ({str(err)[:200]})") from None
    if index.ntotal != len(ids) or index.d != info.get("dim"):
        raise IndexFolderError(f"{folder}: index holds {index.ntotal} x {index.d} vectors but ids.json has "
                               f"{len(ids)} ids and info.json says dim {info.get('dim')}")
    apply_search_params(index, info.get("params", {}))
    return IndexBuild(folder, info, ids, index, manifest, stamps)


def current_build_id(dataset: str, run: str, settings: Settings | None = None) -> str | None:
    """The build id ``current`` names (None when there is no pointer); cheap, for watchers."""
    try:
        return (index_root(dataset, run, settings) / POINTER).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def open_build(dataset: str, run: str, settings: Settings | None = None, *, fallback: bool = True) -> IndexBuild:
    """Open and verify the ``current`` build of ``indexes/<dataset>/<run>``.

    When ``current`` is missing, empty, or names a missing or corrupt build, the newest other build
    that verifies is opened instead, with :attr:`IndexBuild.warning` set (and logged); with
    ``fallback=False``, or when no build verifies, :class:`IndexFolderError` names the problem.
    """
    root = index_root(dataset, run, settings)
    pointer = root / POINTER
    rebuild = f"rebuild with: python -m retrieval.reindex {dataset} --run {run} (or python -m retrieval.index)"
    builds = build_ids(root)
    if not pointer.is_file() and not builds:
        raise IndexFolderError(f"no index for dataset {dataset!r}, run {run!r}: {pointer} does not exist; "
                               f"build it with: python -m retrieval.index --dataset {dataset} --run {run}")
    named = pointer.read_text(encoding="utf-8").strip() if pointer.is_file() else ""
    if not pointer.is_file():
        problem = f"{pointer} does not exist"
    elif not named or named.startswith(".") or "/" in named:
        problem = f"{pointer} names no valid build ({named!r})"
    else:
        try:
            return verify_build(root / named)
        except IndexFolderError as err:
            problem = f"{pointer} names build {named!r}, which cannot be used: {err}"
    if fallback:
        for candidate in reversed(builds):
            if candidate == named:
                continue
            try:
                build = verify_build(root / candidate)
            except IndexFolderError:
                continue
            build.warning = (f"{problem}; answering from the newest verified build {candidate}; "
                             f"the next re-index repairs 'current' ({rebuild})")
            log.warning(build.warning)
            return build
        problem += " and no other build verifies"
    raise IndexFolderError(f"{problem}; {rebuild}")


def check_build(build: IndexBuild, *, extractor_ids: dict, manifest: Manifest | None, dim: int,
                stale_ok: bool = False) -> str | None:
    """Refuse an index built for other extractors, another manifest, or another dimension.

    With ``stale_ok`` (search), an index of the same collection whose manifest has since changed
    (videos added or removed, not yet re-indexed) is accepted and a note saying so is returned; it
    is still refused when fewer than half of its videos are in the manifest (another manifest).
    """
    where = f"index {build.folder}"
    rebuild = (f"rebuild with: python -m retrieval.index --dataset {build.info.get('dataset')} "
               f"--run {build.info.get('run')}")
    built = build.info.get("extractor_ids", {})
    if built != dict(extractor_ids):
        diff = {m: (built.get(m), extractor_ids.get(m)) for m in sorted(set(built) | set(extractor_ids))
                if built.get(m) != extractor_ids.get(m)}
        shown = "; ".join(f"{m}: index {a}, model {b}" for m, (a, b) in diff.items())
        raise IndexFolderError(f"{where} was built with other extractor ids than the model uses now ({shown}); {rebuild}")
    if int(dim) != build.index.d:
        raise IndexFolderError(f"dimension mismatch: the model's query vectors have {dim} dimensions, "
                               f"{where} holds {build.index.d}-dimensional vectors; {rebuild}")
    note = None
    if manifest is not None:
        now = manifest_fingerprint(manifest)
        if build.info.get("manifest_fingerprint") != now:
            current = set(manifest.video_ids)
            shared = sum(1 for vid in build.ids if vid in current)
            if not stale_ok:
                raise IndexFolderError(f"{where} covers manifest {build.info.get('manifest_fingerprint')}, but the "
                                       f"dataset's manifest is now {now} (videos added, removed or moved); {rebuild}")
            if shared < len(build.ids) / 2:
                raise IndexFolderError(f"{where} was built for another manifest: only {shared} of its "
                                       f"{len(build.ids)} videos are in the dataset's manifest; {rebuild}")
            note = (f"stale index: built for manifest {build.info.get('manifest_fingerprint')}, the dataset is now "
                    f"{now}; {len(current) - shared} videos are not indexed yet and {len(build.ids) - shared} "
                    f"removed videos are hidden; run python -m retrieval.reindex {build.info.get('dataset')}")
    return note


def rebuild_reason(dataset: str, run: str, *, extractor_ids: dict | None = None,
                   settings: Settings | None = None) -> str | None:
    """Why ``indexes/<dataset>/<run>`` needs a (re)build, or None when the current build still fits
    the dataset's manifest (and ``extractor_ids`` when given). For scheduled re-indexing."""
    settings = settings or get_settings()
    try:
        build = open_build(dataset, run, settings)
        if build.warning:
            return build.warning
        check_build(build, extractor_ids=build.info.get("extractor_ids", {}) if extractor_ids is None
                    else extractor_ids, manifest=read_manifest(settings.manifest_path(dataset)),
                    dim=build.index.d)
    except IndexFolderError as err:
        return str(err)
    return None
