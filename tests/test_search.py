"""python -m retrieval.index + python -m retrieval.search with a fake fusion.api: results and refusals."""
from __future__ import annotations

import json

import pytest

from fake_fusion_api import FakeFusion, write_dataset
from retrieval import index as rindex
from retrieval import search


@pytest.fixture
def indexed(tvr_home, monkeypatch):
    fake = FakeFusion().install(monkeypatch)
    write_dataset("toy", 25)
    assert rindex.main(["--dataset", "toy", "--no-gpu"]) == 0
    return fake


def test_help(capsys):
    for main in (search.main, rindex.main):
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--dataset" in text and "--json" in text and "-k" in text and "--index-type" in text


def test_index_cli_writes_a_current_build(indexed, tvr_home, capsys):
    root = tvr_home / "indexes" / "toy" / "zero-shot"
    first = (root / "current").read_text().strip()
    capsys.readouterr()
    assert rindex.main(["--dataset", "toy", "--no-gpu"]) == 0     # a rebuild swaps the pointer
    build = root / (root / "current").read_text().strip()
    assert build.name != first and (root / first).is_dir()
    info = json.loads((build / "info.json").read_text())
    assert info["n_vectors"] == 25 and info["index_type"] == "flat" and info["splits"] == ["test"]
    assert info["extractor_ids"] == indexed.extractor_ids and info["random_weights"] is True
    assert "RANDOM WEIGHTS" in capsys.readouterr().out


def test_search_json_top_k(indexed, capsys):
    assert search.main(["a clip of v7", "--dataset", "toy", "-k", "3", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in found["results"]] == [1, 2, 3]
    top = found["results"][0]
    assert top["video_id"] == "v7" and top["path"] == "videos/v7.mp4" and top["spans"] is None
    assert top["abs_path"].endswith("media/toy/videos/v7.mp4")
    assert top["score"] == pytest.approx(1.0, abs=1e-5)          # unit vectors, the same direction
    scores = [r["score"] for r in found["results"]]
    assert scores == sorted(scores, reverse=True)
    assert found["random_weights"] is True and "WARNING" in found and found["run"] == "zero-shot"


def test_search_text_output(indexed, capsys):
    assert search.main(["a clip of v3", "--dataset", "toy", "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in text and "v3  videos/v3.mp4" in text


def test_refuses_missing_run_and_missing_index(tvr_home, monkeypatch, capsys):
    FakeFusion().install(monkeypatch)
    write_dataset("toy", 5)
    assert search.main(["x", "--dataset", "toy", "--run", "ghost"]) == 2
    assert "no run 'ghost'" in capsys.readouterr().err
    assert search.main(["x", "--dataset", "toy"]) == 2
    assert "no index for dataset 'toy', run 'zero-shot'" in capsys.readouterr().err


def test_refuses_other_extractor_another_manifest_or_dimension(indexed, monkeypatch, capsys):
    indexed.extractor_ids = {**indexed.extractor_ids, "clip_text": "other02"}
    assert search.main(["a clip of v1", "--dataset", "toy"]) == 2
    assert "other extractor ids than the model uses now (clip_text: index text01, model other02)" in capsys.readouterr().err
    indexed.extractor_ids["clip_text"] = "text01"
    indexed.query_dim = 8
    assert search.main(["a clip of v1", "--dataset", "toy"]) == 2
    assert "dimension mismatch: the model's query vectors have 8 dimensions" in capsys.readouterr().err
    indexed.query_dim = None
    write_dataset("toy", 5)                                # 5 of the index's 25 videos: another manifest
    assert search.main(["a clip of v1", "--dataset", "toy"]) == 2
    assert "was built for another manifest: only 5 of its 25 videos" in capsys.readouterr().err


def test_stale_index_answers_and_hides_removed_videos(indexed, capsys):
    """Videos added and removed since the build (re-indexing pending or running): the old build answers."""
    write_dataset("toy", 20)                               # v20..v24 removed
    assert search.main(["a clip of v22", "--dataset", "toy", "-k", "25", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    ids = [r["video_id"] for r in found["results"]]
    assert len(ids) == 20 and not {"v20", "v21", "v22", "v23", "v24"} & set(ids)
    assert "stale index" in found["note"] and "5 removed videos are hidden" in found["note"]
    write_dataset("toy", 26)                               # one more video than indexed
    assert search.main(["a clip of v1", "--dataset", "toy", "-k", "1", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["results"][0]["video_id"] == "v1" and "1 videos are not indexed yet" in found["note"]
