"""Indexes at scale: memory-budget planning, factory strings, streamed builds, per-query search
parameters, tuning, partitioned (hash-sharded and zero-block) builds, memory-mapped opening."""
from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from fake_fusion_api import FakeFusion, write_dataset
from retrieval.index import faiss_index as fi
from retrieval.index import cli as index_cli, layout as index_layout, reader as index_reader, writer as index_writer
from retrieval.index import shards
from retrieval.query import search as rsearch


def _unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, k)


def test_memory_budget_picks_the_index_and_says_why():
    kind, factory, params = fi.plan_index(100_000, 512, memory_gb=1)
    assert (kind, factory) == ("flat", "Flat") and "fits" in params["reason"]
    kind, factory, params = fi.plan_index(1_000_000, 512, memory_gb=4)
    assert kind == "hnsw" and factory == "HNSW32"
    kind, factory, params = fi.plan_index(1_000_000, 512, memory_gb=2)
    assert kind == "ivfpq" and factory.endswith(",PQ64") and params["rerank"] == 100
    assert "HNSW32" in params["reason"] and "did not" in params["reason"]
    kind, factory, _ = fi.plan_index(10_000_000, 512, memory_gb=2)
    assert factory == "IVF3162_HNSW32,PQ64"
    assert fi.estimated_bytes("ivfpq", 10_000_000, 512, {"nlist": 3162, "pq": 64}) < 2 * 2**30
    with pytest.raises(fi.IndexFolderError, match="no index of 10,000,000 x 512 vectors fits 0.01 GB"):
        fi.plan_index(10_000_000, 512, memory_gb=0.01)


@pytest.mark.parametrize("factory", ["IVF16,PQ8", "HNSW16", "OPQ8,IVF8,PQ8", "IVF16,SQ8", "PQ16"])
def test_factory_strings_build_and_search(factory):
    vectors = _unit(2000, 32)
    index, kind, params = fi.build_faiss(vectors, factory=factory, use_gpu=False)
    assert kind == "factory" and params["factory"] == factory and index.ntotal == 2000
    _, rows = fi.search(index, vectors[:20], 5, nprobe=16, efSearch=64)
    assert (rows[:, 0] == np.arange(20)).mean() >= 0.8


def test_invalid_factory_is_a_clear_error():
    with pytest.raises(fi.IndexFolderError, match=r"invalid FAISS index factory string 'IVFxx,PQ3' for 32-d"):
        fi.build_faiss(_unit(100, 32), factory="IVFxx,PQ3", use_gpu=False)


def test_streamed_build_reads_batches_only():
    vectors = _unit(5000, 16)
    seen = []

    def batches():
        for s in range(0, 5000, 1000):
            seen.append(1000)
            yield vectors[s:s + 1000]

    index = fi.build_streamed(batches, vectors[:2000], "IVF32,Flat")
    assert index.ntotal == 5000 and seen == [1000] * 5
    _, rows = fi.search(index, vectors[:50], 1, nprobe=32)
    assert (rows[:, 0] == np.arange(50)).all()


def test_per_query_parameters_leave_the_index_alone_and_change_results():
    vectors, queries = _unit(4000, 32), _unit(100, 32, seed=1)
    index, _, params = fi.build_faiss(vectors, "ivf", {"nlist": 64, "nprobe": 1}, use_gpu=False)
    _, exact = _exact(vectors, queries, 10)
    _, one = fi.search(index, queries, 10)
    _, every = fi.search(index, queries, 10, nprobe=64)
    assert fi.recall_at(every, exact) == 1.0 > fi.recall_at(one, exact)
    assert faiss.extract_index_ivf(index).nprobe == 1                 # per call only
    hnsw, _, _ = fi.build_faiss(vectors, "hnsw", {"M": 4, "efConstruction": 8, "efSearch": 1}, use_gpu=False)
    _, low = fi.search(hnsw, queries, 10)
    _, high = fi.search(hnsw, queries, 10, efSearch=512)
    assert fi.recall_at(high, exact) > fi.recall_at(low, exact)


