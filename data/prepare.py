"""Build a dataset's manifest from its own annotation files.

``python -m data.prepare <dataset> --annotations DIR --videos DIR [--name NAME] [--strict]``

Each dataset has one reader (a function returning :class:`data.manifest.VideoRecord` s) in
:data:`READERS`; the manifest is written to ``$TVR_HOME/datasets/<name>/manifest.parquet`` and
videos missing on disk are counted and listed in ``missing_videos.txt`` beside it.

``synthetic`` needs no files: it generates the dataset under ``$TVR_HOME/datasets/synthetic/``
(or reads an already generated folder given with ``--annotations``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from data import folder, synthetic
from data.manifest import ManifestError, build_manifest, write_manifest, write_missing_report
from data.settings import Settings, get_settings


def _synthetic_records(annotations: Path, videos: Path, **_):
    return folder.read_jsonl(annotations / "annotations.jsonl" if annotations.is_dir() else annotations)


def _folder_records(annotations: Path, videos: Path, **_):
    return folder.read_records(annotations)


READERS: dict[str, Callable] = {
    "synthetic": _synthetic_records,
    "folder": _folder_records,
}


def prepare(dataset: str, annotations: str | Path, videos: str | Path, *, name: str | None = None,
            settings: Settings | None = None, strict_missing: bool = False, **options):
    """Read ``dataset``'s annotations, validate, write the manifest. Returns (path, report)."""
    settings = settings or get_settings()
    if dataset not in READERS:
        raise ManifestError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(READERS))}")
    name = name or dataset
    records = READERS[dataset](Path(annotations), Path(videos), **options)
    table, report = build_manifest(records, videos, dataset=name, source=str(annotations),
                                   strict_missing=strict_missing)
    out = write_manifest(table, settings.manifest_path(name))
    missing_file = out.parent / "missing_videos.txt"
    if report.missing:
        write_missing_report(report.missing, missing_file)
    else:
        missing_file.unlink(missing_ok=True)
    return out, report


def prepare_synthetic(n: int = 300, seed: int = 0, settings: Settings | None = None, **gen_options):
    """Generate (or reuse) the synthetic dataset under the settings root and build its manifest."""
    settings = settings or get_settings()
    root = settings.dataset_dir("synthetic")
    ann = synthetic.generate(root, n=n, seed=seed, **gen_options)
    return prepare("synthetic", ann, root, name="synthetic", settings=settings, strict_missing=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help=f"one of: {', '.join(sorted(READERS))}")
    p.add_argument("--annotations", help="annotation file or folder")
    p.add_argument("--videos", help="folder holding the video files")
    p.add_argument("--name", help="manifest name (default: the dataset; required for 'folder')")
    p.add_argument("--strict", action="store_true", help="fail when any video file is missing")
    p.add_argument("--n", type=int, default=300, help="synthetic only: number of videos")
    p.add_argument("--seed", type=int, default=0, help="synthetic only: seed")
    args = p.parse_args(argv)
    try:
        if args.dataset == "synthetic" and not args.annotations:
            out, report = prepare_synthetic(args.n, args.seed)
        else:
            if not args.annotations or not args.videos:
                p.error("--annotations and --videos are required for this dataset")
            if args.dataset == "folder" and not args.name:
                p.error("--name is required for a 'folder' dataset")
            out, report = prepare(args.dataset, args.annotations, args.videos, name=args.name,
                                  strict_missing=args.strict)
    except (ManifestError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"manifest: {out}\n  {report.summary()}")
    if report.missing:
        print(f"  missing videos listed in {out.parent / 'missing_videos.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
