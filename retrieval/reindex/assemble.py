"""The new build's vectors, assembled from the previous build's and the newly encoded ones in
manifest order, one batch at a time (both sources memory-mapped: only one batch is in memory)."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from retrieval.index.layout import IndexBuild


def assemble(order: list[str], reused: list[str], previous: IndexBuild | None, old: np.ndarray | None,
             new: np.ndarray | None, new_ids: list[str], batch: int) -> tuple[list[str], Iterator[np.ndarray]]:
    """The new build's ids, in manifest ``order`` (reused and newly encoded videos; a new vector
    replaces an old one), and their vectors ``[b, E]`` float32 in that order, ``batch`` rows at a
    time: each batch gathers its rows from ``old`` (the previous build's vectors ``[N_old, E]``,
    rows as its ids) and ``new`` (``[N_new, E]``, rows as ``new_ids``)."""
    source = {}
    if reused:
        row = {vid: i for i, vid in enumerate(previous.ids)}
        source.update((vid, (0, row[vid])) for vid in reused)
    source.update((vid, (1, j)) for j, vid in enumerate(new_ids))
    ids = [vid for vid in order if vid in source]
    dim = new.shape[1] if new is not None else (old.shape[1] if old is not None else 0)

    def blocks() -> Iterator[np.ndarray]:
        for start in range(0, len(ids), batch):
            which, rows = np.array([source[vid] for vid in ids[start:start + batch]], np.int64).T
            out = np.empty((len(rows), dim), np.float32)
            for k, array in enumerate((old, new)):
                if (which == k).any():
                    out[which == k] = array[rows[which == k]]
            yield out
    return ids, blocks()
