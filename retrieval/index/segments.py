"""The segment index of a build: fixed-length windows of every indexed video, for the corpus
moment mode (:func:`retrieval.query.moments.corpus_moments`).

A run with a moment head (``fusion.api.MomentPredictor``) gets, beside its video index, the head's
embeddings of each video's windows of :data:`WINDOW_S` seconds every :data:`STRIDE_S` seconds
(``[S, E]`` float32), in a flat inner-product FAISS index ``segments.faiss``, and their
``(video_id, start_s, end_s)`` in ``segments.parquet``. They are written into the build folder with
the rest (checksummed, verified, published together) and described in ``info.json["segments"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.index.faiss_index import IndexFolderError

WINDOW_S = 4.0            # the windows' length (seconds)
STRIDE_S = 2.0            # and their step: neighbours overlap by half
INDEX_FILE = "segments.faiss"
KEYS_FILE = "segments.parquet"


@dataclass
class SegmentIndex:
    """FAISS inner-product index over ``[S, E]`` window embeddings and, per row, ``(video_id,
    start_s, end_s)``."""

    index: faiss.Index
    keys: list[tuple[str, float, float]]

    @classmethod
    def exact(cls, vectors: np.ndarray, keys: list[tuple[str, float, float]]) -> "SegmentIndex":
        """A flat (exact) index over ``vectors [S, E]``."""
        if len(vectors) != len(keys):
            raise ValueError(f"{len(keys)} segment keys for {len(vectors)} vectors")
        index = faiss.IndexFlatIP(int(vectors.shape[1]))
        index.add(np.ascontiguousarray(vectors, np.float32))
        return cls(index, list(keys))

    def search(self, queries: np.ndarray, depth: int) -> list[list[tuple[float, str, float, float]]]:
        """Per query ``[Q, E]``: up to ``depth`` (score, video_id, start_s, end_s), best first."""
        depth = min(depth, self.index.ntotal)
        if depth <= 0:
            return [[] for _ in range(len(queries))]
        scores, rows = self.index.search(np.ascontiguousarray(queries, np.float32), depth)
        return [[(float(s), *self.keys[r]) for s, r in zip(srow, rrow) if r >= 0] for srow, rrow in zip(scores, rows)]

    def write(self, folder: Path) -> dict:
        """Write :data:`INDEX_FILE` and :data:`KEYS_FILE` into ``folder``; returns ``info.json["segments"]``."""
        faiss.write_index(self.index, str(folder / INDEX_FILE))
        vids, starts, ends = zip(*self.keys) if self.keys else ((), (), ())
        pq.write_table(pa.table({"video_id": pa.array(vids, pa.string()), "start_s": pa.array(starts, pa.float64()),
                                 "end_s": pa.array(ends, pa.float64())}), folder / KEYS_FILE)
        return {"n_segments": self.index.ntotal, "dim": self.index.d, "window_s": WINDOW_S, "stride_s": STRIDE_S}

    @classmethod
    def read(cls, folder: Path) -> "SegmentIndex":
        """The segment index written by :meth:`write` (IndexFolderError when unreadable)."""
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
            table = pq.read_table(folder / KEYS_FILE)
        except (RuntimeError, OSError, pa.ArrowException) as err:
            raise IndexFolderError(f"{folder}: the segment index cannot be read ({str(err)[:200]})") from None
        keys = list(zip(table.column("video_id").to_pylist(), table.column("start_s").to_pylist(),
                        table.column("end_s").to_pylist()))
        if index.ntotal != len(keys):
            raise IndexFolderError(f"{folder}: {index.ntotal} segment vectors for {len(keys)} segment keys")
        return cls(index, keys)
