"""python -m retrieval.index + python -m retrieval.search with a fake fusion.api: results and refusals."""
from __future__ import annotations

import json

import pytest

from fake_fusion_api import FakeFusion, write_dataset
from retrieval.index import cli as index_cli, writer as index_writer
from retrieval.query import cli as search


@pytest.fixture
def indexed(tvr_home, monkeypatch):
    fake = FakeFusion().install(monkeypatch)
    write_dataset("toy", 25)
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    return fake


def test_help(capsys):
    for main in (search.main, index_cli.main):
        with pytest.raises(SystemExit) as done:
            main(["--help"])
        assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--dataset" in text and "--json" in text and "-k" in text and "--index-type" in text


def test_index_cli_writes_a_current_build(indexed, tvr_home, capsys):
    root = tvr_home / "indexes" / "toy" / "zero-shot"
    first = (root / "current").read_text().strip()
    capsys.readouterr()
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0     # a rebuild swaps the pointer
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
    assert top["video_id"] == "v7" and top["path"] == "videos/v7.mp4" and top["moments"] is None
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


# ---------------------------------------------------------------------------------------------
# Fine-grained models: two stages for free text; moments from the stored frame features
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hcmi_home(tmp_path_factory):
    """A fake feature store (30 videos, 32-d) and a tiny HCMI trained one epoch on it."""
    import torch

    from data.settings import get_settings
    from fake_features import write_fake_dataset
    from fusion.train import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = get_settings(tmp_path_factory.mktemp("tvr_home"))
    write_fake_dataset(settings, "fake", 30, seed=0, dims={"clip_frames": 32, "clip_text": 32})
    train("fake", "hcmi", overrides=["frame_layers=1", "text_layers=1", "train.batch_size=8", "heads=4"],
          epochs=1, run_id="hcmi", settings=settings, quiet=True)
    yield settings
    torch.set_num_threads(threads)


@pytest.fixture
def stored_text_tower(hcmi_home, monkeypatch):
    """The text tower replaced by a look-up of the stored caption tokens (random CLIP offline)."""
    import sys
    import types

    from fusion.features import load_features

    feats = load_features("fake", [], settings=hcmi_home)
    tokens = {feats.captions[q]: (feats.text.row(q).numpy(), int(feats.eot[q])) for q in range(len(feats.captions))}

    class Tower:
        precision = "fp32"

        def encode(self, captions):
            return [tokens[c] for c in captions]

    registry = types.ModuleType("extractors.registry")
    registry.build_text_encoder = lambda info, **kw: Tower()
    monkeypatch.setitem(sys.modules, "extractors.registry", registry)
    monkeypatch.setenv("TVR_HOME", str(hcmi_home.root))
    return list(tokens)


def test_hcmi_free_text_equals_brute_force_exact_ranking(hcmi_home, stored_text_tower):
    """With a first-stage depth covering the collection, the two-stage ranking of free text is the
    exact ranking over every video; a shallow depth re-ranks only its candidates."""
    import numpy as np

    from fusion.api import QueryEncoder, load_model
    from fusion.features import load_features
    from fusion.encoding import encode_videos, model_device, score_matrix
    from fusion.factory import modalities_for
    from retrieval.query.search import Searcher

    index_writer.build_from_model("fake", "hcmi", settings=hcmi_home, use_gpu=False)
    texts = stored_text_tower[::17][:6]
    searcher = Searcher("fake", "hcmi", settings=hcmi_home, rerank_depth=1000)
    found = searcher.search(texts, k=30)
    assert all(f["first_stage"]["depth"] == 1000 and f["model"] == "hcmi" for f in found)

    loaded = load_model("hcmi", settings=hcmi_home)               # brute force: every video, exactly
    feats = load_features("fake", modalities_for(loaded.config), settings=hcmi_home)
    video = encode_videos(loaded.model, feats, np.arange(len(feats.video_ids)), loaded.config,
                          model_device(loaded.model))
    queries = QueryEncoder(loaded, settings=hcmi_home).encode(texts)
    exact = score_matrix(loaded.model, queries.encoding, video)
    _, coarse = searcher.state.build.index.search(queries.vectors, 30)
    coarse_differs = 0
    for q, f in enumerate(found):
        order = np.argsort(-exact[q], kind="stable")
        assert [r["video_id"] for r in f["results"]] == [feats.video_ids[i] for i in order]
        np.testing.assert_allclose([r["score"] for r in f["results"]], exact[q][order], atol=1e-5)
        coarse_differs += [r["video_id"] for r in f["results"]] != [searcher.state.build.ids[i] for i in coarse[q]]
    assert coarse_differs > 0                 # the exact score really re-orders the coarse ranking
    shallow = Searcher("fake", "hcmi", settings=hcmi_home, rerank_depth=5).search(texts[:1], k=3)[0]
    assert shallow["first_stage"]["depth"] == 5 and len(shallow["results"]) == 3


