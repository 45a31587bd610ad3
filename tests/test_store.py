"""Feature store: ragged round trip, atomic shards, resume listing, schema/dimension checks."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data.store import FINAL_FAILURE, ExtractorSpec, FeatureRow, FeatureSet, StoreError, list_extractors

DIM = 8


def spec(dim=DIM, **params):
    return ExtractorSpec("clip_frames", dim, {"model": "tiny", "weights": "random", **params}, True,
                         {"has_audio": pa.bool_()})


def rows(ids, rng, dim=DIM):
    out = []
    for i, vid in enumerate(ids):
        t = (i % 4) + 1 if i % 5 else 0  # ragged, including empty sequences
        out.append(FeatureRow(vid, rng.normal(size=(t, dim)).astype(np.float32), np.arange(t, dtype=float),
                              "ok" if t else "empty", None, {"has_audio": bool(i % 2)}))
    return out


def test_extractor_id_changes_with_every_parameter():
    base = spec().extractor_id
    assert spec().extractor_id == base
    assert spec(fps=2).extractor_id != base
    assert spec(dim=16).extractor_id != base
    assert len(base) == 12


def test_ragged_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    fs = FeatureSet(tmp_path / "f", spec())
    written = rows([f"v{i}" for i in range(11)], rng)
    fs.write_shard(written[:6])
    fs.write_shard(written[6:])
    table = FeatureSet(tmp_path / "f").read()  # spec read back from _extractor.json
    assert table.video_ids == [r.video_id for r in written]
    for i, r in enumerate(written):
        np.testing.assert_array_equal(table.row(i), r.values)
        np.testing.assert_array_equal(table.timestamps(i), r.timestamps_s)
    assert table.column("has_audio") == [r.extra["has_audio"] for r in written]
    padded, mask = table.padded()
    assert padded.shape == (11, 4, DIM) and mask.sum() == sum(len(r.values) for r in written)
    for i, r in enumerate(written):
        np.testing.assert_array_equal(padded[i, : len(r.values)], r.values)
        assert not padded[i, len(r.values):].any()


def test_random_weights_recorded_loudly(tmp_path):
    fs = FeatureSet(tmp_path / "f", spec())
    fs.write_shard(rows(["a"], np.random.default_rng(0)))
    info = FeatureSet(tmp_path / "f").info
    assert info["random_weights"] is True and "RANDOM WEIGHTS" in info["WARNING"]


def test_list_extractors(tmp_path):
    s = spec()
    FeatureSet(tmp_path / "ds" / "clip_frames" / s.extractor_id, s).write_shard(rows(["a"], np.random.default_rng(0)))
    listed = list_extractors(tmp_path, "ds", "clip_frames")
    assert [x["extractor_id"] for x in listed] == [s.extractor_id]


def done(fs: FeatureSet, expected: dict | None = None) -> set[str]:
    """Videos whose newest rows are ``ok`` / ``empty`` (for the ``expected`` fingerprints)."""
    states = fs.video_states()
    return {v for v, s in states.items() if s.done_for(None)} if expected is None else \
        {v for v, fp in expected.items() if v in states and states[v].done_for(fp)}


def test_newest_row_wins_and_done_videos(tmp_path):
    fs = FeatureSet(tmp_path / "f", spec())
    fs.write_shard([FeatureRow.failed("a", DIM, "boom"), *rows(["b"], np.random.default_rng(0))])
    assert done(fs) == {"b"}  # a failed video is not done
    fs.write_shard(rows(["x", "a"], np.random.default_rng(1)))
    table = fs.read()
    assert sorted(table.video_ids) == ["a", "b", "x"]  # exactly one entry per video
    assert dict(zip(table.video_ids, table.status))["a"] in ("ok", "empty")


def _write_then_die(folder, kill_at):
    """Child process: write one complete shard, then die at a chosen point of the second."""
    import data.store as store

    fs = store.FeatureSet(folder, spec())
    fs.write_shard(rows(["a", "b"], np.random.default_rng(0)))
    real = store.write_json_atomic if kill_at == "before-marker" else store.pq.write_table

    def die(*args, **kwargs):
        if kill_at == "mid-parquet":
            real(*args, **kwargs)  # a complete temporary file exists, never renamed
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at == "before-marker":
        store.write_json_atomic = die
    else:
        store.pq.write_table = die
    fs.write_shard(rows(["c", "d"], np.random.default_rng(1)))


@pytest.mark.parametrize("kill_at", ["mid-parquet", "before-marker"])
def test_killed_writer_leaves_no_readable_partial_shard(tmp_path, kill_at):
    folder = tmp_path / "f"
    proc = mp.get_context("spawn").Process(target=_write_then_die, args=(folder, kill_at))
    proc.start()
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    debris = [p.name for p in folder.iterdir() if p.name not in ("_extractor.json", "part-00000.parquet", "part-00000.done")]
    assert debris, "the kill should have left debris to clean up"
    fs = FeatureSet(folder)
    assert done(fs) == {"a", "b"}  # the killed shard's videos are redone, nothing else
    assert fs.read().video_ids == ["a", "b"]
    fs.prepare()  # a new run cleans the debris (the lock and counter files stay)
    assert sorted(p.name for p in folder.iterdir() if p.name not in (".lock", ".next-shard")) == [
        "_extractor.json", "part-00000.done", "part-00000.parquet"]
    fs.write_shard(rows(["c", "d"], np.random.default_rng(1)))
    assert sorted(fs.read().video_ids) == ["a", "b", "c", "d"]


def test_wrong_dimension_is_quarantined_with_file_and_shape(tmp_path, caplog):
    good = spec()
    folder = tmp_path / "f"
    FeatureSet(folder, good).write_shard(rows(["a"], np.random.default_rng(0)))
    # A shard written with another dimension lands in the same folder (e.g. a bug or a hand copy).
    wrong = ExtractorSpec(good.modality, DIM * 2, good.params, True, good.extra_columns)
    bad_table = FeatureSet(tmp_path / "other", wrong)._to_table(rows(["b"], np.random.default_rng(0), DIM * 2))
    pq.write_table(bad_table, folder / "part-00001.parquet")
    (folder / "part-00001.done").write_text('{"video_ids": ["b"]}')
    with caplog.at_level("WARNING", logger="tvr.store"):
        assert FeatureSet(folder).read().video_ids == ["a"]
    assert "part-00001.parquet" in caplog.text and f"D={DIM}" in caplog.text and "b" in caplog.text
    assert not (folder / "part-00001.parquet").exists() and not (folder / "part-00001.done").exists()
    assert [p.name.split(".")[0] for p in (folder / "_quarantine").iterdir()] == ["part-00001"]


def test_writer_refuses_bad_rows(tmp_path):
    fs = FeatureSet(tmp_path / "f", spec())
    with pytest.raises(StoreError, match=r"expected \[T, 8\]"):
        fs.write_shard([FeatureRow("a", np.zeros((2, 3), np.float32), np.zeros(2))])
    with pytest.raises(StoreError, match="status"):
        fs.write_shard([FeatureRow("a", np.zeros((1, DIM), np.float32), np.zeros(1), "done")])
    with pytest.raises(StoreError, match="timestamps"):
        fs.write_shard([FeatureRow("a", np.zeros((2, DIM), np.float32), np.zeros(3))])


def test_folder_of_another_extractor_is_refused(tmp_path):
    FeatureSet(tmp_path / "f", spec()).write_shard(rows(["a"], np.random.default_rng(0)))
    with pytest.raises(StoreError, match="belongs to extractor"):
        FeatureSet(tmp_path / "f", spec(fps=5)).prepare()


def test_reader_without_extractor_json(tmp_path):
    with pytest.raises(StoreError, match="no _extractor.json"):
        FeatureSet(tmp_path / "nothing")


# ---- living system: concurrent writers, tidying, compaction, plain readers ------------------------
def _writer(folder, name, n_shards, seed):
    """Child: write ``n_shards`` shards of 3 own videos each plus the shared video ``common``."""
    rng = np.random.default_rng(seed)
    fs = FeatureSet(folder, spec())
    for k in range(n_shards):
        fs.write_shard(rows([f"{name}-{k}-{j}" for j in range(3)] + ["common"], rng))


def _tidier(folder, stop_file, out_file):
    """Child: tidy and read in a loop until ``stop_file`` exists; every read must be consistent and
    no video may ever vanish once seen. Writes the number of reads and tidies done."""
    fs = FeatureSet(folder, spec())
    seen: set[str] = set()
    reads = tidies = 0
    while not os.path.exists(stop_file):
        tidies += fs.tidy()
        ids = fs.read().video_ids
        assert len(ids) == len(set(ids)), "a video twice in one read"
        assert seen <= set(ids), f"videos vanished: {sorted(seen - set(ids))[:5]}"
        seen |= set(ids)
        reads += 1
    with open(out_file, "w") as fh:
        fh.write(f"{reads} {tidies}")


def test_live_writers_and_tidier_lose_nothing(tmp_path):
    folder = tmp_path / "f"
    FeatureSet(folder, spec()).prepare()
    ctx = mp.get_context("spawn")
    stop, out = tmp_path / "stop", tmp_path / "tidier.txt"
    tidier = ctx.Process(target=_tidier, args=(folder, stop, out))
    tidier.start()
    writers = [ctx.Process(target=_writer, args=(folder, name, 15, k)) for k, name in enumerate("ab")]
    for w in writers:
        w.start()
    for w in writers:
        w.join(120)
        assert w.exitcode == 0
    stop.write_text("")
    tidier.join(60)
    assert tidier.exitcode == 0, "the tidier saw an inconsistent read (see its traceback above)"
    reads, tidies = map(int, out.read_text().split())
    assert reads > 0
    fs = FeatureSet(folder)
    fs.tidy()
    expected = sorted([f"{n}-{k}-{j}" for n in "ab" for k in range(15) for j in range(3)] + ["common"])
    assert sorted(fs.read().video_ids) == expected
    shards = {p.stem for p in folder.glob("part-*.parquet")}
    assert shards == {p.stem for p in folder.glob("part-*.done")}
    assert not list(folder.glob(".*.tmp"))
    import pyarrow.dataset as ds

    plain = ds.dataset(sorted(folder.glob("part-*.parquet"))).to_table(columns=["video_id"])
    assert sorted(plain.column("video_id").to_pylist()) == expected   # "common" compacted to one row


def test_tidy_waits_for_live_writer_and_keeps_its_files(tmp_path):
    from data import locks

    fs = FeatureSet(tmp_path / "f", spec())
    fs.write_shard(rows(["a"], np.random.default_rng(0)))
    live_tmp = fs.folder / ".part-00001.parquet.abc.tmp"        # a live writer's file in progress
    live_tmp.write_bytes(b"half")
    with locks.shared(fs.lock_path):                             # ...and its shared lock
        assert fs.tidy() is False
        fs.prepare()                                             # a second run's planning step
        assert live_tmp.exists()
    assert fs.tidy() is True and not live_tmp.exists()           # the writer is gone: debris


def test_shard_numbers_are_never_reused(tmp_path):
    fs = FeatureSet(tmp_path / "f", spec())
    first = fs.write_shard(rows(["a"], np.random.default_rng(0)))
    second = fs.write_shard(rows(["a"], np.random.default_rng(1)))   # supersedes the first
    assert fs.tidy() and not first.exists() and second.exists()
    third = fs.write_shard(rows(["b"], np.random.default_rng(2)))
    assert third.name == "part-00002.parquet"


def test_compaction_gives_plain_parquet_for_any_reader(tmp_path):
    import duckdb
    import polars as pl

    fs = FeatureSet(tmp_path / "f", spec())
    rng = np.random.default_rng(0)
    fs.write_shard([FeatureRow.failed("a", DIM, "boom"), *rows(["b", "c"], rng)])
    fs.write_shard(rows(["a", "x"], rng))                        # a redone
    fs.write_shard(rows(["c"], rng))                             # c re-extracted
    before = fs.read()
    newest = {vid: before.row(i).copy() for i, vid in enumerate(before.video_ids)}
    assert len(list(fs.folder.glob("part-*.parquet"))) == 3
    assert fs.tidy()
    glob = str(fs.folder / "part-*.parquet")
    by_duckdb = duckdb.sql(f"SELECT video_id, status FROM read_parquet('{glob}') ORDER BY video_id").fetchall()
    assert by_duckdb == sorted(zip(before.video_ids, before.status))
    assert [v for v, _ in by_duckdb] == ["a", "b", "c", "x"] and dict(by_duckdb)["a"] != "failed"
    frame = pl.read_parquet(glob).sort("video_id")
    assert frame["video_id"].to_list() == ["a", "b", "c", "x"]
    for vid, values in zip(frame["video_id"], frame["values"].to_list()):
        np.testing.assert_array_equal(np.array(values, np.float32).reshape(-1, DIM), newest[vid])
    for shard in fs.folder.glob("part-*.parquet"):
        meta = pq.read_schema(shard).metadata
        assert meta[b"tvr.extractor_id"] == fs.spec.extractor_id.encode()
        assert meta[b"tvr.random_weights"] == b"true" and b"RANDOM WEIGHTS" in meta[b"tvr.WARNING"]


def test_done_and_failed_compare_fingerprints(tmp_path):
    fs = FeatureSet(tmp_path / "f", spec())
    written = rows(["a", "b", "c"], np.random.default_rng(1))
    for r in written:
        r.fingerprint = f"fp-{r.video_id}"
    fs.write_shard(written)
    assert done(fs, {"a": "fp-a", "b": "changed", "c": "fp-c"}) == {"a", "c"}
    assert done(fs, {"z": "fp-z"}) == set()
    assert done(fs) == {"a", "b", "c"}
    failure = FeatureRow.failed("a", DIM, f"{FINAL_FAILURE} a.mp4: process 1 died")
    failure.fingerprint = "fp-a"
    fs.write_shard([failure])
    state = fs.video_states()["a"]
    assert not state.done_for("fp-a") and state.failed_for("fp-a") and not state.failed_for("changed")


def test_files_are_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        fs = FeatureSet(tmp_path / "f", spec())
        shard = fs.write_shard(rows(["a"], np.random.default_rng(0)))
    finally:
        os.umask(old)
    for path in (shard, shard.with_suffix(".done"), fs.folder / "_extractor.json"):
        assert path.stat().st_mode & 0o777 == 0o644, path
