"""Dataset protocols of issue 13: CLIP4Clip's MSVD pickle read safely, DiDeMo's standard split
lists, MSR-VTT with no validation hold-out."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from data import didemo, msrvtt, msvd
from data.manifest import ManifestError
from test_datasets import touch, write_msrvtt


def write_msvd_lists(ann: Path) -> None:
    (ann / "train_list.txt").write_text("a_1_2\nb_3_4\n")
    (ann / "test_list.txt").write_text("-c_5_6\n")


def test_msvd_raw_captions_pickle_is_read_as_plain_data(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    data = {"a_1_2": [["a", "cat", "eats"], ["the", "cat", "is", "eating"]], "b_3_4": [["a", "dog"]],
            "-c_5_6": [["a", "man", "sings"], "a man is singing"]}
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps(data, protocol=4))
    write_msvd_lists(ann)
    records = {r.video_id: r for r in msvd.read(ann, tmp_path / "videos").records}
    assert records["a_1_2"].captions == ["a cat eats", "the cat is eating"]
    assert records["-c_5_6"].captions == ["a man sings", "a man is singing"] and records["-c_5_6"].split == "test"


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_msvd_pickle_with_code_is_refused_without_running_it(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    marker = tmp_path / "ran"
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps({"a_1_2": [Payload(marker)]}))
    write_msvd_lists(ann)
    with pytest.raises(ManifestError, match=r"raw-captions\.pkl: not a plain-data pickle .*(posix|os)\.system.*convert it"):
        msvd.read(ann, tmp_path)
    assert not marker.exists()
    (ann / "raw-captions.pkl").write_bytes(pickle.dumps({"a_1_2": [["ok"], [3]]}))
    with pytest.raises(ManifestError, match=r"key 'a_1_2'\[1\]"):
        msvd.read(ann, tmp_path)


def test_didemo_split_lists_restrict_to_the_standard_videos(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    moments = [{"video": f"v{i}.mov", "description": f"moment {i}", "times": [[0, 1]]} for i in range(5)]
    (ann / "test_data.json").write_text(json.dumps(moments))
    raw = didemo.read(ann, tmp_path)
    assert len(raw.records) == 5 and raw.metadata["split_protocol"].startswith("raw")
    (ann / "test_list.txt").write_text("v0.mov\nv2.mov\nv3.mov\n")
    read = didemo.read(ann, tmp_path)
    assert sorted(r.video_id for r in read.records) == ["v0.mov", "v2.mov", "v3.mov"]
    assert read.metadata["split_protocol"] == "standard (split lists)"
    assert any("3 of the 5 videos of test_data.json are listed in test_list.txt" in n for n in read.notes)
    (ann / "test_list.txt").write_text("v0.mov\nv9.mov\n")
    with pytest.raises(ManifestError, match=r"test_list\.txt:2: video 'v9\.mov' is not in test_data\.json"):
        didemo.read(ann, tmp_path)


def test_msrvtt_val_size_zero_keeps_every_training_video(tmp_path):
    write_msrvtt(tmp_path / "ann")
    touch(tmp_path / "vid", "video0.mp4")
    read = msrvtt.read(tmp_path / "ann", tmp_path / "vid", split="1k-A", val_size=0)
    splits = [r.split for r in read.records]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (12, 0, 8)
    assert read.metadata["val"].startswith("none: every training video trains")