def test_rerank_from_stored_vectors_is_exact(tmp_path):
    vectors, queries = _unit(3000, 32), _unit(40, 32, seed=2)
    np.save(tmp_path / "v.npy", vectors)
    stored = np.load(tmp_path / "v.npy", mmap_mode="r")
    index, _, _ = fi.build_faiss(vectors, factory="IVF16,PQ4", use_gpu=False)
    scores, exact = _exact(vectors, queries, 10)
    _, coarse = fi.search(index, queries, 10, nprobe=16)
    got_s, got = fi.search(index, queries, 10, nprobe=16, rerank=3000, vectors=stored)
    assert fi.recall_at(coarse, exact) < 1.0
    assert (got == exact).all() and np.allclose(got_s, scores, atol=1e-5)


def test_tune_records_a_curve_and_reaches_the_target():
    vectors, queries = _unit(4000, 32), _unit(60, 32, seed=3)
    index, _, _ = fi.build_faiss(vectors, "ivf", {"nlist": 64}, use_gpu=False)
    exact = fi.exact_top(queries, (vectors[s:s + 700] for s in range(0, 4000, 700)), 10)
    assert (exact == _exact(vectors, queries, 10)[1]).all()          # chunked exact answers
    result = fi.tune(index, queries, exact, target=0.95)
    assert [c["nprobe"] for c in result["curve"]] == [1, 2, 4, 8, 16, 32, 64]
    assert result["reached"] and result["curve"][-1]["recall"] == 1.0
    chosen = next(c for c in result["curve"] if c["nprobe"] == result["chosen"]["nprobe"])
    assert chosen["recall"] >= 0.95


def test_hash_shards_merged_equal_one_exact_index():
    vectors, queries = _unit(3000, 24), _unit(50, 24, seed=4)
    ids = [f"video{i}" for i in range(3000)]
    specs = shards.plan_parts(ids, vectors, shards=4)
    assert len(specs) == 4 and sorted(np.concatenate([r for r, _ in specs]).tolist()) == list(range(3000))
    assert all(shards.shard_of(ids[r], 4) == s for s, (rows, _) in enumerate(specs) for r in rows[:5])
    parts = [shards.Part(fi.build_faiss(vectors[rows], "flat", use_gpu=False)[0], rows, None) for rows, _ in specs]
    scores, rows = fi.search(shards.PartitionedIndex(parts, 24), queries, 10)
    want_s, want = _exact(vectors, queries, 10)
    assert (rows == want).all() and np.allclose(scores, want_s, atol=1e-6)


@pytest.mark.slow
def test_one_million_generated_vectors_sharded_equal_one_index():
    vectors, queries = _unit(1_000_000, 32, seed=5), _unit(100, 32, seed=6)
    shard = np.random.default_rng(7).integers(0, 8, len(vectors))
    parts = []
    for s in range(8):
        rows = np.flatnonzero(shard == s)
        index = faiss.IndexFlatIP(32)
        index.add(vectors[rows])
        parts.append(shards.Part(index, rows, None))
    scores, rows = shards.PartitionedIndex(parts, 32).search(queries, 10)
    want_s, want = _exact(vectors, queries, 10)
    assert (rows == want).all() and np.allclose(scores, want_s, atol=1e-6)


def _m2hf_like(n: int, width: int = 64, seed: int = 0) -> np.ndarray:
    """M2HF's layout: patterns (V,A,M) (V,A) (V,M) (V) with 3+2+2+1 blocks; a video fills its own pattern's."""
    rng = np.random.default_rng(seed)
    sizes, out = (3, 2, 2, 1), np.zeros((n, 8 * width), np.float32)
    starts = np.cumsum((0,) + sizes)[:-1]
    for i, p in enumerate(rng.integers(0, 4, n)):
        out[i, starts[p] * width:(starts[p] + sizes[p]) * width] = rng.normal(size=sizes[p] * width)
    return out


