"""Build a dataset's manifest from its own annotation files.

``python -m data.prepare <dataset> --annotations DIR --videos DIR [--split S] [--val-size N] [--name NAME] [--strict]``

Each dataset has one reader in :data:`READERS` (a function ``(annotations, videos, **options)``
returning :class:`data.annotations.DatasetRead`) and an evaluation protocol in
:data:`DATASETS_INFO`. The manifest is written to ``$TVR_HOME/datasets/<name>/manifest.parquet``
with the protocol in its metadata (``Manifest.metadata``: ``reader``, ``text_unit``,
``test_queries``, ``split_protocol``, ...) and the video root, relative to the manifest's folder when
it lies inside ``$TVR_HOME`` (so a copied ``TVR_HOME`` reads its own videos); beside it ``prepare_report.json`` holds the summary and
the reader's notes, ``missing_videos.txt`` lists videos missing on disk (not an error unless
``--strict``) and ``windows.parquet`` the captions' time windows (:mod:`data.windows`).

``synthetic`` needs no files: it generates the dataset under ``$TVR_HOME/datasets/synthetic/``
(or reads an already generated folder given with ``--annotations``).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from data import activitynet, didemo, folder, lsmdc, msrvtt, msvd, synthetic
from data.annotations import DatasetInfo, DatasetRead
from data.atomic import write_json_atomic
from data.cli import add_version, guarded
from data.manifest import ManifestError, build_manifest, read_manifest, write_manifest, write_missing_report
from data.names import InvalidName, check_name
from data.settings import Settings, get_settings
from data.windows import WINDOWS_FILE, replace_windows


def _synthetic_records(annotations: Path, videos: Path) -> DatasetRead:
    path = annotations / "annotations.jsonl" if annotations.is_dir() else annotations
    return DatasetRead(folder.read_jsonl(path))


def _folder_records(annotations: Path | None, videos: Path) -> DatasetRead:
    return folder.read(annotations) if annotations is not None else folder.scan(videos)


_OWN_CAPTIONS = DatasetInfo("caption", "every caption of every test video is its own query", "as given")

READERS: dict[str, Callable[..., DatasetRead]] = {
    "synthetic": _synthetic_records,
    "folder": _folder_records,
    "msrvtt": msrvtt.read,
    "msvd": msvd.read,
    "lsmdc": lsmdc.read,
    "didemo": didemo.read,
    "activitynet": activitynet.read,
}
DATASETS_INFO: dict[str, DatasetInfo] = {
    "synthetic": _OWN_CAPTIONS,
    "folder": _OWN_CAPTIONS,
    "msrvtt": msrvtt.INFO,
    "msvd": msvd.INFO,
    "lsmdc": lsmdc.INFO,
    "didemo": didemo.INFO,
    "activitynet": activitynet.INFO,
}
OPTIONS: dict[str, tuple[str, ...]] = {"msrvtt": ("split", "val_size"), "activitynet": ("val_size",)}


def prepare(dataset: str, annotations: str | Path | None, videos: str | Path, *, name: str | None = None,
            settings: Settings | None = None, strict_missing: bool = False, **options):
    """Read ``dataset``'s annotations, validate, write the manifest. Returns (path, report).

    ``options`` are the reader's own (see :data:`OPTIONS`: ``split`` and ``val_size`` for msrvtt,
    ``val_size`` for activitynet); ``None`` values mean the reader's default.
    """
    settings = settings or get_settings()
    if dataset not in READERS:
        raise ManifestError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(OPTIONS.get(dataset, ())))
    if unknown:
        raise ManifestError(f"dataset {dataset!r} takes no option {', '.join(unknown)} "
                            f"(it takes: {', '.join(OPTIONS.get(dataset, ())) or 'none'})")
    name = check_name(name or dataset, "dataset name")
    if annotations is None and dataset != "folder":
        raise ManifestError(f"dataset {dataset!r} needs its annotation files (--annotations)")
    read = READERS[dataset](None if annotations is None else Path(annotations), Path(videos), **options)
    info = DATASETS_INFO[dataset]
    metadata = {"reader": dataset, "text_unit": info.text_unit, "test_queries": info.test_queries,
                **read.metadata}
    table, report = build_manifest(read.records, videos, dataset=name, source=str(annotations or videos),
                                   strict_missing=strict_missing, metadata=metadata,
                                   uncaptioned_ok=dataset == "folder" and annotations is None,
                                   known=_known_fingerprints(settings.manifest_path(name), videos))
    if not Path(videos).is_dir():
        read.notes.append(f"videos folder {videos} does not exist: every video counts as missing")
    report.notes = list(read.notes)
    out = write_manifest(table, settings.manifest_path(name), home=settings.root)
    replace_windows(out.parent / WINDOWS_FILE, read.windows)
    missing_file = out.parent / "missing_videos.txt"
    if report.missing:
        write_missing_report(report.missing, missing_file)
    else:
        missing_file.unlink(missing_ok=True)
    write_json_atomic(out.parent / "prepare_report.json", {
        "dataset": dataset, "name": name, "summary": report.summary(), "splits": report.splits,
        "n_videos": report.n_videos, "n_captions": report.n_captions, "n_missing": len(report.missing),
        "notes": report.notes, "metadata": metadata, "protocol": asdict(info)})
    return out, report


def _known_fingerprints(manifest_path: Path, videos: str | Path) -> dict[str, str]:
    """Fingerprints the previous manifest recorded (by relative path), when it had the same video root;
    re-preparing then reads only files whose size or mtime moved."""
    try:
        old = read_manifest(manifest_path)
    except ManifestError:
        return {}
    if old.video_root != Path(videos).resolve():
        return {}
    return {p: fp for p, fp in zip(old.table.column("path").to_pylist(), old.table.column("fingerprint").to_pylist())
            if fp is not None}


def prepare_synthetic(n: int = 300, seed: int = 0, settings: Settings | None = None, **gen_options):
    """Generate (or reuse) the synthetic dataset under the settings root and build its manifest."""
    settings = settings or get_settings()
    root = settings.dataset_dir("synthetic")
    ann = synthetic.generate(root, n=n, seed=seed, **gen_options)
    return prepare("synthetic", ann, root, name="synthetic", settings=settings, strict_missing=True)


@guarded(ManifestError, InvalidName, FileExistsError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0],
                                epilog="Which files each dataset needs: docs/datasets.md")
    p.add_argument("dataset", help=f"one of: {', '.join(READERS)}")
    p.add_argument("--annotations", help="annotation file or folder ('folder': an optional captions file)")
    p.add_argument("--videos", help="folder holding the video files (searched recursively)")
    p.add_argument("--name", help="manifest name (default: the dataset; required for 'folder')")
    p.add_argument("--strict", action="store_true", help="fail when any video file is missing")
    p.add_argument("--split", choices=msrvtt.SPLITS, help="msrvtt only: split protocol (default 1k-A)")
    p.add_argument("--val-size", type=int, help="msrvtt / activitynet: training videos held out as "
                   "validation (default 1000; 0 for none; not for msrvtt 'full', which has its own)")
    p.add_argument("--n", type=int, default=300, help="synthetic only: number of videos")
    p.add_argument("--seed", type=int, default=0, help="synthetic only: seed")
    add_version(p)
    args = p.parse_args(argv)
    if args.dataset == "synthetic" and not args.annotations:
        out, report = prepare_synthetic(args.n, args.seed)
    else:
        if not args.videos or not (args.annotations or args.dataset == "folder"):
            p.error("--videos is required, and --annotations too for this dataset" if args.dataset != "folder"
                    else "--videos is required for a 'folder' dataset (--annotations: an optional captions file)")
        if args.dataset == "folder" and not args.name:
            p.error("--name is required for a 'folder' dataset")
        out, report = prepare(args.dataset, args.annotations, args.videos, name=args.name,
                              strict_missing=args.strict, split=args.split, val_size=args.val_size)
    print(f"manifest: {out}\n  {report.summary()}")
    for note in report.notes:
        print(f"  {note}")
    if report.missing:
        print(f"  missing videos listed in {out.parent / 'missing_videos.txt'}")
    print(f"  report: {out.parent / 'prepare_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
