"""Dataset readers on small inline samples written into tmp_path (always run)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from data import activitynet, didemo, lsmdc, msrvtt, msvd
from data.annotations import clip_token_count
from data.manifest import ManifestError, build_manifest, read_manifest
from data.prepare import DATASETS_INFO, READERS, main, prepare
from data.videofiles import VideoFiles


def touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")


def write_msrvtt(folder: Path, n: int = 20, captions: int = 3) -> None:
    """n videos video0..video{n-1}: 0-9 train, 10-11 validate, 12.. test in the official field."""
    folder.mkdir(parents=True, exist_ok=True)
    official = ["train"] * 10 + ["validate"] * 2 + ["test"] * (n - 12)
    videos = [{"video_id": f"video{i}", "split": official[i], "start time": 1.0, "end time": 11.5, "id": i}
              for i in range(n)]
    sentences = [{"caption": f"caption {j} of video {i}", "video_id": f"video{i}", "sen_id": i * captions + j}
                 for i in range(n) for j in range(captions)]
    (folder / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    (folder / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in range(12)))
    (folder / "MSRVTT_train.7k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in range(8)))
    (folder / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n"
        + "".join(f"ret{i},msr{i},video{i},\"the test sentence, of {i}\"\n" for i in range(12, n)))
    (folder / "train_list_miech.txt").write_text("".join(f"video{i}\n" for i in range(14)))
    (folder / "test_list_miech.txt").write_text("".join(f"video{i}\n" for i in range(14, n)))


# ---------------------------------------------------------------- video files


def test_video_files_found_by_id_whatever_the_extension(tmp_path):
    touch(tmp_path, "video1.mp4", "video2.AVI", "clip.v2.webm", "a@N08_1_x.mov.mp4", "b@N01_2_y.m4v",
          "trailing..mkv", "movie/0001_Film_00.00.51.926-00.00.54.278.avi", "dup.avi", "dup.mp4",
          "deep/dup.mp4", "notes.txt", ".hidden.mp4", "v_abc.mov", "xyz.mov")
    files = VideoFiles(tmp_path)
    assert files.find("video1") == "video1.mp4"
    assert files.find("video2") == "video2.AVI"
    assert files.find("clip.v2") == "clip.v2.webm"
    assert files.find("a@N08_1_x.mov") == "a@N08_1_x.mov.mp4"      # DiDeMo id + converted extension
    assert files.find("b@N01_2_y.m4v") == "b@N01_2_y.m4v"          # DiDeMo original file named as the id
    assert files.find("trailing.") == "trailing..mkv"              # id ending in a bare dot
    assert files.find("0001_Film_00.00.51.926-00.00.54.278") == "movie/0001_Film_00.00.51.926-00.00.54.278.avi"
    assert files.find("dup") == "dup.mp4"                           # preferred extension, shallowest
    assert files.find("notes") is None and files.find(".hidden") is None and files.find("nope") is None
    assert files.find("v_xyz", aliases=("xyz",)) == "xyz.mov"
    assert files.path_for("nope") == "nope.mp4"


def test_video_files_one_walk_no_stat_per_candidate(tmp_path, monkeypatch):
    import os

    touch(tmp_path, *(f"d{i % 3}/video{i}.{('mp4', 'avi', 'mkv')[i % 3]}" for i in range(60)))
    calls = []
    real_stat = os.stat
    monkeypatch.setattr(os, "stat", lambda *a, **k: calls.append(a[0]) or real_stat(*a, **k))
    files = VideoFiles(tmp_path)
    found = [files.find(f"video{i}") for i in range(70)]
    assert found[:60] == [f"d{i % 3}/video{i}.{('mp4', 'avi', 'mkv')[i % 3]}" for i in range(60)]
    assert found[60:] == [None] * 10
    assert len(calls) <= 1  # the root's is_dir(); lookups never touch the disk


def test_video_files_of_a_missing_folder_are_empty(tmp_path):
    files = VideoFiles(tmp_path / "absent")
    assert not files.exists and len(files) == 0 and files.find("x") is None


# ---------------------------------------------------------------- MSR-VTT


def test_msrvtt_1k_a_one_jsfusion_caption_per_test_video(tmp_path):
    write_msrvtt(tmp_path / "ann")
    touch(tmp_path / "vid", "video0.mp4", "video13.avi")
    read = msrvtt.read(tmp_path / "ann", tmp_path / "vid", split="1k-A", val_size=3)
    by_id = {r.video_id: r for r in read.records}
    splits = [r.split for r in read.records]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (9, 3, 8)
    assert by_id["video13"].captions == ["the test sentence, of 13"]
    assert by_id["video13"].path == "video13.avi" and by_id["video5"].path == "video5.mp4"
    assert all(len(r.captions) == 3 for r in read.records if r.split != "test")
    assert by_id["video0"].duration_s == pytest.approx(10.5)
    assert read.metadata["split_protocol"] == "1k-A"
    again = msrvtt.read(tmp_path / "ann", tmp_path / "vid", split="1k-A", val_size=3)
    assert {r.video_id for r in read.records if r.split == "val"} == {r.video_id for r in again.records if r.split == "val"}


def test_msrvtt_other_protocols(tmp_path):
    write_msrvtt(tmp_path / "ann")
    seven = msrvtt.read(tmp_path / "ann", tmp_path, split="7k", val_size=2)
    assert [r.split for r in seven.records].count("train") == 6 and len(seven.records) == 16
    assert any("left out" in note for note in seven.notes)
    onekb = {r.video_id: r for r in msrvtt.read(tmp_path / "ann", tmp_path, split="1k-B", val_size=4).records}
    assert onekb["video15"].split == "test" and onekb["video15"].captions == ["caption 0 of video 15"]
    full = msrvtt.read(tmp_path / "ann", tmp_path, split="full").records
    assert [r.split for r in full].count("val") == 2 and all(len(r.captions) == 3 for r in full)
    for name, ids in (("train", range(10)), ("val", (10, 11)), ("test", (12,))):
        (tmp_path / "ann" / f"{name}_list_full.txt").write_text("".join(f"video{i}\n" for i in ids))
    from_lists = msrvtt.read(tmp_path / "ann", tmp_path, split="full").records
    assert len(from_lists) == 13
    with pytest.raises(ManifestError, match="official val"):
        msrvtt.read(tmp_path / "ann", tmp_path, split="full", val_size=5)
    with pytest.raises(ManifestError, match="unknown split"):
        msrvtt.read(tmp_path / "ann", tmp_path, split="9k")


def test_msrvtt_errors_name_file_and_line_or_key(tmp_path):
    ann = tmp_path / "ann"
    write_msrvtt(ann)
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo99\n")
    with pytest.raises(ManifestError, match=r"MSRVTT_train\.9k\.csv:3: video 'video99' is not in MSRVTT_data\.json"):
        msrvtt.read(ann, tmp_path, val_size=0)
    write_msrvtt(ann)
    (ann / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr12,video12\n")
    with pytest.raises(ManifestError, match=r"JSFUSION_test\.csv:2: 3 columns, expected 4"):
        msrvtt.read(ann, tmp_path, val_size=0)
    write_msrvtt(ann)
    data = json.loads((ann / "MSRVTT_data.json").read_text())
    data["sentences"][4]["caption"] = 7
    (ann / "MSRVTT_data.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"sentences\[4\]\.caption: caption is 7; expected a non-empty string"):
        msrvtt.read(ann, tmp_path)
    (ann / "MSRVTT_data.json").write_text('{"videos": [\n{"video_id": "video0",}\n]}')
    with pytest.raises(ManifestError, match=r"MSRVTT_data\.json:2: not valid JSON"):
        msrvtt.read(ann, tmp_path)


def test_msrvtt_200k_captions_read_fast(tmp_path, capsys):
    """10,000 videos x 20 captions (MSR-VTT's size): reading + manifest building, timed."""
    ann = tmp_path / "ann"
    ann.mkdir()
    videos = [{"video_id": f"video{i}", "split": "train" if i < 6513 else "test", "start time": 0.0,
               "end time": 15.0} for i in range(10_000)]
    sentences = [{"caption": f"a person does thing number {j} in clip {i}", "video_id": f"video{i}", "sen_id": i * 20 + j}
                 for i in range(10_000) for j in range(20)]
    (ann / "MSRVTT_data.json").write_text(json.dumps({"videos": videos, "sentences": sentences}))
    (ann / "MSRVTT_train.9k.csv").write_text("video_id\n" + "".join(f"video{i}\n" for i in range(9000)))
    (ann / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n" + "".join(f"ret{i},msr{i},video{i},query {i}\n" for i in range(9000, 10_000)))
    start = time.perf_counter()
    read = msrvtt.read(ann, tmp_path / "videos")
    table, report = build_manifest(read.records, tmp_path / "videos", dataset="msrvtt")
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n[msrvtt 10,000 videos x 20 captions: read + manifest in {seconds:.2f} s]")
    assert report.splits == {"train": 8000, "val": 1000, "test": 1000}
    assert report.n_captions == 9000 * 20 + 1000 and len(report.missing) == 10_000


# ---------------------------------------------------------------- MSVD, LSMDC


def test_msvd_every_caption_kept_and_errors(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    caps = {"-4wsuPCjDBc_5_15": ["a squirrel eats", "a chipmunk eats"], "bQJQGoJF7_k_162_169": ["a man cooks"],
            "x_1_2": ["c"]}
    (ann / "captions_msvd.json").write_text(json.dumps(caps))
    (ann / "train_list.txt").write_text("bQJQGoJF7_k_162_169\n")
    (ann / "test_list.txt").write_text("-4wsuPCjDBc_5_15\n\n")
    touch(tmp_path / "YouTubeClips", "-4wsuPCjDBc_5_15.avi")
    records = {r.video_id: r for r in msvd.read(ann, tmp_path / "YouTubeClips").records}
    assert records["-4wsuPCjDBc_5_15"].captions == caps["-4wsuPCjDBc_5_15"]
    assert records["-4wsuPCjDBc_5_15"].path == "-4wsuPCjDBc_5_15.avi" and set(records) == set(caps) - {"x_1_2"}
    (ann / "val_list.txt").write_text("x_1_2\nmissing_id\n")
    with pytest.raises(ManifestError, match=r"val_list\.txt:2: video 'missing_id' has no captions"):
        msvd.read(ann, tmp_path)
    (ann / "val_list.txt").write_text("bQJQGoJF7_k_162_169\n")
    with pytest.raises(ManifestError, match=r"val_list\.txt:1: .* also in the train list"):
        msvd.read(ann, tmp_path)
    (ann / "captions_msvd.json").write_text(json.dumps({**caps, "x_1_2": ["ok", "  "]}))
    with pytest.raises(ManifestError, match=r"key 'x_1_2'\[1\]: caption is '  '"):
        msvd.read(ann, tmp_path)


LSMDC_ROW = "0001_Film_00.00.51.926-00.00.54.278\t00.00.51.926\t00.00.54.278\t00.00.51.500\t00.00.54.500\tSOMEONE looks out.\n"


def test_lsmdc_rows_and_errors(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "LSMDC16_challenge_1000_publictect.csv").write_text(LSMDC_ROW)
    (ann / "LSMDC16_annos_training.csv").write_text(LSMDC_ROW.replace("0001_Film_00.00.51", "0002_Film_00.00.51")
                                                    .replace("\tSOMEONE", "\tHe waves.\n0002_Film_00.00.51.926-00.00.54.278"
                                                             "\t00.00.51.926\t00.00.54.278\t00.00.51.500\t00.00.54.500\tSOMEONE"))
    records = {r.video_id: r for r in lsmdc.read(ann, tmp_path).records}
    assert records["0001_Film_00.00.51.926-00.00.54.278"].split == "test"
    assert records["0002_Film_00.00.51.926-00.00.54.278"].captions == ["He waves.", "SOMEONE looks out."]
    assert records["0001_Film_00.00.51.926-00.00.54.278"].duration_s == pytest.approx(2.352)
    (ann / "LSMDC16_annos_val.csv").write_text(LSMDC_ROW.replace("0001", "0003") + "0004_x\t00.00.01.000\tonly three\n")
    with pytest.raises(ManifestError, match=r"LSMDC16_annos_val\.csv:2: 3 tab-separated columns, expected 6"):
        lsmdc.read(ann, tmp_path)
    (ann / "LSMDC16_annos_val.csv").write_text(LSMDC_ROW.replace("0001", "0003").replace("\t00.00.54.500", "\t54.5"))
    with pytest.raises(ManifestError, match=r"LSMDC16_annos_val\.csv:1: timestamp '54.5'"):
        lsmdc.read(ann, tmp_path)


# ---------------------------------------------------------------- paragraphs


def test_didemo_paragraphs_in_time_order_and_ids(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    moments = [
        {"video": "1@N08_2_ab.", "description": "then he jumps.", "times": [[3, 3], [2, 3]], "annotation_id": 1},
        {"video": "1@N08_2_ab.", "description": "a man stands.", "times": [[0, 0], [0, 1]], "annotation_id": 2},
        {"video": "1@N08_2_ab.", "description": "finally he lands", "times": [[4, 5]], "annotation_id": 3},
        {"video": "9@N00_3_cd.mov", "description": "a dog", "times": [[0, 5]], "annotation_id": 4},
    ]
    (ann / "test_data.json").write_text(json.dumps(moments))
    touch(tmp_path / "videos", "1@N08_2_ab..mp4", "9@N00_3_cd.mov")
    read = didemo.read(ann, tmp_path / "videos")
    by_id = {r.video_id: r for r in read.records}
    assert by_id["1@N08_2_ab."].captions == ["a man stands. then he jumps. finally he lands"]
    assert by_id["1@N08_2_ab."].path == "1@N08_2_ab..mp4" and by_id["9@N00_3_cd.mov"].path == "9@N00_3_cd.mov"
    assert read.metadata["paragraphs_over_64_tokens.test"] == "0"
    moments[2]["times"] = "4-5"
    (ann / "test_data.json").write_text(json.dumps(moments))
    with pytest.raises(ManifestError, match=r"test_data\.json: \[2\]\.times: expected a list"):
        didemo.read(ann, tmp_path)
    moments[2]["times"], moments[3]["description"] = [[4, 5]], ""
    (ann / "test_data.json").write_text(json.dumps(moments))
    with pytest.raises(ManifestError, match=r"\[3\]\.description: caption is ''"):
        didemo.read(ann, tmp_path)


def test_activitynet_paragraphs_long_ones_counted(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    long = " ".join(["a person keeps doing many different exercises on the floor"] * 8)
    val = {"v_a": {"duration": 20.0, "timestamps": [[9.0, 12.0], [0.0, 5.0]], "sentences": [" Then it ends.", "It starts."]},
           "v_b": {"duration": 30.0, "timestamps": [[0, 30]], "sentences": [long]}}
    train = {f"v_t{i}": {"duration": 5, "timestamps": [[0, 5]], "sentences": [f"train {i}"]} for i in range(6)}
    (ann / "val_1.json").write_text(json.dumps(val))
    (ann / "train.json").write_text(json.dumps(train))
    touch(tmp_path / "videos", "a.mp4")
    read = activitynet.read(ann, tmp_path / "videos", val_size=2)
    by_id = {r.video_id: r for r in read.records}
    assert by_id["v_a"].captions == ["It starts. Then it ends."] and by_id["v_a"].path == "a.mp4"
    assert [r.split for r in read.records].count("val") == 2
    assert clip_token_count(long) > 64 and read.metadata["paragraphs_over_64_tokens.test"] == "1"
    assert any("1 of 2 paragraphs exceed 64" in n for n in read.notes)
    val["v_a"]["timestamps"] = [[0, 5]]
    (ann / "val_1.json").write_text(json.dumps(val))
    with pytest.raises(ManifestError, match=r"val_1\.json: key 'v_a': 2 sentences but 1 timestamps"):
        activitynet.read(ann, tmp_path, val_size=2)
    (ann / "val_1.json").write_text("{broken")
    with pytest.raises(ManifestError, match=r"val_1\.json:1: not valid JSON"):
        activitynet.read(ann, tmp_path)


# ---------------------------------------------------------------- prepare


def test_every_reader_has_a_protocol():
    assert set(DATASETS_INFO) == set(READERS)
    assert DATASETS_INFO["didemo"].text_unit == DATASETS_INFO["activitynet"].text_unit == "paragraph"
    assert DATASETS_INFO["msvd"].text_unit == "caption"


def test_prepare_cli_writes_manifest_missing_list_and_protocol(tmp_path, tvr_home, capsys):
    write_msrvtt(tmp_path / "ann")
    touch(tmp_path / "videos", *(f"sub/video{i}.webm" for i in range(18)))
    rc = main(["msrvtt", "--annotations", str(tmp_path / "ann"), "--videos", str(tmp_path / "videos"),
               "--split", "1k-B", "--val-size", "4"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 video files missing" in out and "split protocol 1k-B" in out
    manifest = read_manifest(tvr_home / "datasets" / "msrvtt" / "manifest.parquet")
    assert manifest.metadata["split_protocol"] == "1k-B" and manifest.metadata["reader"] == "msrvtt"
    assert manifest.metadata["test_queries"] == msrvtt.TEST_QUERIES["1k-B"]
    assert manifest.split("val").metadata["split_protocol"] == "1k-B"
    assert len(manifest.split("test")) == 6 and len(manifest.split("val")) == 4
    missing = (tvr_home / "datasets" / "msrvtt" / "missing_videos.txt").read_text().split()
    assert missing == ["video18", "video19"]
    report = json.loads((tvr_home / "datasets" / "msrvtt" / "prepare_report.json").read_text())
    assert report["n_missing"] == 2 and report["metadata"]["text_unit"] == "caption"
    assert main(["msrvtt", "--annotations", str(tmp_path / "ann"), "--videos", str(tmp_path / "videos"),
                 "--split", "1k-B", "--val-size", "4", "--strict"]) == 2
    assert "2 video files missing" in capsys.readouterr().err
    with pytest.raises(ManifestError, match="takes no option split"):
        prepare("msvd", tmp_path, tmp_path, split="7k")


# ---------------------------------------------------------------- folder (a user's own collection)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


def docs_block(lang: str) -> str:
    """The first ```<lang> code block of docs/datasets.md (the documented folder examples)."""
    text = DOCS.read_text()
    start = text.index(f"```{lang}\n") + len(lang) + 4
    return text[start:text.index("```", start)]


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_folder_documented_examples_build(tmp_path, tvr_home, suffix):
    (tmp_path / f"captions.{suffix}").write_text(docs_block(suffix))
    touch(tmp_path / "videos", "clips/cat.mp4", "clips/dog.webm")
    out, report = prepare("folder", tmp_path / f"captions.{suffix}", tmp_path / "videos", name="pets")
    manifest = read_manifest(out)
    rows = {r.video_id: r for r in manifest.records()}
    assert rows["clips/cat"].captions[:2] == ["a cat jumps onto a table", "a kitten leaps"]
    assert rows["clips/cat"].split == "train"
    assert rows["clips/dog"].split in ("train", "val", "test")  # assigned from the id hash
    assert report.missing == ["surf-2024" if suffix == "jsonl" else "surf"]
    assert manifest.metadata["reader"] == "folder" and manifest.dataset == "pets"


def test_folder_errors_name_the_line(tmp_path):
    from data import folder

    bad = tmp_path / "c.csv"
    bad.write_text("video,caption,duration_s\na.mp4,x,4\na.mp4,y,3\n")
    with pytest.raises(ManifestError, match=r"c\.csv:3: duration_s '3' contradicts '4' .*c\.csv:2"):
        folder.read_records(bad)
    bad.write_text("video,caption,duration_s\na.mp4,x,long\n")
    with pytest.raises(ManifestError, match=r"c\.csv:2: 'duration_s' is 'long'"):
        folder.read_records(bad)
    bad.write_text("path,text\na.mp4,x\n")
    with pytest.raises(ManifestError, match=r"lacks 'video' and 'caption'"):
        folder.read_records(bad)
    jl = tmp_path / "c.jsonl"
    jl.write_text('{"video": "a.mp4", "captions": ["x"]}\n{"video": "b.mp4", "captions": "y"}\n')
    with pytest.raises(ManifestError, match=r"c\.jsonl:2: 'captions' must be a list"):
        folder.read_records(jl)
