"""Scheduled re-indexing (retrieval.reindex, flows/reindex.py) on a tiny synthetic dataset.

Real extraction (tiny random CLIP, clip_frames + clip_text) and the real zero-shot model: videos
added to the manifest are the only ones decoded and encoded, a removed video leaves the search
results, a replaced file is re-extracted, nothing new means no model work at all, and a rebuild
killed before its pointer swap leaves the old index answering.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_extract_support import spy_encoded_captions, tiny_config

from data.fingerprint import caption_digest
from data.prepare import prepare
from data.settings import get_settings
from data.store import FeatureSet
from extractors import reader as extract_reader
from extractors import runner as extract_runner
from extractors.runner import extract_dataset
from fusion.features import load_features
from retrieval.index.faiss_index import search as index_search
from retrieval.index.reader import open_build
from retrieval.query.search import search_text
from retrieval.reindex import cli as reindex_cli
from retrieval.reindex import run as rx

DS = "syn"
PROJECT = Path(__file__).resolve().parents[1]
MODALITIES = ("clip_frames", "clip_text")


@pytest.fixture
def home(tiny_synthetic, tvr_home, tmp_path):
    """A private copy of the 16 tiny synthetic videos, a manifest of the first 10, their features
    (tiny random CLIP) and a first reindex. Returns a helper namespace."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path / "media"
    shutil.copytree(tiny_synthetic / "videos", folder / "videos")
    lines = [json.loads(line) for line in (tiny_synthetic / "annotations.jsonl").read_text().splitlines() if line]

    class Home:
        root = tvr_home
        media = folder
        records = lines
        ids = [r["video_id"] for r in lines]

        @staticmethod
        def manifest(ids, extra=()):
            ann = folder / "annotations.jsonl"
            chosen = [r for r in lines if r["video_id"] in set(ids)] + list(extra)
            ann.write_text("".join(json.dumps(r) + "\n" for r in chosen))
            prepare("synthetic", ann, folder, name=DS)

    Home.manifest(Home.ids[:10])
    extract_dataset(DS, tiny_config(tmp_path, modalities=MODALITIES), shard_size=8)
    first = rx.reindex(DS, shard_size=8)
    assert first.status == "rebuilt" and first.n_indexed == 10 and first.added == 10
    assert not list((tvr_home / "indexes" / DS / "zero-shot").glob(".encoded-*"))   # renamed to vectors.npy
    Home.first = first
    yield Home
    torch.set_num_threads(threads)


def current_build_id() -> str:
    return open_build(DS, "zero-shot").info["build_id"]


def test_added_videos_are_the_only_ones_extracted_and_encoded(home, decoded, monkeypatch):
    fusion_api = rx.fusion_api()
    encoded: list[str] = []
    real_encode = fusion_api.video_id_vector_batches

    def spy(loaded, dataset, ids, **kw):
        encoded.extend(ids)
        return real_encode(loaded, dataset, ids, **kw)

    monkeypatch.setattr(fusion_api, "video_id_vector_batches", spy)
    old = open_build(DS, "zero-shot")
    old_vectors = np.array(old.stored_vectors())
    home.manifest(home.ids)                                   # 6 more videos
    result = rx.reindex(DS, shard_size=8)
    new = open_build(DS, "zero-shot")
    added = home.ids[10:]
    assert result.status == "rebuilt" and (result.added, result.reused, result.removed) == (6, 10, 0)
    assert sorted(decoded) == sorted(added) and sorted(encoded) == sorted(added)
    assert result.extraction["clip_frames"]["done"] == 6 and result.extraction["clip_frames"]["skipped"] == 0
    assert new.ids == home.ids and new.index.ntotal == 16 and new.info["build_id"] != old.info["build_id"]
    assert (old.folder / "index.faiss").is_file()                # the old build stays beside the new one
    # reused rows are the old vectors; every vector equals the contract's whole-split encoding
    vectors = np.array(new.stored_vectors())
    np.testing.assert_array_equal(vectors[:10], old_vectors)
    loaded = rx.load("zero-shot", DS)
    scratch = {vid: vec for split in ("train", "val", "test")
               for enc in [fusion_api.encode_split(loaded, DS, split, captions="first")]
               for vid, vec in zip(enc.video_ids, enc.video_vectors)}
    assert sorted(scratch) == sorted(home.ids)
    np.testing.assert_allclose(vectors, np.stack([scratch[v] for v in home.ids]), atol=1e-5)
    np.testing.assert_allclose(new.index.reconstruct_n(0, 16), vectors, atol=1e-6)
    assert "RANDOM WEIGHTS" in "\n".join(result.lines()) and result.to_dict()["WARNING"]


