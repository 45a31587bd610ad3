"""Embeddings out of an index, for use elsewhere:
``python -m retrieval.export --dataset D --run R --out FILE.parquet [--captions]``.

Writes one Parquet file (temporary name, then renamed) that any Arrow tool reads
(``pyarrow``, DuckDB ``read_parquet``, Polars, pandas)::

    kind       string          "video" (one row per indexed video) or "caption"
    video_id   string          the video (for a caption: the video it describes)
    caption    string, null    the caption text (null for videos)
    split      string, null    the caption's split (null for videos: an index covers its splits)
    embedding  fixed_size_list<float32>[D]   the vector FAISS holds (inner-product space)

Video rows are exactly the vectors of the index's ``current`` build, in its row order. With
``--captions`` every caption of the build's splits is encoded with the same model (text vectors
in the same space). File metadata (``tvr`` key, JSON): dataset, run, build id, model, dim,
extractor ids, and ``random_weights`` (RANDOM WEIGHTS when the features came from random extractors).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from data.atomic import atomic_path
from data.cli import add_version, guarded
from data.names import check_name
from data.provenance import random_weights_banner, random_weights_label
from data.settings import Settings, get_settings
from retrieval.index.faiss_index import IndexFolderError, reconstruct_all
from retrieval.index.layout import IndexBuild
from retrieval.index.reader import open_build
from retrieval.index.shards import PartitionedIndex
from retrieval.runs import RunNotFound, fusion_api, load, run_name


def index_vectors(build: IndexBuild) -> np.ndarray:
    """The build's vectors ``[N, D]`` float32, rows as ``build.ids``: the stored copy when the build
    kept one, else reconstructed from the FAISS index (:func:`retrieval.index.faiss_index.reconstruct_all`,
    per part for a partitioned build)."""
    stored = build.stored_vectors()
    if stored is not None:
        return np.asarray(stored, np.float32)
    if isinstance(build.index, PartitionedIndex):
        return build.index.reconstruct_all()
    return reconstruct_all(build.index)


def _table(kind: str, video_ids: list[str], vectors: np.ndarray, captions: list[str | None],
           splits: list[str | None]) -> pa.Table:
    dim = vectors.shape[1]
    flat = pa.array(np.ascontiguousarray(vectors, np.float32).reshape(-1))
    return pa.table({"kind": pa.array([kind] * len(video_ids), pa.string()),
                     "video_id": pa.array(video_ids, pa.string()),
                     "caption": pa.array(captions, pa.string()),
                     "split": pa.array(splits, pa.string()),
                     "embedding": pa.FixedSizeListArray.from_arrays(flat, dim)})


def export_embeddings(dataset: str, run: str, out: str | Path, *, captions: bool = False,
                      settings: Settings | None = None) -> Path:
    """Write the Parquet file described in the module docstring; returns its path."""
    settings = settings or get_settings()
    check_name(dataset, "dataset")
    loaded = load(run, dataset, settings)
    name = run_name(loaded.run_dir)
    build = open_build(dataset, name, settings)
    parts = [_table("video", list(build.ids), index_vectors(build), [None] * len(build.ids),
                    [None] * len(build.ids))]
    if captions:
        for split in build.info.get("splits") or []:
            enc = fusion_api().encode_split(loaded, dataset, split, settings=settings, captions="all")
            parts.append(_table("caption", list(enc.query_video_ids), enc.text_vectors, list(enc.captions),
                                [split] * len(enc.captions)))
    info = build.info
    meta = {"dataset": dataset, "run": name, "build_id": info.get("build_id", build.folder.name),
            "model": info.get("model"), "dim": int(build.index.d), "extractor_ids": info.get("extractor_ids"),
            "random_weights": bool(info.get("random_weights"))}
    if meta["random_weights"]:
        meta["WARNING"] = random_weights_label()
    table = pa.concat_tables(parts)
    table = table.replace_schema_metadata({"tvr": json.dumps(meta)})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        pq.write_table(table, tmp)
    return out


@guarded(RunNotFound, IndexFolderError, FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m retrieval.export", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="dataset name")
    p.add_argument("--run", required=True, help="run id, run folder, bundle folder or 'zero-shot' (its index must exist)")
    p.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    p.add_argument("--captions", action="store_true", help="also encode every caption of the indexed splits")
    add_version(p)
    args = p.parse_args(argv)
    out = export_embeddings(args.dataset, args.run, args.out, captions=args.captions)
    meta = json.loads(pq.read_schema(out).metadata[b"tvr"])
    rows = pq.read_metadata(out).num_rows
    print(f"wrote {out}: {rows} rows of {meta['dim']}-d embeddings ({meta['dataset']} / {meta['run']})")
    if meta["random_weights"]:
        print(random_weights_banner(meta["WARNING"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
