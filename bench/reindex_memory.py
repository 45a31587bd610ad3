"""Peak traced memory of the re-index's vector assembly (``retrieval.reindex.assemble.assemble`` written
by ``retrieval.index.writer.write_vectors``), the step that used to hold the new build's whole ``[N, E]`` array.

    python -m bench.reindex_memory [--kept 200000] [--new 20000] [--removed 1000] [--dim 512] [--batch 4096]

Random float32 vectors stand in for encodings: ``--kept`` old vectors in a memory-mapped ``.npy``
(as a previous build's ``vectors.npy``) of which the first ``--removed`` are dropped, and ``--new``
newly encoded ones in another (as the re-index's ``.encoded-*-new.npy``). Both files are written
first (not measured) in a temporary folder, removed at the end. Prints the assembled size, the time
and the peak of ``tracemalloc`` (numpy's buffers and the id lists / dicts) during the assembly.
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np

from retrieval.index.writer import write_vectors
from retrieval.reindex.assemble import assemble as _assemble


def random_npy(path: Path, rows: int, dim: int, seed: int, chunk: int = 10_000) -> np.ndarray:
    """A ``[rows, dim]`` float32 ``.npy`` written ``chunk`` rows at a time; returned memory-mapped."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, "w+", np.float32, (rows, dim))
    for start in range(0, rows, chunk):
        out[start:start + chunk] = rng.standard_normal((min(chunk, rows - start), dim), np.float32)
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reindex_memory", description=__doc__.split("\n\n")[0])
    p.add_argument("--kept", type=int, default=200_000)
    p.add_argument("--new", type=int, default=20_000)
    p.add_argument("--removed", type=int, default=1_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--batch", type=int, default=4096)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        old = random_npy(folder / "old.npy", args.kept, args.dim, seed=0)
        new = random_npy(folder / "new.npy", args.new, args.dim, seed=1)
        old_ids = [f"v{i}" for i in range(args.kept)]
        new_ids = [f"w{i}" for i in range(args.new)]
        tracemalloc.start()
        start = time.perf_counter()
        ids, blocks = _assemble(old_ids + new_ids, old_ids[args.removed:], types.SimpleNamespace(ids=old_ids),
                                old, new, new_ids, args.batch)
        write_vectors(folder / "assembled.npy", len(ids), blocks)
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out = np.load(folder / "assembled.npy", mmap_mode="r")
        assert np.array_equal(out[0], old[args.removed]) and np.array_equal(out[-1], new[-1])
        del old, new, out
    size = len(ids) * args.dim * 4
    print(f"assembled {len(ids)} x {args.dim} float32 ({size / 1e6:.0f} MB) in batches of {args.batch} "
          f"in {seconds:.1f} s; peak traced memory {peak / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
