"""Moments in search answers and the corpus moment mode, on a real tiny synthetic-events run with a
trained moment head (``events_home`` in tests/conftest.py): the head's moments per result, the
segment index beside the video index, the corpus mode against an exhaustive reference, the
service and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from retrieval.query import cli as search_cli
from retrieval.query.moments import corpus_moments
from retrieval.query.search import Searcher
from retrieval.service.app import create_app
from retrieval.service.core import SearchService
from retrieval.service.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
DATASET = "synthetic-events"


@pytest.fixture
def searcher(events_home, monkeypatch):
    monkeypatch.setenv("TVR_HOME", str(events_home))
    return Searcher(DATASET, "m2hf", device="cpu")


def _captions(searcher: Searcher, n: int) -> list[str]:
    return [caption for caption in searcher.state.captions.values()][:n]


def _valid(moment: dict, duration: float) -> bool:
    return 0 <= moment["start_s"] < moment["end_s"] <= duration + 1e-6


def test_results_carry_the_heads_moments(searcher):
    assert searcher.state.predictor is not None and searcher.state.build.segments is not None
    found = searcher.search(_captions(searcher, 4), 5)
    for answer in found:
        assert answer["moments_from"] == "model" and answer["mode"] == "videos"
        for hit in answer["results"]:
            assert 1 <= len(hit["moments"]) <= 3 and all(_valid(m, hit["duration_s"]) for m in hit["moments"])
            scores = [m["score"] for m in hit["moments"]]
            assert scores == sorted(scores, reverse=True)
    assert all(len(h["moments"]) == 1 for h in searcher.search(_captions(searcher, 1), 3,
                                                               params={"moments": 1})[0]["results"])
    off = searcher.search(_captions(searcher, 1), 3, params={"moments": 0})[0]
    assert off["moments_from"] is None and all(h["moments"] is None for h in off["results"])


def test_a_batch_of_queries_asks_the_head_once(searcher, monkeypatch):
    """The service's micro-batch: every query's result videos go to the head in one call, each
    query with its own videos and its own number of moments."""
    predictor = searcher.state.predictor
    asked, real = [], type(predictor).moments_each
    monkeypatch.setattr(type(predictor), "moments_each", lambda self, c, vids, n: (asked.append((vids, n)),
                                                                                   real(self, c, vids, n))[1])
    texts = _captions(searcher, 3)
    found = searcher.search(texts, [2, 4, 3], params=[{"moments": 1}, {"moments": 0}, None])
    assert len(asked) == 1 and asked[0][1] == 3                     # the largest n asked
    assert asked[0][0] == [[h["video_id"] for h in found[q]["results"]] for q in (0, 2)]
    assert [len(h["moments"]) for h in found[0]["results"]] == [1, 1] and found[1]["moments_from"] is None
    alone = searcher.search(texts[2:], 3)[0]
    for batched, lone in zip(found[2]["results"], alone["results"], strict=True):   # the same, to float rounding
        assert [(m["start_s"], m["end_s"]) for m in batched["moments"]] == [(m["start_s"], m["end_s"])
                                                                            for m in lone["moments"]]
        assert np.allclose([m["score"] for m in batched["moments"]], [m["score"] for m in lone["moments"]],
                           atol=1e-5)


def test_the_segment_index_is_part_of_the_build(searcher):
    build = searcher.state.build
    info = build.info["segments"]
    assert info["n_segments"] == build.segments.index.ntotal > len(build.ids) and info["window_s"] == 4.0
    assert {"segments.faiss", "segments.parquet"} <= set(build.info["checksums"])
    assert {vid for vid, _, _ in build.segments.keys} == set(build.ids)


def test_corpus_mode_equals_an_exhaustive_ranking_and_reads_only_its_candidates(searcher, monkeypatch):
    state = searcher.state
    predictor, segments = state.predictor, state.build.segments
    clip = searcher.encoder.encode(_captions(searcher, 3)).clip
    every = corpus_moments(predictor, segments, clip, 10, depth=segments.index.ntotal)
    for q, found in enumerate(every):
        proposed = predictor.moments(clip[q:q + 1], predictor.ids, 3)[0]
        reference = sorted(((score, vid, s, e) for vid, moments in zip(predictor.ids, proposed)
                            for s, e, score in moments), key=lambda t: -t[0])[:10]
        assert [(p["video_id"], p["start_s"], p["end_s"]) for p in found] == [(v, s, e) for _, v, s, e in reference]
        assert all(_valid(p, predictor.durations[p["video_id"]]) for p in found)
    asked = []
    real = type(predictor).moments_each
    monkeypatch.setattr(type(predictor), "moments_each", lambda self, c, vids, n: (asked.append(vids),
                                                                                   real(self, c, vids, n))[1])
    shallow = corpus_moments(predictor, segments, clip[:2], 5, depth=3)
    assert len(asked) == 1 and len(asked[0]) == 2                   # one call for both queries
    for videos, found in zip(asked[0], shallow):
        assert 1 <= len(videos) <= 3                                # only the videos of the top 3 windows
        assert {p["video_id"] for p in found} <= set(videos)


def test_service_and_cli_answer_moments(events_home, searcher, capsys):
    zero = SearchService(Searcher(DATASET, "zero-shot", device="cpu"), poll_s=0)
    service = SearchService(searcher, poll_s=0)
    settings = ServeSettings(dataset=DATASET, run="m2hf", indexes=[f"{DATASET}/zero-shot"])
    query = _captions(searcher, 1)[0]
    with TestClient(create_app(settings, [service, zero]), base_url="http://localhost") as client:
        videos = client.get("/api/search", params={"q": query, "k": 3}).json()
        assert videos["moments_from"] == "model"
        moment = videos["results"][0]["moments"][0]
        assert f"t={round((moment['start_s'] + moment['end_s']) / 2, 1)}" in moment["thumbnail"]
        corpus = client.get("/api/search", params={"q": query, "k": 6, "mode": "moments"})
        assert corpus.status_code == 200, corpus.text
        body = corpus.json()
        assert body["mode"] == "moments" and len(body["results"]) == 6 and body["space"].startswith("moments")
        assert all(0 <= h["start_s"] < h["end_s"] for h in body["results"])
        assert [h["score"] for h in body["results"]] == sorted((h["score"] for h in body["results"]), reverse=True)
        refused = client.get("/api/search", params={"q": query, "mode": "moments", "index": f"{DATASET}/zero-shot"})
        assert refused.status_code == 400 and "has no moment head" in refused.json()["error"]
        heuristic = client.get("/api/search", params={"q": query, "index": f"{DATASET}/zero-shot"}).json()
        assert heuristic["moments_from"] == "heuristic"
        assert client.get("/api/search", params={"like": "evt00000", "mode": "moments"}).status_code == 400
    zero.close()
    base = ["--dataset", DATASET, "--run", "m2hf", "-k", "3"]
    assert search_cli.main([query, *base, "--mode", "moments"]) == 0
    out = capsys.readouterr().out
    assert "moments from the moment head" in out and len([line for line in out.splitlines() if " s  " in line]) == 3
    assert search_cli.main([query, *base, "--moments", "1", "--json"]) == 0
    assert all(len(h["moments"]) == 1 for h in json.loads(capsys.readouterr().out)["results"])
    assert np.isfinite(moment["score"])


@pytest.mark.slow
def test_the_segment_index_survives_a_killed_build_and_its_damage_is_caught(events_home, tmp_path, monkeypatch):
    """kill -9 while a new build of the head's run writes its files (segments included): `current`
    still opens, segments and all; then a flipped byte in the answering build's segment index is
    caught by the checksums like one in the video index, and the next build repairs it."""
    import os
    import shutil
    import signal
    import subprocess
    import sys

    from retrieval.index import reader as index_reader
    from retrieval.index.faiss_index import IndexFolderError

    home = tmp_path / "home"
    shutil.copytree(events_home, home)
    monkeypatch.setenv("TVR_HOME", str(home))
    first = index_reader.open_build(DATASET, "m2hf", fallback=False)
    assert first.segments is not None
    argv = [sys.executable, "-m", "retrieval.index", "--dataset", DATASET, "--run", "m2hf", "--no-gpu"]
    env = {**os.environ, "TVR_HOME": str(home), "TVR_INDEX_CRASH_AT": "files-written"}
    child = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    after = index_reader.open_build(DATASET, "m2hf", fallback=False)
    assert after.build_id == first.build_id and after.segments.index.ntotal == first.segments.index.ntotal
    segments = after.folder / "segments.faiss"
    data = bytearray(segments.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segments.write_bytes(bytes(data))
    with pytest.raises(IndexFolderError, match="segments.faiss"):
        index_reader.open_build(DATASET, "m2hf", fallback=False)
    env.pop("TVR_INDEX_CRASH_AT")
    assert subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300).returncode == 0
    repaired = index_reader.open_build(DATASET, "m2hf", fallback=False)
    assert repaired.build_id != first.build_id and repaired.segments.index.ntotal == first.segments.index.ntotal