def test_zero_blocks_are_not_stored_and_search_stays_exact():
    vectors = _m2hf_like(2000)
    groups = shards.zero_block_groups(vectors)
    assert len(groups) == 4 and sorted(len(c) // 64 for _, c in groups) == [1, 2, 2, 3]
    assert shards.zero_block_groups(_unit(500, 512)) is None                # dense: no partitioning
    queries = _unit(30, 512, seed=8)
    parts = [shards.Part(fi.build_faiss(np.ascontiguousarray(vectors[rows][:, cols]), "flat", use_gpu=False)[0],
                         rows, cols) for rows, cols in groups]
    scores, rows = fi.search(shards.PartitionedIndex(parts, 512), queries, 10)
    want_s, want = _exact(vectors, queries, 10)
    assert (rows == want).all() and np.allclose(scores, want_s, atol=1e-5)


@pytest.fixture
def fake(tvr_home, monkeypatch):
    fake = FakeFusion().install(monkeypatch)
    write_dataset("toy", 60)
    return fake


def _build(vectors, ids, **layout):
    info = {"extractor_ids": {}, "random_weights": True, "model": "test"}
    return index_writer.write_build("toy", "zero-shot", vectors, ids, info=info, use_gpu=False, **layout)


def test_sharded_build_in_parallel_opens_memory_mapped_and_answers_like_flat(fake, monkeypatch):
    ids = [f"v{i}" for i in range(60)]
    vectors = _unit(60, 16, seed=9)
    folder = _build(vectors, ids, shards=3, processes=2, tune_target=0.9)
    info = json.loads((folder / "info.json").read_text())
    assert info["partitions"]["count"] == 3 and info["index_type"] == "flat"
    assert info["tuning"]["curve"] and "reason" in info["params"]
    monkeypatch.setenv("TVR_INDEX_MMAP_GB", "0")                     # every index file memory-mapped
    build = index_reader.open_build("toy", "zero-shot")
    assert isinstance(build.index, shards.PartitionedIndex) and build.index.ntotal == 60
    scores, rows = fi.search(build.index, vectors[:10], 5)
    assert (rows == _exact(vectors, vectors[:10], 5)[1]).all()


def test_m2hf_layout_build_reports_bytes_per_video(fake):
    ids = [f"v{i}" for i in range(60)]
    folder = _build(_m2hf_like(60), ids)
    part = json.loads((folder / "info.json").read_text())["partitions"]
    assert part["zero_blocks"] and part["bytes_per_video_before"] == 4 * 512
    assert part["bytes_per_video_after"] < 0.5 * part["bytes_per_video_before"]


def test_budget_build_records_why_and_searches_with_overrides(fake, capsys):
    ids = [f"v{i}" for i in range(60)]
    with pytest.raises(fi.IndexFolderError, match=r"cannot train 'IVF4,PQ4' on 60 vectors: .*training points"):
        _build(_unit(60, 16), ids, factory="IVF4,PQ4")
    assert index_cli.main(["--dataset", "toy", "--no-gpu", "--factory", "nonsense"]) == 2
    assert "invalid FAISS index factory string 'nonsense'" in capsys.readouterr().err
    assert index_cli.main(["--dataset", "toy", "--no-gpu", "--factory", "IVF4,PQ4x4", "--tune", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "of the true top 10 is found (recall@10 at nprobe" in out and "target 0.9" in out
    info = index_reader.open_build("toy", "zero-shot").info
    assert info["index_type"] == "factory" and info["params"]["factory"] == "IVF4,PQ4x4"
    assert "index_factory string" in info["params"]["reason"] and info["tuning"]["curve"]
    assert info["params"]["nprobe"] == info["tuning"]["chosen"]["nprobe"]          # the tuned default
    found = rsearch.search_text("a clip of v7", "toy", "zero-shot", k=3, params={"nprobe": 4, "rerank": 60})
    assert found["results"][0]["video_id"] == "v7"
    with pytest.raises(rsearch.QueryError, match="nprobe must be a whole number"):
        rsearch.check_params({"nprobe": 0})
    with pytest.raises(rsearch.QueryError, match="unknown search parameter 'depth'"):
        rsearch.check_params({"depth": 3})


def test_m2hf_vectors_partitioned_by_availability_score_exactly():
    """The real M2HF layout (fusion/m2hf.py video_vectors / text_vectors): groups by availability
    pattern store only their own blocks, and merged top-k equals the full 8-block inner product."""
    torch = pytest.importorskip("torch")
    from test_fusion_models import make_model, text_batch, video_batch

    model = make_model("m2hf", branches=["V", "AV", "MV"])
    video = video_batch(n_videos=8, n_frames=(8, 12, 5, 9, 6, 7, 10, 4),
                        has_audio=torch.tensor([True, False, True, False, True, False, True, False]))
    video.has_motion = torch.tensor([True, True, False, False, True, True, False, False])
    with torch.no_grad():
        model.eval()
        text = model.text_vectors(model.encode_text(text_batch())).numpy()
        videos = model.video_vectors(model.encode_video(video)).numpy()
    width = videos.shape[1] // 8
    groups = shards.zero_block_groups(videos, block=width)
    assert sorted(len(c) // width for _, c in groups) == [1, 2, 2, 3]       # V; V+A, V+M; V+A+M
    stored = sum(len(r) * len(c) for r, c in groups)
    assert stored == 8 * 2 * width                                           # 2 blocks per video on average, not 8
    parts = [shards.Part(fi.build_faiss(np.ascontiguousarray(videos[r][:, c]), "flat", use_gpu=False)[0], r, c)
             for r, c in groups]
    scores, rows = shards.PartitionedIndex(parts, videos.shape[1]).search(text, 8)
    full = text @ videos.T
    assert np.allclose(scores, np.sort(full, axis=1)[:, ::-1], atol=1e-5)
    assert np.allclose(np.take_along_axis(full, rows, 1), scores, atol=1e-5)   # each row's own full score


@pytest.mark.parametrize("shards", [1, 3])
def test_model_build_streams_batches_and_equals_the_in_memory_build(fake, monkeypatch, shards):
    """python -m retrieval.index's model path: the encoder yields at most ``batch`` videos at a time,
    the index is filled at most ``batch`` vectors at a time (never the 60 at once), and the build
    answers exactly like one built from the whole array in memory."""
    added, real = [], fi._as_matrix

    def spy(vectors, what):
        out = real(vectors, what)
        if what.startswith("video vectors"):
            added.append(len(out))
        return out

    monkeypatch.setattr(fi, "_as_matrix", spy)
    folder = index_writer.build_from_model("toy", use_gpu=False, batch=16, shards=shards, store_vectors=True)
    assert [c[2] for c in fake.calls if c[0] == "video_vector_batches"] == [16, 16, 16, 12]
    assert added and max(added) <= 16 and sum(added) == 60
    assert not list(folder.parent.glob(".encoded-*"))                   # the encoded file became vectors.npy
    streamed = index_reader.open_build("toy", "zero-shot")
    assert streamed.folder == folder and streamed.info["build_options"]["shards"] == shards

    whole = fake.encode_split(None, "toy", "test")                       # the previous path: one array
    info = {"extractor_ids": {}, "random_weights": True, "model": "test"}
    reference = index_reader.verify_build(index_writer.stage_build("toy", "other", whole.video_vectors, whole.video_ids,
                                                       info=info, use_gpu=False, shards=shards))
    assert streamed.ids == reference.ids
    assert np.array_equal(streamed.stored_vectors(), whole.video_vectors)
    queries = _unit(20, 16, seed=4)
    got, want = fi.search(streamed.index, queries, 10), fi.search(reference.index, queries, 10)
    assert (got[1] == want[1]).all() and np.allclose(got[0], want[0])


def test_write_vectors_refuses_a_short_or_ragged_stream_and_leaves_no_file(tmp_path):
    path = tmp_path / "v.npy"
    index_writer.write_vectors(path, 5, iter([np.ones((3, 4)), np.zeros((2, 4))]))
    assert np.array_equal(np.load(path), np.r_[np.ones((3, 4)), np.zeros((2, 4))].astype(np.float32))
    for batches, message in (([np.ones((3, 4))], "gave 3 vectors for 5"), ([np.ones((3, 4)), np.ones((2, 3))],
                             "batch of shape"), ([], "no vectors to index")):
        with pytest.raises(fi.IndexFolderError, match=message):
            index_writer.write_vectors(tmp_path / "w.npy", 5, iter(batches))
        assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy"]


def test_encoded_vectors_debris_is_removed_only_when_no_encoder_runs(fake):
    from data import locks

    root = index_layout.index_root("toy", "zero-shot")
    root.mkdir(parents=True)
    (root / ".encoded-dead.npy.part").write_bytes(b"x")                # left by a killed python -m retrieval.index
    with locks.shared(root / index_layout.ENCODING_LOCK):                     # an encoder at work
        assert index_writer.remove_partial_builds("toy", "zero-shot") == []
    assert index_writer.remove_partial_builds("toy", "zero-shot") == [".encoded-dead.npy.part"]
    assert not (root / ".encoded-dead.npy.part").exists()


def test_reindex_memory_bench_runs_on_tiny_sizes(capsys):
    from bench import reindex_memory

    assert reindex_memory.main(["--kept", "50", "--new", "7", "--removed", "3", "--dim", "8", "--batch", "16"]) == 0
    assert "assembled 54 x 8 float32" in capsys.readouterr().out
