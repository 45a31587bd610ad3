"""Manifest building: every bad input is a clear error or a reported warning."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import PROJECT
from data.folder import assign_split, read_records
from data.manifest import ManifestError, VideoRecord, build_manifest, read_manifest, write_manifest
from data.names import InvalidName, check_name
from data.prepare import prepare
from data.settings import get_settings
from retrieval.index.writer import write_build


@pytest.fixture
def videos(tmp_path):
    root = tmp_path / "videos"
    (root / "sub").mkdir(parents=True)
    for name in ("a.mp4", "b.mp4", "sub/c.webm"):
        (root / name).write_bytes(b"x")
    return root


def rec(vid, path=None, captions=("a caption",), split="train"):
    return VideoRecord(vid, path or f"{vid}.mp4", split, list(captions))


def test_round_trip(videos, tmp_path):
    table, report = build_manifest([rec("a"), rec("b", split="test"), rec("c", "sub/c.webm")], videos,
                                   dataset="mine")
    assert report.n_videos == 3 and report.splits == {"train": 2, "test": 1} and not report.missing
    m = read_manifest(write_manifest(table, tmp_path / "m.parquet"))
    assert m.video_ids == ["a", "b", "c"] and m.dataset == "mine" and m.video_root == videos.resolve()
    assert m.split("test").video_ids == ["b"]
    assert m.records()[2].path == "sub/c.webm"


def test_duplicate_ids(videos):
    with pytest.raises(ManifestError, match="'a': duplicate video id"):
        build_manifest([rec("a"), rec("a", "b.mp4")], videos, source="ann.json")


@pytest.mark.parametrize("vid,problem", [("", "is empty"), (" a", "whitespace"), ("a\t", "whitespace"),
                                         (".hidden", "starts with '.'"), ("a\\b", "path separator"),
                                         ("a\x00b", "control character"), ("é" * 128, "longer than 255 bytes"),
                                         ("clips//cat", "part '' that is empty"), ("/abs", "part '' that is empty"),
                                         ("sub/..", "part '..' that starts with '.'"), (7, "must be a string")])
def test_video_ids_break_the_path_component_rule(videos, vid, problem):
    with pytest.raises(ManifestError, match=re.escape(f"ann.json: video id {vid!r}") + ".*" + re.escape(problem)):
        build_manifest([rec(vid, "a.mp4")], videos, source="ann.json")


@pytest.mark.parametrize("vid", ["video9770", "-4wsuPCjDBc_5_15", "10015567@N08_3655084291_d8b58466fa.mov",
                                 "0001_American_Beauty_00.00.51.926-00.00.54.706", "clips/cat", "é" * 127 + "a"])
def test_dataset_ids_obey_the_rule(videos, vid):
    table, _ = build_manifest([rec(vid, "a.mp4")], videos)
    assert table.column("video_id").to_pylist() == [vid]


# ids that like path trouble: separators, dots, whitespace, control characters, multi-byte text
IDS = st.lists(st.sampled_from(["a", "é", ".", "..", "/", "\\", " ", "\n", "\x00", "x" * 100]),
               max_size=6).map("".join)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(vid=st.one_of(IDS, st.text(max_size=12)))
def test_manifest_ids_follow_the_one_name_rule(videos, vid):
    """An id is accepted exactly when each of its '/'-separated parts is one safe path component
    (data.names.check_name) and it fits 255 bytes; a refusal names the id."""
    try:
        parts_ok = all(check_name(part) for part in vid.split("/")) and len(vid.encode()) <= 255
    except InvalidName:
        parts_ok = False
    try:
        build_manifest([rec(vid, "a.mp4")], videos, source="ann.json")
    except ManifestError as err:
        assert not parts_ok and f"video id {vid!r}" in str(err)
        return
    assert parts_ok


@pytest.mark.parametrize("path", ["/etc/passwd", "../outside.mp4", "sub/../../x.mp4"])
def test_paths_that_escape_the_root(videos, path):
    with pytest.raises(ManifestError, match="absolute|'\\.\\.'"):
        build_manifest([rec("a", path)], videos)


@pytest.mark.parametrize("captions,msg", [((), "no captions"), (("",), "caption 0"), (("ok", "  "), "caption 1"),
                                          (("ok", 3), "caption 1")])
def test_empty_or_bad_captions(videos, captions, msg):
    with pytest.raises(ManifestError, match=msg):
        build_manifest([rec("a", captions=captions)], videos, source="ann.json")


def test_missing_files_reported_or_strict(videos):
    _, report = build_manifest([rec("a"), rec("zz")], videos)
    assert report.missing == ["zz"] and "1 video files missing" in report.summary()
    with pytest.raises(ManifestError, match="1 video files missing"):
        build_manifest([rec("a"), rec("zz")], videos, strict_missing=True)


def test_empty_dataset_and_missing_manifest(videos, tmp_path):
    with pytest.raises(ManifestError, match="no videos"):
        build_manifest([], videos)
    with pytest.raises(ManifestError, match="no manifest here"):
        read_manifest(tmp_path / "nope.parquet")


def test_folder_jsonl_and_csv(videos, tmp_path, tvr_home):
    jl = tmp_path / "caps.jsonl"
    jl.write_text(json.dumps({"video": "a.mp4", "captions": ["x", "y"], "split": "train"}) + "\n\n"
                  + json.dumps({"video": "sub/c.webm", "captions": ["z"]}) + "\n")
    recs = read_records(jl)
    assert [r.video_id for r in recs] == ["a", "sub/c"] and recs[1].split == assign_split("sub/c")
    csv = tmp_path / "caps.csv"
    csv.write_text("video,caption,split\na.mp4,one,test\na.mp4,two,test\nb.mp4,three,\n")
    recs = read_records(csv)
    assert [(r.video_id, list(r.captions), r.split) for r in recs] == [
        ("a", ["one", "two"], "test"), ("b", ["three"], assign_split("b"))]
    out, report = prepare("folder", csv, videos, name="mine")
    assert out == tvr_home.resolve() / "datasets" / "mine" / "manifest.parquet" and report.n_videos == 2


def test_folder_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "caps.jsonl"
    bad.write_text('{"video": "a.mp4", "captions": ["x"]}\n{"video": "b.mp4", "captions": "oops"}\n')
    with pytest.raises(ManifestError, match=r"caps.jsonl:2: 'captions' must be a list"):
        read_records(bad)
    bad.write_text('{"video": "a.mp4", "captions": ["x"]\n')
    with pytest.raises(ManifestError, match=r"caps.jsonl:1: not valid JSON"):
        read_records(bad)
    csv = tmp_path / "c.csv"
    csv.write_text("path,text\na.mp4,x\n")
    with pytest.raises(ManifestError, match="lacks 'video' and 'caption'"):
        read_records(csv)


def test_assigned_splits_are_deterministic_and_balanced():
    splits = [assign_split(f"video{i}") for i in range(3000)]
    assert splits == [assign_split(f"video{i}") for i in range(3000)]
    share = splits.count("train") / len(splits)
    assert 0.75 < share < 0.85 and splits.count("val") > 200 and splits.count("test") > 200


def _pets(tmp_path, videos):
    """An annotation file of two of ``videos``' files (the folder reader's JSONL)."""
    ann = tmp_path / "pets.jsonl"
    ann.write_text("".join(json.dumps({"video": v, "captions": [f"clip {v}"], "split": "train"}) + "\n"
                           for v in ("a.mp4", "sub/c.webm")))
    return ann


def test_a_copied_tvr_home_reads_its_own_videos(videos, tmp_path):
    """The dataset's manifest and an index build's snapshot of it, in a copy of TVR_HOME whose
    original is gone, both point at the copy's videos."""
    home = tmp_path / "home"
    settings = get_settings(home)
    shutil.move(videos, home / "videos")                     # the videos live inside TVR_HOME
    out, _ = prepare("folder", _pets(tmp_path, videos), home / "videos", name="pets", settings=settings)
    info = {"extractor_ids": {"clip_frames": "f", "clip_text": "t"}, "random_weights": True, "model": "zero-shot"}
    build = write_build("pets", "zero-shot", np.eye(2, 4, dtype=np.float32), ["a", "sub/c"], info=info,
                        settings=settings, use_gpu=False)
    copy = tmp_path / "elsewhere" / "home-copy"
    shutil.copytree(home, copy)
    shutil.rmtree(home)
    for manifest in (read_manifest(copy / out.relative_to(home)),
                     read_manifest(copy / build.relative_to(home) / "manifest.parquet")):
        assert manifest.video_root == (copy / "videos").resolve()
        assert manifest.video_path("sub/c.webm").read_bytes() == b"x"
        manifest.require_video_root()
    assert pq.read_schema(copy / out.relative_to(home)).metadata[b"tvr.video_root"] == b"../../videos"


def test_extraction_refuses_a_missing_video_root_in_one_line(videos, tmp_path):
    """A manifest with an absolute root (a root outside TVR_HOME, or a manifest written before
    relative roots) whose folder is gone: ``flows.extract`` says so in one line naming the manifest
    and the option that fixes it, exit 2."""
    home = tmp_path / "home"
    out, _ = prepare("folder", _pets(tmp_path, videos), videos, name="pets", settings=get_settings(home))
    assert read_manifest(out).video_root == videos.resolve()     # outside TVR_HOME: absolute, as before
    shutil.rmtree(videos)
    env = {**os.environ, "TVR_HOME": str(home), "PYTHONPATH": str(PROJECT)}
    done = subprocess.run([sys.executable, "-m", "flows.extract", "pets", "--modalities", "clip_frames"],
                          env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and str(out) in line and f"video root {videos.resolve()} does not exist" in line
    assert "python -m data.prepare folder --annotations DIR --videos DIR --name pets" in line