def test_removed_video_is_gone_from_search(home, decoded):
    gone = home.ids[3]
    caption = home.records[3]["captions"][0]
    before = search_text(caption, DS, k=10)
    assert gone in [r["video_id"] for r in before["results"]]      # 10 videos, k = 10: all of them
    home.manifest([v for v in home.ids[:10] if v != gone])
    result = rx.reindex(DS)
    assert (result.status, result.removed, result.reused, result.encoded) == ("rebuilt", 1, 9, 0)
    assert decoded == [] and result.extraction == {}
    after = search_text(caption, DS, k=10)
    assert len(after["results"]) == 9 and gone not in [r["video_id"] for r in after["results"]]
    assert after["index"]["build_id"] == result.build_id and gone not in open_build(DS, "zero-shot").ids


def test_replaced_file_is_re_extracted_and_re_encoded(home, decoded):
    target, source = home.ids[2], home.ids[5]
    replace_file(home, target, source)                                   # new content, same name
    result = rx.reindex(DS)
    assert (result.status, result.changed, result.added, result.reused) == ("rebuilt", 1, 0, 9)
    assert decoded == [target] and result.encoded == 1
    frames = FeatureSet(next((get_settings().features_dir / DS / "clip_frames").iterdir())).read()
    rows = {vid: frames.row(i) for i, vid in enumerate(frames.video_ids)}
    assert frames.video_ids.count(target) == 1                           # newest row wins
    np.testing.assert_allclose(rows[target], rows[source], atol=1e-6)     # the copied content's features
    build = open_build(DS, "zero-shot")
    vectors = np.array(build.stored_vectors())
    np.testing.assert_allclose(vectors[build.ids.index(target)], vectors[build.ids.index(source)], atol=1e-5)


def test_nothing_new_does_no_model_work(home, monkeypatch):
    # a video whose file is missing: its extraction fails once, then it is not retried every day
    ghost = {**home.records[0], "video_id": "ghost", "video": "videos/ghost.mp4"}
    home.manifest(home.ids[:10], extra=[ghost])
    second = rx.reindex(DS)
    assert (second.status, second.added, second.without_features, second.n_indexed) == ("rebuilt", 1, 1, 10)
    assert second.extraction["clip_frames"]["failed"] == 1
    build_id = current_build_id()

    def forbidden(*args, **kwargs):
        raise AssertionError("model or decoder work during a reindex with nothing new")

    monkeypatch.setattr(torch.nn.Module, "__call__", forbidden)
    monkeypatch.setattr(extract_reader, "stream_video", forbidden)
    monkeypatch.setattr(extract_runner, "extract_shard", forbidden)
    third = rx.reindex(DS)
    assert (third.status, third.added, third.changed, third.removed, third.encoded) == ("up-to-date", 0, 0, 0, 0)
    assert third.reused == 10 and third.without_features == 1 and third.build_id == build_id == current_build_id()
    assert "nothing new" in third.message


