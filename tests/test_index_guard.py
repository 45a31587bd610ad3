"""An opened index build guards its files: vectors read into memory below the mmap threshold, any
change on disk detected before a read (a truncated memory map is SIGBUS), a fallback to the
previous build after damage; exact re-ranking in bounded memory, ranked as before."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from fake_fusion_api import write_dataset
from retrieval.index import layout, reader
from retrieval.index.faiss_index import IndexFolderError
from retrieval.index.layout import VECTORS_FILE, BuildDamaged
from retrieval.index.rerank import RERANK_MAX_BYTES, block_shape, rerank_exact
from retrieval.index.writer import write_build

INFO = {"extractor_ids": {"clip_frames": "aaa", "clip_text": "bbb"}, "random_weights": True, "model": "zero-shot"}
N, DIM = 40, 16
PROJECT = Path(__file__).resolve().parents[1]


def _vectors(n=N, dim=DIM, seed=0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _build(seed=0) -> layout.IndexBuild:
    """A published flat build of N stored vectors over the "toy" manifest, opened."""
    ids = write_dataset("toy", N)
    folder = write_build("toy", "zero-shot", _vectors(seed=seed), ids, info=INFO, use_gpu=False, store_vectors=True)
    return reader.verify_build(folder)


def test_stored_vectors_are_read_into_memory_below_the_mmap_threshold(tvr_home, monkeypatch):
    build = _build()
    assert reader.mmap_threshold_bytes is layout.mmap_threshold_bytes       # one definition
    held = build.stored_vectors()
    assert type(held) is np.ndarray and np.array_equal(held, _vectors())
    monkeypatch.setenv("TVR_INDEX_MMAP_GB", "0")                            # every file is "large"
    mapped = build.stored_vectors()
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, held)


def _truncate(folder):
    os.truncate(folder / VECTORS_FILE, 0)


def _replace(folder):
    shutil.copy(folder / "ids.json", folder / "ids.copy")
    os.replace(folder / "ids.copy", folder / "ids.json")                    # same bytes, another file


def _touch(folder):
    stat = os.stat(folder / "manifest.parquet")
    os.utime(folder / "manifest.parquet", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def _swap_folder(folder):
    os.rename(folder, folder.with_name("moved"))
    shutil.copytree(folder.with_name("moved"), folder)


DAMAGE = {  # what is done to the build folder -> what damage() says
    "truncated vectors": (_truncate, "vectors.npy is 0 bytes, was {size} bytes when build {id} was opened"),
    "file replaced": (_replace, "ids.json was replaced by another file since build {id} was opened"),
    "file removed": (lambda f: (f / "index.faiss").unlink(), "index.faiss is gone (it was there when build {id}"),
    "rewritten in place": (_touch, "manifest.parquet was rewritten in place since build {id} was opened"),
    "file added": (lambda f: (f / "notes.txt").write_text("x"), "notes.txt was added to the build folder"),
    "folder removed": (shutil.rmtree, "the build folder is gone (build {id})"),
    "folder replaced": (_swap_folder, "the build folder was replaced since build {id} was opened"),
}


def test_an_untouched_build_has_no_damage(tvr_home):
    build = _build()
    build.stored_vectors()
    assert build.damage() is None
    build.check_files()


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damage_names_the_changed_file_and_check_files_refuses(tvr_home, case):
    build = _build()
    size = (build.folder / VECTORS_FILE).stat().st_size
    act, said = DAMAGE[case]
    act(build.folder)
    expected = said.format(size=size, id=build.build_id)
    assert expected in build.damage()
    with pytest.raises(BuildDamaged) as raised:
        build.check_files()
    assert raised.value.build_id == build.build_id and isinstance(raised.value, IndexFolderError)
    assert build.build_id in str(raised.value) and expected in str(raised.value)
    assert str(build.folder) not in str(raised.value)                      # names, not absolute paths
    with pytest.raises(BuildDamaged):
        build.stored_vectors()                                               # never read after damage


def test_after_truncation_open_build_falls_back_to_the_previous_build(tvr_home, caplog):
    first, serving = _build(seed=1), _build(seed=2)
    assert reader.open_build("toy", "zero-shot").build_id == serving.build_id
    _truncate(serving.folder)
    with pytest.raises(BuildDamaged, match=serving.build_id):
        serving.check_files()
    with pytest.raises(IndexFolderError, match="vectors.npy: missing or its sha256 differs"):
        reader.verify_build(serving.folder)
    with caplog.at_level("WARNING", logger="retrieval.index"):
        reopened = reader.open_build("toy", "zero-shot")
    assert reopened.build_id == first.build_id and reopened.damage() is None
    assert f"names build {serving.build_id!r}, which cannot be used" in reopened.warning
    assert "vectors.npy" in reopened.warning and reopened.warning in caplog.text
    np.testing.assert_array_equal(reopened.stored_vectors(), _vectors(seed=1))
    with pytest.raises(IndexFolderError, match=serving.build_id):
        reader.open_build("toy", "zero-shot", fallback=False)


CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    from retrieval.index import faiss_index
    from retrieval.index.layout import VECTORS_FILE, BuildDamaged
    from retrieval.index.reader import open_build

    build = open_build("toy", "zero-shot")
    vectors = build.stored_vectors()
    assert isinstance(vectors, np.memmap), type(vectors)
    queries = np.array(vectors[:4])
    faiss_index.search(build.index, queries, 3, rerank=10, vectors=vectors)   # reads the intact map
    os.truncate(build.folder / VECTORS_FILE, 0)
    if sys.argv[1] == "guarded":
        try:
            build.check_files()
        except BuildDamaged as err:
            print("refused:", err)
            sys.exit(0)
    faiss_index.search(build.index, queries, 3, rerank=10, vectors=vectors)   # reads the truncated map
    print("read the truncated map")
""")


