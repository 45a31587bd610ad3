"""Dataset readers on excerpts of the real annotation files (``conftest.FIXTURES / "annotations"``)."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from conftest import FIXTURES, requires_fixtures
from data import activitynet, didemo, lsmdc, msrvtt, msvd
from data.manifest import read_manifest
from data.prepare import main

pytestmark = requires_fixtures
ANN = FIXTURES / "annotations"


def ids_of(path):
    return path.read_text().split()


def n_over_64_tokens(records) -> int:
    """Independent count with open_clip.tokenize (padded to 77 tokens; non-zero = real tokens)."""
    import open_clip

    tokens = open_clip.tokenize([r.captions[0] for r in records])
    return int(((tokens != 0).sum(dim=1) > 64).sum())


def make_videos(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_msvd_counts_captions_and_id_formats(tmp_path):
    captions = json.loads((ANN / "msvd" / "captions_msvd.json").read_text())
    lists = {s: ids_of(ANN / "msvd" / f"{s}_list.txt") for s in ("train", "val", "test")}
    test_ids = lists["test"]
    make_videos(tmp_path / "YouTubeClips", [f"{v}.avi" for v in test_ids[:3]] + [f"{lists['train'][0]}.mp4"])
    read = msvd.read(ANN / "msvd", tmp_path / "YouTubeClips")
    by_split = {s: [r for r in read.records if r.split == s] for s in lists}
    assert {s: len(v) for s, v in by_split.items()} == {"train": 12, "val": 4, "test": 8}
    for rec in read.records:
        assert rec.captions == [c.strip() for c in captions[rec.video_id]]
    assert sum(len(r.captions) for r in by_split["test"]) == sum(len(captions[v]) for v in test_ids)
    ids = {r.video_id for r in read.records}
    assert "-4wsuPCjDBc_5_15" in ids and "bQJQGoJF7_k_162_169" in ids and "f-24IxG9ijw_25_40" in ids
    assert {r.video_id: r.path for r in read.records}[test_ids[0]] == f"{test_ids[0]}.avi"


def test_msvd_missing_video_report(tmp_path, tvr_home):
    test_ids = ids_of(ANN / "msvd" / "test_list.txt")
    all_ids = [v for s in ("train", "val", "test") for v in ids_of(ANN / "msvd" / f"{s}_list.txt")]
    make_videos(tmp_path / "videos", [f"{v}.avi" for v in all_ids if v not in test_ids[:2]])
    assert main(["msvd", "--annotations", str(ANN / "msvd"), "--videos", str(tmp_path / "videos")]) == 0
    out = tvr_home / "datasets" / "msvd"
    assert sorted((out / "missing_videos.txt").read_text().split()) == sorted(test_ids[:2])
    assert json.loads((out / "prepare_report.json").read_text())["n_missing"] == 2
    manifest = read_manifest(out / "manifest.parquet")
    assert len(manifest) == 24 and manifest.metadata["reader"] == "msvd"


def test_msrvtt_split_files(tmp_path):
    """The real split files, with an MSRVTT_data.json built in the documented structure."""
    ann = tmp_path / "msrvtt"
    shutil.copytree(ANN / "msrvtt", ann)
    train9k = ids_of(ann / "MSRVTT_train.9k.csv")[1:]
    train7k = ids_of(ann / "MSRVTT_train.7k.csv")[1:]
    with open(ann / "MSRVTT_JSFUSION_test.csv", newline="") as fh:
        jsfusion = {row["video_id"]: row["sentence"] for row in csv.DictReader(fh)}
    example = json.loads((ann / "MSRVTT_data.FORMAT-EXAMPLE.json").read_text())
    all_ids = list(dict.fromkeys(train9k + train7k + list(jsfusion)))
    template = example["videos"][0]
    videos = [{**template, "video_id": v, "id": i} for i, v in enumerate(all_ids)]
    sentences = [{"caption": f"caption {j} for {v}", "video_id": v, "sen_id": 20 * i + j}
                 for i, v in enumerate(all_ids) for j in range(20)]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))

    read = msrvtt.read(ann, tmp_path / "videos", split="1k-A", val_size=10)
    by_split = {s: [r for r in read.records if r.split == s] for s in ("train", "val", "test")}
    assert {s: len(v) for s, v in by_split.items()} == {"train": 30, "val": 10, "test": 30}
    assert all(len(r.captions) == 20 for r in by_split["train"] + by_split["val"])
    assert {r.video_id: r.captions for r in by_split["test"]} == {v: [s] for v, s in jsfusion.items()}
    seven = msrvtt.read(ann, tmp_path / "videos", split="7k", val_size=5).records
    assert [r.split for r in seven].count("train") == 25 and [r.split for r in seven].count("test") == 30


def test_didemo_paragraphs_counts_and_ids(tmp_path):
    moments = {s: json.loads((ANN / "didemo" / f"{s}_data.json").read_text()) for s in ("val", "test")}
    some = [moments["test"][0]["video"], moments["val"][0]["video"]]
    make_videos(tmp_path / "videos", [some[0], f"{some[1]}.mp4"])
    read = didemo.read(ANN / "didemo", tmp_path / "videos")
    assert [r.split for r in read.records].count("test") == 10 and [r.split for r in read.records].count("val") == 10
    by_id = {r.video_id: r for r in read.records}
    assert all("@" in vid for vid in by_id)
    assert by_id[some[0]].path == some[0] and by_id[some[1]].path == f"{some[1]}.mp4"
    for split, items in moments.items():
        for video in {m["video"] for m in items}:
            mine = [m for m in items if m["video"] == video]
            order = sorted(range(len(mine)), key=lambda i: (
                sum(t[0] for t in mine[i]["times"]) / len(mine[i]["times"]),
                sum(t[1] for t in mine[i]["times"]) / len(mine[i]["times"]), i))
            assert by_id[video].captions == [" ".join(mine[i]["description"].strip() for i in order)]
    for split in ("val", "test"):
        expected = n_over_64_tokens([r for r in read.records if r.split == split])
        assert read.metadata[f"paragraphs_over_64_tokens.{split}"] == str(expected)
        assert any(n.startswith(f"{split}: {expected} of 10 paragraphs exceed 64 CLIP tokens") for n in read.notes)


def test_activitynet_paragraphs_and_counts(tmp_path):
    read = activitynet.read(ANN / "activitynet", tmp_path, val_size=3)
    splits = [r.split for r in read.records]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (7, 3, 10)
    val1 = json.loads((ANN / "activitynet" / "val_1.json").read_text())
    by_id = {r.video_id: r for r in read.records}
    entry = val1["v_bXdq2zI1Ms0"]
    assert by_id["v_bXdq2zI1Ms0"].captions == [" ".join(s.strip() for s in entry["sentences"])]
    assert by_id["v_bXdq2zI1Ms0"].duration_s == entry["duration"]
    for split in ("train", "val", "test"):
        expected = n_over_64_tokens([r for r in read.records if r.split == split])
        assert read.metadata[f"paragraphs_over_64_tokens.{split}"] == str(expected)
    assert n_over_64_tokens([r for r in read.records if r.split == "test"]) == 2  # two long val_1 paragraphs


def test_lsmdc_format_example(tmp_path):
    make_videos(tmp_path / "videos" / "0001_American_Beauty", ["0001_American_Beauty_00.00.51.926-00.00.54.278.avi"])
    read = lsmdc.read(ANN / "LSMDC.FORMAT-EXAMPLE.csv", tmp_path / "videos")
    assert [(r.video_id, r.split, r.captions) for r in read.records][0] == (
        "0001_American_Beauty_00.00.51.926-00.00.54.278", "test", ["SOMEONE looks out of a window."])
    assert read.records[0].path == "0001_American_Beauty/0001_American_Beauty_00.00.51.926-00.00.54.278.avi"
    assert read.records[1].duration_s == pytest.approx(2.9)
