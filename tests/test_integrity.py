"""Integrity under a living system (issue 11): corrupt shards, a video that kills its worker,
concurrent extraction and re-index runs with one of them killed at a random moment.

Real extraction (tiny random CLIP: clip_frames + clip_text) on copies of the tiny synthetic videos.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
from test_extract_support import spy_encoded_captions, tiny_clip_dir, tiny_config

from data.manifest import read_manifest
from data.prepare import prepare
from data.settings import get_settings
from data.store import FINAL_FAILURE, FeatureSet
from extractors import inprogress
from extractors import reader as extract_reader
from extractors.runner import extract_dataset

DS = "syn"
PROJECT = Path(__file__).resolve().parents[1]
MODALITIES = ("clip_frames", "clip_text")


@pytest.fixture
def media(tiny_synthetic, tvr_home, tmp_path):
    """A private copy of the tiny synthetic videos and a manifest of the first 8 (one torch thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path / "media"
    shutil.copytree(tiny_synthetic / "videos", folder / "videos")
    lines = [json.loads(x) for x in (tiny_synthetic / "annotations.jsonl").read_text().splitlines() if x]
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines[:8]))
    prepare("synthetic", folder / "annotations.jsonl", folder, name=DS)
    yield folder, [r["video_id"] for r in lines[:8]], [r for r in lines[:8]]
    torch.set_num_threads(threads)


def feature_dirs() -> dict[str, Path]:
    base = get_settings().features_dir / DS
    return {m: next((base / m).iterdir()) for m in MODALITIES}


