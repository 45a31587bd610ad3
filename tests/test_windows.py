"""Caption windows (data/windows.py): the validator, the sidecar table, the readers that fill it
(folder, DiDeMo, ActivityNet Captions on the real excerpts in ``conftest.FIXTURES``) and prepare."""
from __future__ import annotations

import json
import math
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, requires_fixtures
from data import activitynet, didemo, folder
from data.manifest import read_manifest
from data.prepare import main
from data.settings import get_settings
from data.windows import (WINDOWS_FILE, CaptionWindow, WindowError, check_window, group_windows, parse_window,
                          read_windows, windows_path, write_windows)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ANN = FIXTURES / "annotations"
WHERE = "captions.csv:7: caption 'a cat' of video 'cat'"


# ---- the validator -------------------------------------------------------------------------------
def test_check_window_accepts_and_refuses_with_the_place():
    assert check_window(0, 2.5, None, where=WHERE) == (0.0, 2.5)
    assert check_window(1, 10, 10.0, where=WHERE) == (1.0, 10.0)          # ending exactly at the end
    for start, end, duration, problem in [(3, 3, None, "start >= end"), (4, 2, None, "start >= end"),
                                          (-1, 2, None, "negative"), (1, 10.5, 10.0, "past the video's duration"),
                                          (math.nan, 2, None, "finite"), (0, math.inf, None, "finite"),
                                          (True, 2, None, "finite"), ("1", 2, None, "finite")]:
        with pytest.raises(WindowError, match="finite|start|duration|negative") as err:
            check_window(start, end, duration, where=WHERE)
        assert str(err.value).startswith(WHERE) and problem in str(err.value)


def test_parse_window_absent_partial_and_text():
    assert parse_window(None, None, 5.0, where=WHERE) is None
    assert parse_window("", " ", 5.0, where=WHERE) is None
    assert parse_window(" 1.5", "4", 5.0, where=WHERE) == (1.5, 4.0)
    with pytest.raises(WindowError, match="start_s is given without end_s"):
        parse_window(1, None, None, where=WHERE)
    with pytest.raises(WindowError, match="end_s is given without start_s"):
        parse_window("", "3", None, where=WHERE)
    with pytest.raises(WindowError, match="'soon'; expected a number"):
        parse_window("soon", "3", None, where=WHERE)


RAW = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 50), st.booleans(),
                st.text(max_size=6), st.floats(-5, 50).map(str), st.lists(st.integers(), max_size=2))


@FAST
@given(start=RAW, end=RAW, duration=st.one_of(st.none(), st.floats(0.5, 60)))
def test_parse_window_keeps_only_valid_windows(start, end, duration):
    """Any raw values: a valid window, None (both absent) or a WindowError naming the place."""
    try:
        window = parse_window(start, end, duration, where=WHERE)
    except WindowError as err:
        assert str(err).startswith(WHERE + ": ")
        return
    if window is None:
        assert all(v is None or (isinstance(v, str) and not v.strip()) for v in (start, end))
        return
    s, e = window
    assert isinstance(s, float) and isinstance(e, float) and math.isfinite(s) and math.isfinite(e)
    assert 0 <= s < e and (duration is None or e <= duration)


WINDOW = st.builds(CaptionWindow, video_id=st.text(min_size=1, max_size=8), caption_index=st.integers(0, 99),
                   start_s=st.floats(0, 1e4), end_s=st.floats(0, 1e4), annotator=st.integers(0, 9),
                   text=st.one_of(st.none(), st.text(max_size=12)))


@FAST
@given(windows=st.lists(WINDOW, max_size=5))
def test_windows_table_round_trips(windows):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = write_windows(Path(tmp) / WINDOWS_FILE, windows)
        except UnicodeEncodeError:   # lone surrogates cannot be stored as UTF-8
            return
        assert read_windows(path) == windows