def test_check_files_refuses_before_a_truncated_memory_map_is_read(tvr_home):
    """In child processes (a SIGBUS would kill pytest), everything memory-mapped: unguarded, the
    search after truncation kills the process; guarded, check_files refuses first and it exits cleanly."""
    build = _build()
    env = {**os.environ, "TVR_INDEX_MMAP_GB": "0", "PYTHONPATH": str(PROJECT)}

    def child(mode):
        return subprocess.run([sys.executable, "-c", CHILD, mode], env=env, cwd=PROJECT, capture_output=True,
                              text=True, timeout=120)

    guarded = child("guarded")
    assert guarded.returncode == 0, guarded.stderr[-2000:]
    assert f"refused: index build {build.build_id} changed on disk" in guarded.stdout
    assert "vectors.npy is 0 bytes" in guarded.stdout and "read the truncated map" not in guarded.stdout

    np.save(build.folder / VECTORS_FILE, _vectors())             # the same bytes again, for the unguarded run
    unguarded = child("unguarded")
    assert unguarded.returncode == -signal.SIGBUS, (unguarded.returncode, unguarded.stderr[-2000:])


def _unchunked(queries, rows, vectors, k):
    """The re-ranking as it was: every candidate vector gathered at once ([Q, R, D])."""
    wanted = np.unique(rows[rows >= 0])
    table = np.asarray(vectors[wanted], dtype=np.float32)
    exact = np.einsum("qd,qrd->qr", queries, table[np.searchsorted(wanted, np.maximum(rows, 0))])
    exact[rows < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    scores, best = np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)
    best[~np.isfinite(scores)] = -1
    return scores, best


def test_rerank_memory_stays_under_its_cap():
    rng = np.random.default_rng(0)
    q, r, n, d = 16, 10_000, 12_000, 512
    vectors = rng.normal(size=(n, d)).astype(np.float32)
    queries = rng.normal(size=(q, d)).astype(np.float32)
    rows = rng.integers(0, n, size=(q, r))
    tracemalloc.start()
    try:
        scores, best = rerank_exact(queries, rows, vectors, 10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    scores_and_order = rows.size * (4 + 4 + 8)              # [Q, R] scores, negated, int64 order
    assert peak < 2 * RERANK_MAX_BYTES + scores_and_order, f"peak {peak / 2**20:.0f} MiB"
    want = _unchunked(queries[:2], rows[:2], vectors, 10)    # all 16 at once: a ~330 MB peak
    assert np.array_equal(scores[:2], want[0]) and np.array_equal(best[:2], want[1])


def _case(draw, integers: bool):
    """(queries [Q, D], rows [Q, R] with some -1, vectors [N, D], k, max_bytes): small integer
    values (exact scores, many ties) or Gaussian ones; max_bytes from one vector to the whole gather."""
    n, d = draw(st.integers(1, 30)), draw(st.integers(1, 24))
    q, r = draw(st.integers(1, 5)), draw(st.integers(1, 25))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    queries, vectors = (np.asarray(rng.integers(-2, 3, size=shape) if integers else rng.normal(size=shape), np.float32)
                        for shape in ((q, d), (n, d)))
    rows = rng.integers(-1, n, size=(q, r))
    return queries, rows, vectors, draw(st.integers(1, r)), draw(st.integers(1, 4 * d * q * r + 8))


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_rerank_equals_full_scoring_with_a_stable_sort(data):
    """Small integer values: every score is exact and ties are frequent; the reference scores all
    N vectors and sorts the candidates stably. Blocks never exceed the cap (one vector at least)."""
    queries, rows, vectors, k, max_bytes = _case(data.draw, integers=True)
    full = queries @ vectors.T                                                  # [Q, N]
    exact = np.where(rows >= 0, np.take_along_axis(full, np.maximum(rows, 0), 1), -np.inf).astype(np.float32)
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    want_scores, want_rows = np.take_along_axis(exact, order, 1), np.take_along_axis(rows, order, 1)
    want_rows[~np.isfinite(want_scores)] = -1
    scores, best = rerank_exact(queries, rows, vectors, k, max_bytes=max_bytes)
    assert np.array_equal(scores, want_scores) and np.array_equal(best, want_rows)
    q_step, r_step = block_shape(*rows.shape, vectors.shape[1], max_bytes)
    assert q_step * r_step * 4 * vectors.shape[1] <= max(max_bytes, 4 * vectors.shape[1])


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_rerank_in_blocks_is_bit_identical_to_the_unchunked_one(data):
    queries, rows, vectors, k, max_bytes = _case(data.draw, integers=False)
    scores, best = rerank_exact(queries, rows, vectors, k, max_bytes=max_bytes)
    want = _unchunked(queries, rows, vectors, k) if (rows >= 0).any() else None
    if want is not None:
        assert np.array_equal(scores, want[0]) and np.array_equal(best, want[1])
    else:                                                       # the old code failed on no candidate at all
        assert (best == -1).all() and np.isneginf(scores).all()