def test_flow_fn_and_cli(home, capsys):
    from flows.reindex import reindex_flow

    home.manifest(home.ids[:12])
    summary = reindex_flow.fn(DS, shard_size=8)
    assert summary["status"] == "rebuilt" and summary["added"] == 2 and summary["random_weights"]
    assert summary["WARNING"].startswith("RANDOM WEIGHTS")
    assert reindex_flow.fn(DS)["status"] == "up-to-date"
    assert reindex_cli.main([DS, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "up-to-date"
    assert reindex_cli.main([DS, "--run", "no-such-run"]) == 2
    assert "no run 'no-such-run'" in capsys.readouterr().err


def test_dataset_without_manifest_or_features_ends_cleanly(tvr_home, tiny_synthetic, capsys):
    from flows.reindex import reindex_flow

    summary = reindex_flow.fn("msrvtt")
    assert summary["status"] == "nothing-to-index" and "nothing to index" in summary["message"]
    assert reindex_cli.main(["msrvtt"]) == 0 and "nothing to index" in capsys.readouterr().out
    prepare("synthetic", tiny_synthetic / "annotations.jsonl", tiny_synthetic, name="fresh")
    fresh = rx.reindex("fresh")
    assert fresh.status == "not-extracted" and "python -m flows.extract fresh" in fresh.message
    assert not (tvr_home / "indexes" / "fresh").exists()


def test_index_built_without_state_is_fully_encoded_once(home):
    from retrieval.index.writer import build_from_model

    build_from_model(DS, use_gpu=False)                  # python -m retrieval.index: no per-video state
    assert open_build(DS, "zero-shot").video_state() is None
    result = rx.reindex(DS)
    assert (result.status, result.encoded, result.reused, result.added) == ("rebuilt", 10, 0, 0)
    assert "no per-video state" in result.vector_reuse and result.extraction["clip_frames"]["skipped"] == 10
    assert rx.reindex(DS).status == "up-to-date"


def test_reindex_keeps_the_serving_builds_index_options(home, capsys):
    """A build made with a memory budget and shards is rebuilt by the nightly re-index with the same
    options (read from its info.json); options given to the re-index replace them."""
    from retrieval.index.cli import main as index_main

    assert index_main(["--dataset", DS, "--no-gpu", "--memory-gb", "2", "--shards", "4", "--batch", "4"]) == 0
    home.manifest(home.ids[:12])
    nightly = rx.reindex(DS)
    info = open_build(DS, "zero-shot").info
    assert nightly.status == "rebuilt" and info["partitions"]["shards"] == 4
    assert info["build_options"] == {"index_type": "auto", "memory_gb": 2.0, "factory": None, "shards": 4,
                                     "tune_target": None}
    assert "GB budget" in info["params"]["reason"] and "memory_gb 2.0, shards 4" in "\n".join(nightly.lines())
    reshard = rx.reindex(DS, shards=2, tune_target=0.9)                 # nothing new, other options: rebuilt
    info = open_build(DS, "zero-shot").info
    assert reshard.status == "rebuilt" and info["partitions"]["shards"] == 2 and info["tuning"]["target"] == 0.9
    assert info["build_options"]["memory_gb"] == 2.0                     # the budget is kept
    assert reindex_cli.main([DS, "--factory", "Flat"]) == 0                       # a new index choice replaces the budget
    options = open_build(DS, "zero-shot").info["build_options"]
    assert (options["factory"], options["memory_gb"], options["shards"]) == ("Flat", None, 2)
    assert rx.reindex(DS).status == "up-to-date"                         # the same options: nothing to do
    assert reindex_cli.main([DS, "--shards", "0"]) == 2 and "--shards must be at least 1" in capsys.readouterr().err


@pytest.mark.slow
def test_flow_on_dask_builds_the_shards_as_tasks_and_answers_like_one_index(home, tmp_path, monkeypatch):
    """The reindex flow on a local Dask cluster of 2 workers builds each part of a sharded build as an
    ``index-part`` task on a worker; the merged search equals one exact index over the same vectors."""
    import dask
    import faiss
    from prefect.testing.utilities import prefect_test_harness

    from flows.reindex import reindex_flow
    from flows.runners import task_runner

    counts = tmp_path / "counts"
    counts.mkdir()
    monkeypatch.setenv("TVR_TEST_COUNTS_DIR", str(counts))
    home.manifest(home.ids[:12])
    preload = {"distributed.worker.preload": [str(Path(__file__).with_name("dask_build_counter.py"))]}
    with prefect_test_harness(server_startup_timeout=120), dask.config.set(preload):
        summary = reindex_flow.with_options(task_runner=task_runner(address="", local_workers=2))(DS, shards=3)
    assert summary["status"] == "rebuilt" and summary["n_indexed"] == 12
    build = open_build(DS, "zero-shot")
    assert build.info["partitions"]["shards"] == 3 and build.info["partitions"]["count"] >= 2
    per_worker = [json.loads(f.read_text()) for f in counts.glob("*.json")]
    assert sum(c["parts"] for c in per_worker) == build.info["partitions"]["count"], per_worker
    vectors = np.ascontiguousarray(build.stored_vectors())
    single = faiss.IndexFlatIP(vectors.shape[1])
    single.add(vectors)
    want_scores, want_rows = single.search(vectors, 5)
    scores, rows = index_search(build.index, vectors, 5)
    assert (rows == want_rows).all() and np.allclose(scores, want_scores, atol=1e-5)


def test_busy_lock_and_partial_build_debris(home):
    root = home.root / "indexes" / DS / "zero-shot"
    (root / ".tmp-20260101T000000000000Z-dead").mkdir()   # left by a writer killed mid-write
    (root / ".encoded-dead-new.npy.part").write_bytes(b"x")    # left by a reindex killed while encoding
    with rx.locks.try_exclusive(root / ".reindex.lock") as held:
        assert held
        busy = rx.reindex(DS)
        assert busy.status == "busy" and "another reindex" in busy.message
        assert (root / ".tmp-20260101T000000000000Z-dead").is_dir()
    assert rx.reindex(DS).status == "up-to-date"
    assert not (root / ".tmp-20260101T000000000000Z-dead").exists()
    assert not (root / ".encoded-dead-new.npy.part").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as done:
        reindex_cli.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--run" in out and "--index-type" in out and "--shard-size" in out and "--batch" in out
    assert reindex_cli.main(["syn", "--batch", "0"]) == 2
    assert "error: batch size must be at least 1, got 0" in capsys.readouterr().err


def test_make_plan_compares_path_and_fingerprint():
    before = {"a": (("a.mp4", "10-1-x"), True), "b": (("b.mp4", "10-1-x"), True), "c": (("c.mp4", "10-1-x"), True),
              "d": (("d.mp4", "10-1-x"), False), "e": (("e.mp4", "missing"), False)}
    now = {"a": ("a.mp4", "10-1-x"), "b": ("b.mp4", "10-1-y"), "c": ("c2.mp4", "10-1-x"), "d": ("d.mp4", "10-1-x"),
           "e": ("e.mp4", "missing"), "f": ("f.mp4", "5-5-z")}
    plan = rx.make_plan(now, before, lambda ids: {"d"} & set(ids))
    assert (plan.added, plan.changed, plan.removed) == (["f"], ["b", "c"], [])
    assert (plan.reused, plan.retry, plan.unindexable) == (["a"], ["d"], ["e"])
    assert plan.to_encode == ["f", "b", "c", "d"]
    gone = rx.make_plan({"a": ("a.mp4", "10-1-x")}, before, lambda ids: set())
    assert gone.removed == ["b", "c", "d", "e"] and gone.empty is False


def replace_file(home, target: str, source: str) -> None:
    """Overwrite ``target``'s video file with ``source``'s content (same name, new size / mtime)."""
    path = home.media / "videos" / f"{target}.mp4"
    shutil.copyfile(home.media / "videos" / f"{source}.mp4", path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))          # mtime moves even on coarse clocks


@pytest.mark.slow
@pytest.mark.parametrize("stage, change", [("extracted", "added"), ("staged", "replaced")])
def test_killed_rebuild_leaves_the_old_index_answering(home, tmp_path, stage, change):
    """Kill the rebuild after its extraction, or after its new build is written but before the swap."""
    old_id = current_build_id()
    caption = home.records[2]["captions"][0]
    if change == "added":
        home.manifest(home.ids[:13])                               # 3 new videos
    else:
        replace_file(home, home.ids[2], home.ids[5])                # manifest unchanged
    marker = tmp_path / "paused"
    env = {**os.environ, "TVR_HOME": str(home.root), rx.PAUSE_ENV: f"{stage}:{marker}",
           "PYTHONPATH": str(PROJECT), "OMP_NUM_THREADS": "1"}
    log_file = tmp_path / "reindex.log"
    with open(log_file, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "retrieval.reindex", DS, "--threads", "1"], cwd=PROJECT,
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 240
        while not marker.exists():
            assert proc.poll() is None, log_file.read_text()[-3000:]
            assert time.time() < deadline, "the reindex subprocess never reached its pause point"
            time.sleep(0.2)
        # mid-rebuild: the old build is current and answers queries
        assert current_build_id() == old_id
        old = open_build(DS, "zero-shot")
        loaded = rx.load("zero-shot", DS)
        scores, rows = index_search(old.index, rx.fusion_api().encode_queries(loaded, [caption]), 13)
        assert sorted(old.ids[r] for r in rows[0]) == sorted(home.ids[:10])
        if change == "replaced":                                    # the manifest did not move: search_text too
            found = search_text(caption, DS, k=3)
            assert found["index"]["build_id"] == old_id and len(found["results"]) == 3
        if stage == "staged":                                       # the new build is complete, not current
            assert len([p for p in old.folder.parent.iterdir() if p.is_dir() and not p.name.startswith(".")]) == 2
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert current_build_id() == old_id
    again = rx.reindex(DS)
    assert again.status == "rebuilt" and current_build_id() == again.build_id != old_id
    expected = (3, 0, 10) if change == "added" else (0, 1, 9)
    assert (again.added, again.changed, again.reused) == expected
    found = search_text(caption, DS, k=13)
    assert len(found["results"]) == (13 if change == "added" else 10)
    assert found["index"]["build_id"] == again.build_id
    root = home.root / "indexes" / DS / "zero-shot"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_replaced_video_and_corrected_caption_are_the_only_work(home, decoded, tmp_path, monkeypatch):
    """Replace one file and correct one caption, re-prepare, extract: exactly that video's frames and
    exactly that caption are extracted again (new values checked: a fresh encoding of the new text);
    the other captions' rows keep their values; the next reindex serves the new vectors."""
    import pyarrow.dataset as ds

    target, source, fixed = home.ids[2], home.ids[5], home.ids[3]
    features = get_settings().features_dir / DS
    frames_dir = next((features / "clip_frames").iterdir())
    text_dir = next((features / "clip_text").iterdir())

    def text_rows():
        t = FeatureSet(text_dir).read()
        return {(vid, ci): (cap, t.row(i).copy()) for i, (vid, ci, cap) in
                enumerate(zip(t.video_ids, t.column("caption_index"), t.column("caption")))}

    text_before = text_rows()
    frames_before = FeatureSet(frames_dir).read()
    encoded = spy_encoded_captions(monkeypatch)
    replace_file(home, target, source)
    new_text = "a corrected caption about something else entirely"
    home.records[3]["captions"][0] = new_text
    n_captions = len(home.records[3]["captions"])
    home.manifest(home.ids[:10])                                          # data.prepare again
    config = tiny_config(tmp_path, modalities=MODALITIES)
    counts = extract_dataset(DS, config, shard_size=8)
    assert decoded == [target]                                            # one decode: the replaced file
    assert encoded == [new_text]                                          # one caption encoded: the new one
    assert (counts["clip_frames"].done, counts["clip_frames"].skipped) == (1, 9)
    assert (counts["clip_text"].done, counts["clip_text"].skipped) == (1, 9)   # one video's rows written
    assert counts["clip_text"].kept == n_captions - 1                    # its other captions kept as stored
    frames = FeatureSet(frames_dir).read()
    rows = {vid: frames.row(i) for i, vid in enumerate(frames.video_ids)}
    old_rows = {vid: frames_before.row(i) for i, vid in enumerate(frames_before.video_ids)}
    np.testing.assert_allclose(rows[target], rows[source], atol=1e-6)     # the new content's features
    assert not np.allclose(old_rows[target][:1], rows[target][:1])
    for vid in home.ids[:10]:
        if vid != target:
            np.testing.assert_array_equal(rows[vid], old_rows[vid])
    text_after = text_rows()
    assert text_after.keys() == text_before.keys()
    new_caption, new_values = text_after[(fixed, 0)]
    assert new_caption == new_text
    assert new_values.shape != text_before[(fixed, 0)][1].shape or not np.allclose(new_values, text_before[(fixed, 0)][1])
    fresh = next(e for e in config.build() if e.modality == "clip_text").encode([new_text])[0][0]
    np.testing.assert_allclose(new_values, fresh, atol=1e-6)              # the new text's own encoding
    stored = FeatureSet(text_dir).read([fixed])                            # each row: its own caption's digest
    assert stored.column("fingerprint") == [caption_digest(i, c) for i, c in enumerate(home.records[3]["captions"])]
    for key, (caption, values) in text_before.items():
        if key != (fixed, 0):                                             # the other captions: the same rows
            assert text_after[key][0] == caption
            np.testing.assert_array_equal(text_after[key][1], values)
    feats = load_features(DS, MODALITIES)                                 # what training and evaluation read
    own = [c for c, v in zip(feats.captions, feats.caption_video.tolist()) if feats.video_ids[v] == fixed]
    assert own == home.records[3]["captions"]
    # at rest a plain glob, read without project code, holds exactly one current row per video / caption
    plain_frames = ds.dataset(sorted(frames_dir.glob("part-*.parquet"))).to_table(columns=["video_id"])
    assert sorted(plain_frames.column("video_id").to_pylist()) == sorted(home.ids[:10])
    plain_text = ds.dataset(sorted(text_dir.glob("part-*.parquet"))).to_table(columns=["video_id", "caption_index"])
    keys = list(zip(*(plain_text.column(c).to_pylist() for c in ("video_id", "caption_index"))))
    assert sorted(keys) == sorted(text_before)
    result = rx.reindex(DS)
    assert (result.status, result.changed, result.added, result.encoded) == ("rebuilt", 1, 0, 1)
    build = open_build(DS, "zero-shot")
    vectors = np.array(build.stored_vectors())
    np.testing.assert_allclose(vectors[build.ids.index(target)], vectors[build.ids.index(source)], atol=1e-5)


@pytest.mark.parametrize("shards", [1, 2])
def test_reindex_streams_batches_and_equals_the_in_memory_assembly(home, monkeypatch, shards):
    """With ``batch=4`` over 15 videos (9 kept, 6 new, 1 removed): the encoder yields at most 4
    new vectors at a time, the assembly reads at most 4 kept rows and writes at most 4 rows at a
    time, the index is filled at most 4 vectors at a time, and the build equals (ids, vectors,
    search results) one made from the whole array assembled in memory, as the re-index did before."""
    from retrieval.index import faiss_index as fi
    from retrieval.index import layout as index_layout, reader as index_reader, writer as index_writer

    old = open_build(DS, "zero-shot")
    old_vectors, old_row = np.array(old.stored_vectors()), {v: i for i, v in enumerate(old.ids)}
    fusion_api = rx.fusion_api()
    sizes: dict[str, list[int]] = {"encoded": [], "kept": [], "assembled": [], "added": []}
    real_encode, real_write, real_matrix, real_stored = (fusion_api.video_id_vector_batches, rx.write_vectors,
                                                         fi._as_matrix, index_layout.IndexBuild.stored_vectors)

    def encode_spy(loaded, dataset, ids, **kw):
        found, batches = real_encode(loaded, dataset, ids, **kw)
        return found, (sizes["encoded"].append(len(b)) or b for b in batches)

    def write_spy(path, count, batches, on_batch=None):
        name = "assembled" if not path.name.endswith("-new.npy") else "written new"
        return real_write(path, count, (sizes.setdefault(name, []).append(len(b)) or b for b in batches), on_batch)

    def matrix_spy(vectors, what):
        out = real_matrix(vectors, what)
        if what.startswith("video vectors"):
            sizes["added"].append(len(out))
        return out

    class Recorded:                                   # the previous build's memory map, reads recorded
        def __init__(self, array):
            self.array, self.shape = array, array.shape

        def __getitem__(self, rows):
            out = self.array[rows]
            sizes["kept"].append(len(out))
            return out

    def stored_spy(build):
        vectors = real_stored(build)
        return None if vectors is None else Recorded(vectors)

    home.manifest(home.ids[1:])                                   # 6 more videos, the first one removed
    with monkeypatch.context() as spies:
        spies.setattr(fusion_api, "video_id_vector_batches", encode_spy)
        spies.setattr(rx, "write_vectors", write_spy)
        spies.setattr(fi, "_as_matrix", matrix_spy)
        spies.setattr(index_layout.IndexBuild, "stored_vectors", stored_spy)
        result = rx.reindex(DS, shard_size=8, batch=4, shards=shards)
    assert (result.status, result.reused, result.encoded, result.removed) == ("rebuilt", 9, 6, 1)
    assert sizes["encoded"] == [4, 2] and sizes["written new"] == [4, 2]
    assert sizes["assembled"] == [4, 4, 4, 3] and sum(sizes["kept"]) == 9 and max(sizes["kept"]) <= 4
    assert sizes["added"] and max(sizes["added"]) <= 4 and sum(sizes["added"]) == 15
    root = home.root / "indexes" / DS / "zero-shot"
    assert not list(root.glob(".encoded-*"))                      # the assembled file became vectors.npy

    # the previous re-index: kept rows of the old vectors and one whole-array encoding, in memory
    new = open_build(DS, "zero-shot")
    fresh, fresh_ids = fusion_api.encode_video_ids(rx.load("zero-shot", DS), DS, home.ids[10:])
    expected = np.stack([old_vectors[old_row[v]] if v in old_row else fresh[fresh_ids.index(v)]
                         for v in home.ids[1:]])
    assert new.ids == home.ids[1:] and new.info["build_options"]["shards"] == shards
    np.testing.assert_array_equal(new.stored_vectors(), expected)
    reference = index_reader.verify_build(index_writer.stage_build(DS, "in-memory", expected, new.ids, info=new.info,
                                                                   use_gpu=False, shards=shards))
    queries = fresh + np.float32(0.01)
    got, want = index_search(new.index, queries, 10), index_search(reference.index, queries, 10)
    assert (got[1] == want[1]).all() and np.allclose(got[0], want[0])