def test_read_windows_missing_file_and_garbage(tmp_path):
    assert read_windows(tmp_path / WINDOWS_FILE) == []
    (tmp_path / WINDOWS_FILE).write_bytes(b"not parquet")
    with pytest.raises(WindowError, match="not a readable windows table"):
        read_windows(tmp_path / WINDOWS_FILE)


def test_windows_path_beside_the_manifest(tvr_home):
    settings = get_settings()
    assert windows_path("pets", settings) == settings.manifest_path("pets").parent / WINDOWS_FILE


def test_group_windows_gives_each_query_its_annotators():
    ws = [CaptionWindow("v", 0, 5, 10, annotator=1), CaptionWindow("v", 0, 0, 5, annotator=0),
          CaptionWindow("v", 1, 2, 3)]
    grouped = group_windows(ws)
    assert grouped[("v", 0)].tolist() == [[0, 5], [5, 10]] and grouped[("v", 1)].tolist() == [[2, 3]]


# ---- the folder format ---------------------------------------------------------------------------
def prepare_folder(tmp_path, name: str, text: str, suffix: str):
    ann = tmp_path / f"captions{suffix}"
    ann.write_text(text)
    assert main(["folder", "--name", name, "--annotations", str(ann), "--videos", str(tmp_path / "videos")]) == 0
    out = get_settings().dataset_dir(name)
    return ann, read_manifest(out / "manifest.parquet"), read_windows(out / WINDOWS_FILE), \
        json.loads((out / "prepare_report.json").read_text())["notes"]


def test_folder_jsonl_windows_and_a_refused_one(tmp_path, tvr_home):
    lines = [{"video": "cat.mp4", "duration_s": 10, "captions": [
                 "a cat sits", {"caption": "a cat jumps", "start_s": 2, "end_s": 4.5},
                 {"caption": "a cat lands", "start_s": 9, "end_s": 12}]},          # past the 10-s duration
             {"video": "dog.mp4", "captions": [{"caption": "a dog runs", "start_s": "1", "end_s": 30}]}]
    ann, manifest, windows, notes = prepare_folder(tmp_path, "pets", "".join(json.dumps(o) + "\n" for o in lines),
                                                   ".jsonl")
    assert {r.video_id: r.captions for r in manifest.records()} == {
        "cat": ["a cat sits", "a cat jumps", "a cat lands"], "dog": ["a dog runs"]}   # nothing lost
    assert windows == [CaptionWindow("cat", 1, 2.0, 4.5), CaptionWindow("dog", 0, 1.0, 30.0)]
    refused = [n for n in notes if n.startswith("window refused")]
    assert refused == [f"window refused: {ann}:1: caption 'a cat lands' of video 'cat': window [9, 12] s ends past "
                       f"the video's duration (10 s)"]
    assert "caption windows: 2 kept in windows.parquet, 1 refused" in "\n".join(notes)


def test_folder_csv_windows_checked_against_a_later_duration(tmp_path, tvr_home):
    text = ("video,caption,start_s,end_s,duration_s\n"
            "cat.mp4,a cat sits,,,\n"
            "cat.mp4,a cat jumps,3,8,\n"
            "cat.mp4,a cat naps,5,,6\n"       # end missing
            "dog.mp4,a dog runs,4,2,\n")      # start >= end
    ann, manifest, windows, notes = prepare_folder(tmp_path, "pets", text, ".csv")
    assert windows == []       # 3-8 s is past cat's 6-s duration, given on a later row
    assert [n.split(": caption ")[0] for n in notes if n.startswith("window refused")] == [
        f"window refused: {ann}:{line}" for line in (3, 4, 5)]
    assert sum(len(c) for c in manifest.table.column("captions").to_pylist()) == 4


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_documented_window_examples(tmp_path, tvr_home, suffix):
    """The ```jsonl / ```csv blocks of docs/datasets.md that give windows build as documented."""
    docs = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    blocks = [b.split("\n", 1)[1] for b in docs.split("```")[1::2] if b.startswith(suffix[1:] + "\n")]
    example = next(b for b in blocks if "start_s" in b)
    _, manifest, windows, notes = prepare_folder(tmp_path, "pets", example, suffix)
    assert windows == [CaptionWindow("clips/cat", 1 if suffix == ".jsonl" else 0, 2.0, 4.5)]
    assert not any(n.startswith("window refused") for n in notes)


