"""retrieval.index: FAISS types, build folders (contract D), refusals; FAISS R@K vs the full matrix."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from data.manifest import read_manifest
from data.settings import get_settings
from fake_fusion_api import write_dataset
from retrieval.index import faiss_index
from retrieval.index import cli as index_cli, layout as index_layout, reader as index_reader, writer as index_writer
from data.metrics import GroundTruth, VectorScores, evaluate_scores, text_to_video_counts
from retrieval.evaluation.ranked import counts_from_index, counts_with_rerank
from test_reindex import home  # noqa: F401 (a fixture: tiny synthetic videos, real extraction, first reindex)

INFO = {"extractor_ids": {"clip_frames": "aaa", "clip_text": "bbb"}, "random_weights": True, "model": "zero-shot"}


def _vectors(n, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_choose_type_and_params_follow_scale():
    assert faiss_index.choose_type(10_000) == "flat"
    assert faiss_index.choose_type(faiss_index.EXACT_UP_TO + 1) == "hnsw"
    assert faiss_index.choose_type(50, "ivf") == "ivf"
    with pytest.raises(faiss_index.IndexFolderError, match="unknown index type 'pq'"):
        faiss_index.choose_type(50, "pq")
    assert faiss_index.default_params("ivf", 1_000_000) == {"nlist": 4000, "nprobe": 62}
    assert faiss_index.default_params("ivf", 10_000)["nlist"] == 256          # capped at N / 39
    assert faiss_index.default_params("hnsw", 1_000_000)["efSearch"] == 128


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_each_type_finds_itself(kind):
    videos = _vectors(2000)
    index, chosen, params = faiss_index.build_faiss(videos, kind, use_gpu=False)
    assert chosen == kind and index.ntotal == 2000
    _, rows = faiss_index.search(index, videos[:50], 1)
    assert (rows[:, 0] == np.arange(50)).mean() >= 0.9


def test_exact_index_recall_equals_full_matrix_including_ties():
    rng = np.random.default_rng(3)
    videos = _vectors(60, seed=1)
    videos[10:14] = videos[10]           # four identical videos: exact ties with the ground truth
    text = (videos[rng.integers(0, 60, size=90)] + 0.3 * _vectors(90, seed=2)).astype(np.float32)
    query_rows = rng.integers(0, 60, size=90)
    query_rows[:6] = [10, 11, 12, 13, 10, 12]
    text[:6] = videos[10]                # their queries tie among the duplicates
    ids = [f"v{i}" for i in range(60)]
    expected = evaluate_scores(VectorScores(text, videos), [ids[r] for r in query_rows], ids, ks=(1, 2, 5, 10))
    index, _, _ = faiss_index.build_faiss(videos, "flat", use_gpu=False)
    for k_max in (2, 10):                # k_max = 2: the tied block crosses the search depth
        counts = counts_from_index(index, text, query_rows, k_max=k_max)
        for k in (1, 2, 5, 10):
            if k <= k_max:
                assert 100 * counts.hit_rate(k).mean() == pytest.approx(expected["t2v"][f"R@{k}"])
        assert counts.hit_rate(1)[:6] == pytest.approx([0.25] * 6)   # ties are never a full win
        assert counts.hit_rate(2)[:6] == pytest.approx([0.5] * 6)


def test_rerank_with_exact_scores_and_first_stage_recall():
    videos = _vectors(200, seed=4)
    text = videos[:40] + 0.05 * _vectors(40, seed=5)
    index, _, _ = faiss_index.build_faiss(videos, "flat", use_gpu=False)
    truth = np.arange(40)

    def score(q_idx, v_idx):             # a "fine-grained" score that differs from the coarse one
        return -np.abs(text[q_idx] @ videos[v_idx].T - 0.5)

    counts, recall = counts_with_rerank(index, text, truth, score, depth=20, chunk=7)
    assert recall == pytest.approx(100.0)
    assert counts.better.max() > 0      # the exact score re-orders the candidates
    full = text_to_video_counts(VectorScores(text, videos), GroundTruth.from_ids(
        [str(i) for i in truth], [str(i) for i in range(200)]))
    exact = -np.abs(text @ videos.T - 0.5)
    # within the 20 candidates, the true video is ranked by the exact score
    for q in range(40):
        _, cand = index.search(text[q:q + 1], 20)
        assert counts.better[q] == int((exact[q, cand[0]] > exact[q, q]).sum())
    assert full.better.sum() == 0        # coarse scores rank every true video first

    far = np.roll(truth, 1)              # true videos the coarse stage ranks low: missed at depth 3
    counts, recall = counts_with_rerank(index, text, far, score, depth=3)
    _, cand = index.search(text, 3)
    missed = np.array([f not in row for f, row in zip(far, cand)])
    assert recall == pytest.approx(100 * (1 - missed.mean())) and missed.any()
    assert (counts.hit_rate(10)[missed] == 0).all()      # a first-stage miss is never a hit


def test_write_open_and_check_build(tvr_home):
    settings = get_settings()
    ids = write_dataset("toy", 30)
    folder = index_writer.write_build("toy", "zero-shot", _vectors(30), ids, info=INFO, use_gpu=False)
    root = settings.indexes_dir / "toy" / "zero-shot"
    assert (root / "current").read_text().strip() == folder.name
    assert sorted(p.name for p in folder.iterdir()) == ["ids.json", "index.faiss", "info.json", "manifest.parquet"]
    assert not list(root.glob(".tmp-*"))
    info = json.loads((folder / "info.json").read_text())
    assert info["index_type"] == "flat" and info["dim"] == 16 and info["n_vectors"] == 30
    assert info["WARNING"].startswith("RANDOM WEIGHTS")
    build = index_reader.open_build("toy", "zero-shot")
    assert build.ids == ids and build.path_of("v3")["path"] == "videos/v3.mp4"
    manifest = read_manifest(settings.manifest_path("toy"))
    index_reader.check_build(build, extractor_ids=INFO["extractor_ids"], manifest=manifest, dim=16)

    second = index_writer.write_build("toy", "zero-shot", _vectors(30, seed=9), ids, info=INFO, use_gpu=False)
    assert (root / "current").read_text().strip() == second.name != folder.name
    assert index_reader.open_build("toy", "zero-shot").folder == second
    for _ in range(3):
        latest = index_writer.write_build("toy", "zero-shot", _vectors(30), ids, info=INFO, use_gpu=False, keep=2)
    builds = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert len(builds) == 2 and builds[-1] == latest.name == (root / "current").read_text().strip()


def test_index_output_says_in_plain_words_what_the_build_means(tvr_home, monkeypatch, capsys):
    """How a query is answered, the recall to expect and the memory, not a dict of FAISS names."""
    from fake_fusion_api import FakeFusion

    FakeFusion().install(monkeypatch)
    write_dataset("toy", 200)
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    out = capsys.readouterr().out
    assert "search: exact: every query is compared with every video" in out
    assert "recall: 1.0, the true top 10 (exact search)" in out
    assert re.search(r"memory: \d+\.\d\d MB of index, read into memory by search and the service\n", out)
    assert index_cli.main(["--dataset", "toy", "--no-gpu", "--index-type", "ivf", "--tune", "0.9"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"search: approximate: the videos are grouped in 5 clusters and a query looks only into the "
                     r"\d closest \(about \d+% of the videos\)", out)
    assert re.search(r"recall: about \d\.\d{3} of the true top 10 is found \(recall@10 at nprobe \d, [\d.]+ ms per "
                     r"query; measured on 200 held-out queries, target 0.9\)", out)
    assert re.search(r"MB of stored vectors \(vectors.npy, memory-mapped\)", out) and "{'" not in out


def test_refusals(tvr_home):
    settings = get_settings()
    ids = write_dataset("toy", 12)
    with pytest.raises(faiss_index.IndexFolderError, match=r"no index for dataset 'toy', run 'zero-shot'.*python -m retrieval.index"):
        index_reader.open_build("toy", "zero-shot")
    index_writer.write_build("toy", "zero-shot", _vectors(12), ids, info=INFO, use_gpu=False)
    build = index_reader.open_build("toy", "zero-shot")
    manifest = read_manifest(settings.manifest_path("toy"))
    other = {**INFO["extractor_ids"], "clip_text": "zzz"}
    with pytest.raises(faiss_index.IndexFolderError, match=r"other extractor ids.*clip_text: index bbb, model zzz"):
        index_reader.check_build(build, extractor_ids=other, manifest=manifest, dim=16)
    with pytest.raises(faiss_index.IndexFolderError, match="dimension mismatch: the model's query vectors have 32"):
        index_reader.check_build(build, extractor_ids=INFO["extractor_ids"], manifest=manifest, dim=32)
    assert index_reader.rebuild_reason("toy", "zero-shot") is None
    assert "other extractor ids" in index_reader.rebuild_reason("toy", "zero-shot", extractor_ids=other)
    assert "no index for dataset 'toy', run 'meanP-1'" in index_reader.rebuild_reason("toy", "meanP-1")
    write_dataset("toy", 12, path_suffix="-moved")      # same ids, other paths: a new manifest
    assert "covers manifest" in index_reader.rebuild_reason("toy", "zero-shot")
    changed = read_manifest(settings.manifest_path("toy"))
    with pytest.raises(faiss_index.IndexFolderError, match="covers manifest .* but the dataset's manifest is now"):
        index_reader.check_build(build, extractor_ids=INFO["extractor_ids"], manifest=changed, dim=16)
    with pytest.raises(faiss_index.IndexFolderError, match="dimension mismatch: query vectors have 8"):
        faiss_index.search(build.index, np.zeros((1, 8), np.float32), 3)
    with pytest.raises(faiss_index.IndexFolderError, match="not in .*manifest.parquet"):
        index_writer.write_build("toy", "zero-shot", _vectors(2), ["v1", "nope"], info=INFO, use_gpu=False)
    with pytest.raises(faiss_index.IndexFolderError, match="row 1 holds NaN"):
        faiss_index.build_faiss(np.array([[1.0, 0.0], [np.nan, 1.0]], np.float32), use_gpu=False)


# ---------------------------------------------------------------------------------------------
# Durable builds: checksums, verification, kill -9 at every step, damaged `current`
# ---------------------------------------------------------------------------------------------
def _still_working(tmp_path, capsys, expect_build: str, note: str | None, degraded: bool = False) -> None:
    """search, evaluate and the service answer from ``expect_build``; ``note`` in the search note,
    and the service's /healthz status is degraded (a fallback build) or ok."""
    from retrieval.evaluation import evaluate
    from retrieval.query import cli as search
    from retrieval.query.search import Searcher
    from retrieval.service.core import SearchService

    capsys.readouterr()
    assert search.main(["a clip of v3", "--dataset", "toy", "-k", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["index"]["build_id"] == expect_build and found["results"][0]["video_id"] == "v3"
    assert (note is None and "note" not in found) or (note is not None and note in found["note"])
    assert evaluate.main(["--run", "zero-shot", "--dataset", "toy", "--index-type", "flat",
                          "--json", str(tmp_path / "eval.json")]) == 0
    service = SearchService(Searcher("toy"), poll_s=0)
    try:
        health = service.health()
        assert health["build_id"] == expect_build and service.query("a clip of v5", 1)["results"][0]["video_id"] == "v5"
        assert health["status"] == ("degraded" if degraded else "ok")
        assert not degraded or note in health["problem"]
    finally:
        service.close()


def test_build_records_checksums_and_verify_catches_damage(tvr_home):
    ids = write_dataset("toy", 20)
    folder = index_writer.write_build("toy", "zero-shot", _vectors(20), ids, info=INFO, use_gpu=False, store_vectors=True)
    info = json.loads((folder / "info.json").read_text())
    assert sorted(info["checksums"]) == ["ids.json", "index.faiss", "manifest.parquet", "vectors.npy"]
    assert index_reader.verify_build(folder).ids == ids
    data = bytearray((folder / "index.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF                      # one flipped byte: FAISS still loads it
    (folder / "index.faiss").write_bytes(bytes(data))
    import faiss
    assert faiss.read_index(str(folder / "index.faiss")).ntotal == 20
    with pytest.raises(faiss_index.IndexFolderError, match=r"index.faiss: missing or its sha256 differs"):
        index_reader.verify_build(folder)
    with pytest.raises(faiss_index.IndexFolderError, match="sha256 differs"):
        index_writer.publish_build(folder)                   # a damaged build is never published


DAMAGE = {
    "zeroed tail of index.faiss": lambda b: b.joinpath("index.faiss").write_bytes(
        b.joinpath("index.faiss").read_bytes()[:-9] + b"\x00" * 9),
    "truncated ids.json": lambda b: b.joinpath("ids.json").write_text('["v0", "v1"'),
    "missing manifest snapshot": lambda b: b.joinpath("manifest.parquet").unlink(),
    "missing build folder": lambda b: __import__("shutil").rmtree(b),
    "no current pointer": lambda b: b.parent.joinpath("current").unlink(),
    "garbage current pointer": lambda b: b.parent.joinpath("current").write_text("../../etc\n"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_current_falls_back_to_a_verified_build_and_the_next_build_repairs_it(
        tvr_home, monkeypatch, tmp_path, capsys, damage):
    from fake_fusion_api import FakeFusion

    FakeFusion().install(monkeypatch)
    write_dataset("toy", 20)
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    first = index_reader.open_build("toy", "zero-shot").build_id
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    second = index_reader.open_build("toy", "zero-shot")
    DAMAGE[damage](second.folder)
    expected = second.build_id if "pointer" in damage else first    # the newest build that verifies
    build = index_reader.open_build("toy", "zero-shot")
    assert build.build_id == expected and "answering from the newest verified build" in build.warning
    with pytest.raises(faiss_index.IndexFolderError):
        index_reader.open_build("toy", "zero-shot", fallback=False)
    assert "answering from the newest verified build" in index_reader.rebuild_reason("toy", "zero-shot")
    _still_working(tmp_path, capsys, expected, "answering from the newest verified build", degraded=True)
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0          # the next build repairs `current`
    repaired = index_reader.open_build("toy", "zero-shot", fallback=False)
    assert repaired.build_id not in (first, second.build_id) and repaired.warning is None
    assert index_reader.rebuild_reason("toy", "zero-shot") is None
    _still_working(tmp_path, capsys, repaired.build_id, None)


def test_no_verified_build_at_all_is_refused_clearly(tvr_home):
    ids = write_dataset("toy", 8)
    folder = index_writer.write_build("toy", "zero-shot", _vectors(8), ids, info=INFO, use_gpu=False)
    (folder / "ids.json").write_text("[]")
    with pytest.raises(faiss_index.IndexFolderError, match=r"names build .* cannot be used.*and no other build verifies"):
        index_reader.open_build("toy", "zero-shot")


@pytest.mark.slow
@pytest.mark.parametrize("step", index_layout.BUILD_STEPS)
def test_kill_9_at_every_build_step_leaves_a_verified_build(tvr_home, monkeypatch, tmp_path, capsys, step):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from fake_fusion_api import FakeFusion

    FakeFusion().install(monkeypatch)
    write_dataset("toy", 20)
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    first = index_reader.open_build("toy", "zero-shot").build_id
    write_dataset("toy", 24)                                   # the killed build would index 24 videos
    tests = Path(__file__).parent
    env = {**os.environ, "TVR_INDEX_CRASH_AT": step, "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}"}
    child = subprocess.run([sys.executable, str(tests / "index_build_child.py")], env=env, timeout=300,
                           capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    build = index_reader.open_build("toy", "zero-shot", fallback=False)      # `current` is always usable
    published = index_layout.BUILD_STEPS.index(step) >= index_layout.BUILD_STEPS.index("pointer-written")
    assert (build.build_id != first and len(build.ids) == 24) if published else build.build_id == first
    _still_working(tmp_path, capsys, build.build_id, None if published else "stale index")
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0           # and the next build works
    assert len(index_reader.open_build("toy", "zero-shot", fallback=False).ids) == 24


@pytest.mark.slow
def test_reindex_repairs_a_damaged_current_even_with_nothing_new(home, capsys):  # noqa: F811 (fixture)
    """Real extraction and zero-shot model (tests/test_reindex.py's fixture): `current` damaged while
    the fallback build already covers the manifest; the scheduled re-index still rebuilds."""
    from retrieval.query.search import search_text
    from retrieval.reindex import run as rx

    home.manifest(home.ids[:11])
    assert rx.reindex("syn").status == "rebuilt"
    second = index_reader.open_build("syn", "zero-shot").build_id
    home.manifest(home.ids[:10])
    assert rx.reindex("syn").status == "rebuilt"
    third = index_reader.open_build("syn", "zero-shot")
    data = bytearray((third.folder / "index.faiss").read_bytes())
    data[-5] ^= 0xFF
    (third.folder / "index.faiss").write_bytes(bytes(data))
    home.manifest(home.ids[:11])                                  # what the fallback build covers
    fallback = index_reader.open_build("syn", "zero-shot")
    assert fallback.build_id == second and "sha256 differs" in fallback.warning
    found = search_text("a red circle", "syn", k=3)
    assert found["index"]["build_id"] == second and "newest verified build" in found["note"]
    result = rx.reindex("syn")
    assert result.status == "rebuilt" and result.n_indexed == 11
    repaired = index_reader.open_build("syn", "zero-shot", fallback=False)
    assert repaired.build_id == result.build_id and repaired.warning is None