def test_search_cli_states_the_first_stage_depth(hcmi_home, stored_text_tower, capsys):
    index_writer.build_from_model("fake", "hcmi", settings=hcmi_home, use_gpu=False)
    assert search.main([stored_text_tower[0], "--dataset", "fake", "--run", "hcmi", "-k", "4",
                        "--depth", "12", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["first_stage"]["depth"] == 12 and len(found["results"]) == 4
    assert search.main([stored_text_tower[0], "--dataset", "fake", "--run", "hcmi", "-k", "4"]) == 0
    assert "first stage: top 100 by the coarse vector, re-ranked exactly" in capsys.readouterr().out


def test_heuristic_moments_overlap_the_window_where_the_object_appears(tvr_home, monkeypatch):
    """Generated frame features: each video shows its object only in a known window (noise
    elsewhere); the best heuristic moment for a query naming the object must overlap that window
    for a clear majority of queries (the figure is printed: 59 of 60, seed 11); every moment lies
    inside the video (12 s) and none has zero length."""
    import numpy as np

    from data.settings import get_settings
    from data.store import ExtractorSpec, FeatureRow, FeatureSet
    from fake_fusion_api import IDS, _unit
    from retrieval.query.search import Searcher

    FakeFusion().install(monkeypatch)
    n, frames, step, dim = 60, 24, 0.5, 16
    ids = write_dataset("toy", n)
    rng = np.random.default_rng(11)
    windows, rows = {}, []
    for i, vid in enumerate(ids):
        length = int(rng.integers(3, 7))
        start = int(rng.integers(0, frames - length))
        values = rng.normal(size=(frames, dim)).astype(np.float32) * 0.35
        values[start:start + length] += _unit(f"object{i}", dim)
        windows[vid] = (start * step, (start + length) * step)
        rows.append(FeatureRow(vid, values, np.arange(frames) * step))
    spec = ExtractorSpec("clip_frames", dim, {"model": "generated"}, True)
    FeatureSet(get_settings().feature_dir("toy", "clip_frames", IDS["clip_frames"]), spec).write_shard(rows)
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    found = Searcher("toy").search([f"a clip of object{i}" for i in range(n)], k=n)
    overlaps = 0
    for i, f in enumerate(found):
        assert f["moments_from"] == "heuristic"
        hit = next(r for r in f["results"] if r["video_id"] == ids[i])
        assert hit["duration_s"] == frames * step and 1 <= len(hit["moments"]) <= 3
        best = hit["moments"][0]
        lo, hi = windows[ids[i]]
        overlaps += best["start_s"] < hi and best["end_s"] > lo
        for moment in hit["moments"]:
            assert 0 <= moment["start_s"] < moment["end_s"] <= hit["duration_s"]
        assert [m["score"] for m in hit["moments"]] == sorted((m["score"] for m in hit["moments"]), reverse=True)
    print(f"best moments overlapping the object's window: {overlaps}/{n} ({100 * overlaps / n:.0f}%)")
    assert overlaps / n >= 0.8
    one = Searcher("toy").search(["a clip of object3"], k=2, params={"moments": 1})[0]["results"]
    assert all(len(hit["moments"]) == 1 for hit in one)
    none = Searcher("toy").search(["a clip of object3"], k=2, params={"moments": 0})[0]
    assert none["moments_from"] is None and all(hit["moments"] is None for hit in none["results"])


def test_heuristic_moments_of_a_one_frame_video_have_a_length():
    """One frame at 0 s of a 1-second clip: the moment is 0-1 s, never 0-0 s; clipped to the duration."""
    import numpy as np

    from retrieval.query.spans import heuristic_moments

    assert heuristic_moments(np.array([0.3]), np.array([0.0]), 1.0, 1.0, 3) == [
        {"start_s": 0.0, "end_s": 1.0, "score": 0.3}]
    assert heuristic_moments(np.array([0.3]), np.array([0.0]), 1.0, 0.4, 3)[0]["end_s"] == 0.4
    got = heuristic_moments(np.array([0.1, 0.9, 0.2, 0.8, 0.0]), np.arange(5.0), 1.0, 5.0, 5)
    assert got[0] == {"start_s": 1.0, "end_s": 2.0, "score": 0.9} and len(got) >= 2
    covered = sorted((m["start_s"], m["end_s"]) for m in got)
    assert all(a[1] <= b[0] for a, b in zip(covered, covered[1:]))          # disjoint


def test_serving_run_is_the_default_run(indexed, tvr_home, capsys):
    """`retrieval.index --serve` records the run; search (and the service) default to it."""
    run = tvr_home / "runs" / "meanP-7"
    run.mkdir(parents=True)
    assert index_cli.main(["--dataset", "toy", "--run", str(run), "--no-gpu", "--serve"]) == 0
    assert "serving run of toy: meanP-7" in capsys.readouterr().out
    assert search.main(["a clip of v2", "--dataset", "toy", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["run"] == "meanP-7" and found["model"] == "meanP"
    assert search.main(["a clip of v2", "--dataset", "toy", "--run", "zero-shot", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"] == "zero-shot"