def test_reprepare_without_windows_removes_the_old_sidecar(tmp_path, tvr_home):
    prepare_folder(tmp_path, "pets", '{"video": "a.mp4", "captions": [{"caption": "x", "start_s": 0, "end_s": 1}]}\n',
                   ".jsonl")
    path = get_settings().dataset_dir("pets") / WINDOWS_FILE
    assert path.is_file()
    _, _, windows, notes = prepare_folder(tmp_path, "pets", '{"video": "a.mp4", "captions": ["x"]}\n', ".jsonl")
    assert not path.exists() and windows == [] and not any(n.startswith("caption windows") for n in notes)


def test_jsonl_caption_object_without_text_is_a_manifest_error(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"video": "a.mp4", "captions": [{"start_s": 0, "end_s": 1}]}\n')
    with pytest.raises(Exception, match=r"c.jsonl:1: caption 0 is .*expected a non-empty string"):
        folder.read(path)


# ---- DiDeMo --------------------------------------------------------------------------------------
def test_didemo_chunk_rule():
    assert didemo.chunk_window([0, 0], 6, None, where=WHERE) == (0.0, 5.0)
    assert didemo.chunk_window([2, 5], 6, None, where=WHERE) == (10.0, 30.0)
    assert didemo.chunk_window([5, 5], 6, 27.5, where=WHERE) == (25.0, 27.5)      # clamped to the duration
    assert didemo.chunk_window([1.0, 2.0], None, None, where=WHERE) == (5.0, 15.0)
    for pair, segments, duration, problem in [([3, 1], 6, None, "0 <= start <= end < 6"),
                                              ([0, 5], 5, None, "< 5"), ([-1, 0], 6, None, "0 <= start"),
                                              ([0.5, 1], 6, None, "whole chunk"), ([5, 5], 6, 25.0, "start >= end")]:
        with pytest.raises(WindowError, match="chunk|start") as err:
            didemo.chunk_window(pair, segments, duration, where=WHERE)
        assert str(err.value).startswith(WHERE) and problem in str(err.value)


@requires_fixtures
def test_didemo_keeps_every_annotator_window(tmp_path):
    read = didemo.read(ANN / "didemo", tmp_path)
    paragraphs = {r.video_id: r.captions[0] for r in read.records}
    expected = set()
    for split in ("val", "test"):
        for i, m in enumerate(json.loads((ANN / "didemo" / f"{split}_data.json").read_text())):
            expected |= {(m["video"], m["description"].strip(), a, 5.0 * s, 5.0 * (e + 1))
                         for a, (s, e) in enumerate(m["times"])}
    got = {(w.video_id, w.text, w.annotator, w.start_s, w.end_s) for w in read.windows}
    assert got == expected and len(read.windows) == len(expected)
    assert not any(n.startswith("window refused") for n in read.notes)
    for vid, paragraph in paragraphs.items():        # caption_index: the sentence's place in the paragraph
        sentences = {w.caption_index: w.text for w in read.windows if w.video_id == vid}
        assert " ".join(sentences[k] for k in range(len(sentences))) == paragraph
    first = json.loads((ANN / "didemo" / "test_data.json").read_text())[0]
    mine = sorted((w.annotator, w.start_s, w.end_s) for w in read.windows
                  if w.video_id == first["video"] and w.text == first["description"].strip())
    assert [(s, e) for _, s, e in mine] == [(20.0, 25.0), (20.0, 25.0), (0.0, 5.0), (20.0, 25.0), (0.0, 5.0),
                                             (0.0, 5.0), (20.0, 25.0)]      # [[4, 4], [4, 4], [0, 0], ...]