def snapshot(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its mtime (ns), lock and counter files aside."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name not in (".lock", ".next-shard", ".reindex.lock")}


def check_at_rest(folders: dict[str, Path], ids: list[str], captions: dict[str, list[str]]) -> None:
    """The store at rest: markers and shards pair up, no debris, and a plain glob read without project
    code holds exactly one row per video (per caption for text), each ok or a recorded worker death."""
    for modality, folder in folders.items():
        names = {p.name for p in folder.iterdir()}
        shards = {n[:-len(".parquet")] for n in names if n.startswith("part-") and n.endswith(".parquet")}
        markers = {n[:-len(".done")] for n in names if n.startswith("part-") and n.endswith(".done")}
        assert shards == markers, f"{modality}: shards {sorted(shards)} vs markers {sorted(markers)}"
        assert not [n for n in names if n.endswith(".tmp") or n.endswith(".claim")], names
        table = pads.dataset(sorted(folder.glob("part-*.parquet"))).to_table()
        statuses = table.column("status").to_pylist()
        errors = table.column("error").to_pylist()
        assert all(s == "ok" or (s == "failed" and e.startswith(FINAL_FAILURE)) for s, e in zip(statuses, errors)), \
            list(zip(table.column("video_id").to_pylist(), statuses, errors))
        if modality == "clip_text":
            keys = list(zip(table.column("video_id").to_pylist(), table.column("caption_index").to_pylist()))
            assert sorted(keys) == sorted((v, i) for v in ids for i in range(len(captions[v])))
        else:
            assert sorted(table.column("video_id").to_pylist()) == sorted(ids)
        for shard in folder.glob("part-*.parquet"):      # each file says what it is
            meta = pq.read_schema(shard).metadata
            assert meta[b"tvr.extractor_id"] == folder.name.encode() and meta[b"tvr.random_weights"] == b"true"


@pytest.mark.slow
def test_planted_corrupt_shards_are_quarantined_and_redone(media, tmp_path, caplog):
    folder, ids, records = media
    config = tiny_config(tmp_path, modalities=MODALITIES)
    extract_dataset(DS, config, shard_size=4)
    frames = feature_dirs()["clip_frames"]
    first, second = sorted(frames.glob("part-*.parquet"))
    data = first.read_bytes()
    first.write_bytes(data[: len(data) // 2])                     # truncated (its marker stays)
    second.write_bytes(b"this is not parquet at all" * 40)       # garbage (its marker stays)
    (frames / "part-00077.parquet").write_bytes(b"PAR1 garbage without a marker")   # a bad copy, no marker
    with caplog.at_level("WARNING", logger="tvr.store"):
        counts = extract_dataset(DS, config, shard_size=4)
    assert (counts["clip_frames"].done, counts["clip_frames"].skipped) == (8, 0)
    assert (counts["clip_text"].done, counts["clip_text"].skipped) == (0, 8)
    quarantined = sorted(p.name.split(".")[0] for p in (frames / "_quarantine").iterdir())
    assert quarantined == sorted([first.stem, second.stem, "part-00077"])
    for shard in (first, second):
        assert str(shard) in caplog.text
    assert ids[0] in caplog.text and ids[7] in caplog.text         # the log names the videos
    check_at_rest(feature_dirs(), ids, {r["video_id"]: r["captions"] for r in records})
    assert extract_dataset(DS, config, shard_size=4)["clip_frames"].skipped == 8


@pytest.mark.slow
def test_changed_captions_are_the_only_ones_encoded(media, tmp_path, monkeypatch):
    """Text is decided per caption: a removed caption's row is superseded without any encoding, an
    added caption is the only one encoded, a video's other rows are written again unchanged; rows of
    a store written before per-caption digests are encoded once, then skipped."""
    folder, ids, records = media
    config = tiny_config(tmp_path, modalities=("clip_text",))
    extract_dataset(DS, config, shard_size=4)
    encoded = spy_encoded_captions(monkeypatch)
    text_dir = next((get_settings().features_dir / DS / "clip_text").iterdir())
    before = FeatureSet(text_dir).read()
    keys = zip(before.video_ids, before.column("caption_index"))
    old = {key: before.row(i).copy() for i, key in enumerate(keys)}
    shorter, longer = records[1], records[5]
    assert len(shorter["captions"]) > 1
    shorter["captions"] = shorter["captions"][:-1]
    longer["captions"] = longer["captions"] + ["a caption added later about a slow grey square"]
    (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    prepare("synthetic", folder / "annotations.jsonl", folder, name=DS)
    counts = extract_dataset(DS, config, shard_size=4)["clip_text"]
    assert encoded == [longer["captions"][-1]]
    assert (counts.done, counts.skipped, counts.kept) == (2, 6, len(shorter["captions"]) + len(longer["captions"]) - 1)
    captions = {r["video_id"]: r["captions"] for r in records}
    check_at_rest({"clip_text": text_dir}, ids, captions)          # the removed caption's row is gone at rest
    after = FeatureSet(text_dir).read()
    for i, (vid, index) in enumerate(zip(after.video_ids, after.column("caption_index"))):
        if (vid, index) in old:
            np.testing.assert_array_equal(after.row(i), old[(vid, index)])
    encoded.clear()
    assert extract_dataset(DS, config, shard_size=4)["clip_text"].skipped == 8 and encoded == []
    # a store of the previous version: every row carries its video's captions digest
    digests = read_manifest(get_settings().manifest_path(DS)).captions_digests()
    legacy = [after.feature_row(i) for i in range(len(after))]
    for row in legacy:
        row.fingerprint = digests[row.video_id]
    FeatureSet(text_dir).write_shard(legacy)
    counts = extract_dataset(DS, config, shard_size=4)["clip_text"]
    assert (counts.done, counts.kept) == (8, 0) and sorted(encoded) == sorted(c for v in ids for c in captions[v])
    encoded.clear()
    assert extract_dataset(DS, config, shard_size=4)["clip_text"].skipped == 8 and encoded == []
    check_at_rest({"clip_text": text_dir}, ids, captions)


def run_extract(tmp_path: Path, name: str, env: dict | None = None, module: str = "flows.extract") -> subprocess.Popen:
    """``python -m flows.extract syn`` (tiny CLIP, 2 modalities, shards of 3) in a subprocess."""
    args = [sys.executable, "-m", module, DS]
    if module == "flows.extract":
        args += ["--modalities", ",".join(MODALITIES), "--model", f"clip_frames={tiny_clip_dir(tmp_path)}",
                 "--device", "cpu", "--threads", "1", "--shard-size", "3"]
    else:
        args += ["--threads", "1", "--shard-size", "3"]
    full_env = {**os.environ, "TVR_HOME": str(get_settings().root), "PYTHONPATH": str(PROJECT),
                "OMP_NUM_THREADS": "1", **(env or {})}
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen(args, cwd=PROJECT, env=full_env, stdout=log, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen, log: Path, seconds: float = 240) -> None:
    deadline = time.time() + seconds
    while not path.exists():
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, f"never reached {path}"
        time.sleep(0.1)


@pytest.mark.slow
def test_video_that_killed_its_worker_is_recorded_failed_not_retried(media, tmp_path, monkeypatch):
    folder, ids, records = media
    victim = ids[4]
    marker = tmp_path / "decoding"
    proc = run_extract(tmp_path, "victim", {inprogress.PAUSE_ENV: f"{victim}:{marker}"})
    try:
        wait_for(marker, proc, tmp_path / "victim.log")      # "decoding" the victim: killed like an OOM kill
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    config = tiny_config(tmp_path, modalities=MODALITIES)
    decoded: list[str] = []
    real = extract_reader.stream_video
    monkeypatch.setattr(extract_reader, "stream_video", lambda p, r: decoded.append(Path(p).stem) or real(p, r))
    counts = extract_dataset(DS, config, shard_size=3)
    assert victim not in decoded                              # not decoded again: it would kill this run too
    assert counts["clip_frames"].failed == 1 and counts["clip_frames"].errors[0].startswith(FINAL_FAILURE)
    assert f"process {proc.pid}" in counts["clip_frames"].errors[0]
    status = FeatureSet(feature_dirs()["clip_frames"]).video_status()
    assert status[victim] == "failed" and all(status[v] == "ok" for v in ids if v != victim)
    assert FeatureSet(feature_dirs()["clip_text"]).video_status()[victim] == "ok"   # text needs no decode
    assert not list((get_settings().features_dir / DS / ".inprogress").iterdir())
    decoded.clear()
    again = extract_dataset(DS, config, shard_size=3)         # the failure stands for this content
    assert decoded == [] and (again["clip_frames"].skipped, again["clip_frames"].known_failed) == (7, 1)
    path = folder / "videos" / f"{victim}.mp4"
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))   # touched: new fingerprint, tried again
    retried = extract_dataset(DS, config, shard_size=3)
    assert decoded == [victim] and retried["clip_frames"].done == 1
    check_at_rest(feature_dirs(), ids, {r["video_id"]: r["captions"] for r in records})


@pytest.mark.slow
@pytest.mark.parametrize("with_reindex", [False, True])
def test_chaos_concurrent_runs_one_killed(media, tmp_path, with_reindex):
    """Three extraction runs a second apart plus one killed with kill -9 at a random moment (and a
    re-index alongside), then one clean rerun: one current row per video / caption, markers and
    shards pair up, and a further run writes nothing."""
    folder, ids, records = media
    config = tiny_config(tmp_path, modalities=MODALITIES)
    if with_reindex:   # the re-index needs stored CLIP features to start from: 5 videos extracted first
        (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records[:5]))
        prepare("synthetic", folder / "annotations.jsonl", folder, name=DS)
        extract_dataset(DS, config, shard_size=3)
        (folder / "annotations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        prepare("synthetic", folder / "annotations.jsonl", folder, name=DS)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    procs = []
    for k in range(3):
        procs.append(run_extract(tmp_path, f"run{k}"))
        if with_reindex and k == 1:
            procs.append(run_extract(tmp_path, "reindex", module="retrieval.reindex"))
        time.sleep(1.0)
    victim = run_extract(tmp_path, "killed")
    time.sleep(rng.uniform(1.0, 30.0))        # the runs take 20-80 s here: start-up or mid-work
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    for k, proc in enumerate(procs):
        assert proc.wait(timeout=400) == 0, f"seed {seed}: " + (tmp_path / f"run{k}.log").read_text()[-3000:] \
            if k < 3 else (tmp_path / "reindex.log").read_text()[-3000:]
    counts = extract_dataset(DS, config, shard_size=3)           # the clean rerun
    frames = counts["clip_frames"]
    assert frames.done + frames.skipped + frames.known_failed + frames.failed == 8
    captions = {r["video_id"]: r["captions"] for r in records}
    check_at_rest(feature_dirs(), ids, captions)
    before = snapshot(get_settings().features_dir)
    again = extract_dataset(DS, config, shard_size=3)            # a further run writes nothing
    assert all(c.skipped + c.known_failed == 8 and c.done == c.failed == 0 for c in again.values()), again
    assert snapshot(get_settings().features_dir) == before, f"seed {seed}"
    if with_reindex:
        from retrieval.index.reader import open_build
        from retrieval.reindex import run as rx

        final = rx.reindex(DS, shard_size=3)
        assert final.status in ("rebuilt", "up-to-date")
        frames = FeatureSet(feature_dirs()["clip_frames"]).video_status()
        assert sorted(open_build(DS, "zero-shot").ids) == sorted(v for v in ids if frames[v] == "ok")


def test_cli_refuses_unsafe_dataset_names_cleanly(tvr_home, capsys):
    from flows.extract import main

    for bad in ("../escape", "a/b", ".hidden", "x\ny"):
        assert main([bad, "--modalities", "clip_text"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: dataset") and "one path component" in err
    assert main(["nothing-here", "--modalities", "clip_text"]) == 2
    assert "no manifest here" in capsys.readouterr().err
    assert not (tvr_home / "features").exists() and not (tvr_home.parent / "escape").exists()


def test_a_record_in_the_instant_before_its_lock_is_not_debris(tmp_path):
    """A temporary in-progress record exists unlocked for an instant (created, then locked): another
    process planning a shard must neither delete it nor hold its lock then (it did, and the decode
    of that video failed with FileNotFoundError on a lost Dask worker's rerun). Only an abandoned
    temporary record older than the grace period is removed."""
    from data import locks

    folder = tmp_path / ".inprogress"
    folder.mkdir()
    young, old = folder / ".aaaa.123.x1.tmp", folder / ".bbbb.456.y2.tmp"
    young.write_text("")
    old.write_text("")
    past = time.time() - inprogress.TMP_GRACE_S - 5
    os.utime(old, (past, past))
    assert inprogress.dead_records(folder, ["v1"]) == {}
    assert young.exists() and not old.exists()
    os.close(locks.held_fd(young))        # its creator can still lock and publish it