@requires_fixtures
def test_didemo_bad_chunks_are_refused_and_nothing_else_is_lost(tmp_path):
    ann = tmp_path / "didemo"
    shutil.copytree(ANN / "didemo", ann)
    moments = json.loads((ann / "test_data.json").read_text())
    moments[3]["times"][1] = [4, 2]
    moments[5]["times"][0] = [0, moments[5]["num_segments"]]
    (ann / "test_data.json").write_text(json.dumps(moments))
    good, bad = didemo.read(ANN / "didemo", tmp_path), didemo.read(ann, tmp_path)
    assert [r.captions for r in bad.records] == [r.captions for r in good.records]
    assert len(bad.windows) == len(good.windows) - 2
    refused = [n for n in bad.notes if n.startswith("window refused")]
    assert len(refused) == 2
    assert refused[0].startswith(f"window refused: {ann / 'test_data.json'}: [3].times[1]: caption ")
    assert "chunks [4, 2] are not 0 <= start <= end < " in refused[0]
    assert f"[5].times[0]: caption {moments[5]['description'].strip()[:30]!r}"[:-1] in refused[1]


# ---- ActivityNet Captions ------------------------------------------------------------------------
@requires_fixtures
def test_activitynet_windows_are_the_timestamps(tmp_path):
    read = activitynet.read(ANN / "activitynet", tmp_path, val_size=3)
    entries = {**json.loads((ANN / "activitynet" / "train_modified.json").read_text()),
               **json.loads((ANN / "activitynet" / "val_1.json").read_text())}
    expected = {(vid, s.strip(), float(a), float(b)) for vid, e in entries.items()
                for s, (a, b) in zip(e["sentences"], e["timestamps"])}
    assert {(w.video_id, w.text, w.start_s, w.end_s) for w in read.windows} == expected
    assert len(read.windows) == len(expected) == 78 and {w.annotator for w in read.windows} == {0}
    by_id = {r.video_id: r for r in read.records}
    for vid in entries:
        mine = sorted((w.caption_index, w.start_s, w.text) for w in read.windows if w.video_id == vid)
        assert [k for k, _, _ in mine] == list(range(len(mine)))
        assert [s for _, s, _ in mine] == sorted(s for _, s, _ in mine)     # in time order
        assert " ".join(t for _, _, t in mine) == by_id[vid].captions[0]


@requires_fixtures
def test_activitynet_end_past_duration_is_refused(tmp_path):
    ann = tmp_path / "activitynet"
    shutil.copytree(ANN / "activitynet", ann)
    data = json.loads((ann / "val_1.json").read_text())
    vid = next(iter(data))
    data[vid]["timestamps"][0][1] = data[vid]["duration"] + 1
    (ann / "val_1.json").write_text(json.dumps(data))
    read = activitynet.read(ann, tmp_path, val_size=3)
    refused = [n for n in read.notes if n.startswith("window refused")]
    assert len(refused) == 1 and f"key {vid!r}.timestamps[0]: caption" in refused[0]
    assert "ends past the video's duration" in refused[0] and len(read.windows) == 77
    assert [r.captions for r in read.records] == [r.captions for r in activitynet.read(ANN / "activitynet", tmp_path,
                                                                                        val_size=3).records]


@requires_fixtures
def test_prepare_writes_the_sidecar_beside_the_manifest(tmp_path, tvr_home):
    assert main(["didemo", "--annotations", str(ANN / "didemo"), "--videos", str(tmp_path)]) == 0
    windows = read_windows(windows_path("didemo", get_settings()))
    assert len(windows) == sum(len(m["times"]) for s in ("val", "test")
                               for m in json.loads((ANN / "didemo" / f"{s}_data.json").read_text()))
    assert {w.video_id for w in windows} == set(read_manifest(get_settings().manifest_path("didemo")).video_ids)
