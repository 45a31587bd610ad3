"""Searches by example (an image, a clip, a window of an indexed video, "more like this") on a real
extraction: the tiny synthetic set extracted with tiny random models (all four modalities), a tiny
M2HF trained one epoch, and its index (``examples_home`` in tests/conftest.py). The corpus's own
files, searched as examples, must land exactly where the corpus was encoded: that pins the example
path to the extraction and the model."""
from __future__ import annotations

import io
import json
import shutil
import tempfile
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from retrieval.query import cli as search_cli
from retrieval.query.examples import ExampleError, ExampleSearch
from retrieval.query.search import NotIndexed, Searcher
from retrieval.service.app import create_app
from retrieval.service.core import SearchService
from retrieval.service.settings import ServeSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def searcher(examples_home, monkeypatch):
    monkeypatch.setenv("TVR_HOME", str(examples_home))
    return Searcher("synthetic", "m2hf", device="cpu")


def _frame_png(path: Path, at_s: float) -> bytes:
    """The video's frame shown at ``at_s`` seconds, as PNG bytes."""
    with av.open(str(path)) as container:
        frames = [f for f in container.decode(video=0) if f.time is not None and f.time <= at_s]
    out = io.BytesIO()
    Image.fromarray(frames[-1].to_ndarray(format="rgb24")).save(out, format="PNG")
    return out.getvalue()


def test_a_clip_of_an_indexed_video_finds_it_with_its_indexed_score(searcher):
    examples = ExampleSearch(searcher)
    state = searcher.state
    for vid in state.build.ids[:3]:
        path, _ = searcher.video_path(vid)
        found = examples.clip(path, 3)
        stored = np.asarray(state.vectors[state.build.ids.index(vid)])
        assert found["query_kind"] == "clip" and found["space"].startswith("video-video")
        assert found["results"][0]["video_id"] == vid
        # the clip went through the same decode, extractors (frames, audio, motion) and model as the corpus
        assert found["results"][0]["score"] == pytest.approx(float(stored @ stored), rel=1e-4, abs=1e-5)
        assert found["random_weights"] is True and "RANDOM WEIGHTS" in found["WARNING"]


def test_a_window_of_an_indexed_video_and_bad_windows(searcher):
    examples = ExampleSearch(searcher)
    vid = searcher.state.build.ids[0]
    found = examples.video_window(vid, 4, 0.0, 1.5)
    assert found["query"] == f"clip {vid} 0-1.5 s" and len(found["results"]) == 4
    for start, end, message in ((2.0, 1.0, "the end must come after the start"), (-1.0, 1.0, "start >= 0"),
                                (0.0, 999.0, "ends past the video's end"), (1.0, None, "needs both")):
        with pytest.raises(ExampleError, match=message):
            examples.video_window(vid, 4, start, end)
    with pytest.raises(NotIndexed, match="no video 'ghost'"):
        examples.video_window("ghost", 4)
    with pytest.raises(NotIndexed):
        examples.like("ghost", 4)


def test_an_image_is_compared_with_each_videos_frames(searcher):
    examples = ExampleSearch(searcher)
    state = searcher.state
    vid = state.build.ids[1]
    png = _frame_png(searcher.video_path(vid)[0], 1.0)
    found = examples.image(png, 6, name="frame.png")
    assert found["query_kind"] == "image" and found["space"].startswith("frames")
    assert found["query"] == "image frame.png" and found["results"][0]["video_id"] == vid
    # the score is the cosine with the video's mean stored frame embedding, computed here by hand
    embedding = examples._extractors().image(png)
    unit = embedding / np.linalg.norm(embedding)
    for hit in found["results"]:
        values = state.frames.frames[hit["video_id"]][0]
        mean = values.mean(axis=0)
        assert hit["score"] == pytest.approx(float(mean @ unit / np.linalg.norm(mean)), abs=1e-5)
        assert hit["moments"] and hit["moments"][0]["end_s"] > hit["moments"][0]["start_s"]
    scores = [hit["score"] for hit in found["results"]]
    assert scores == sorted(scores, reverse=True)


def test_more_like_this_leaves_the_video_out(searcher):
    examples = ExampleSearch(searcher)
    state = searcher.state
    vid = state.build.ids[2]
    found = examples.like(vid, len(state.build.ids))
    ids = [hit["video_id"] for hit in found["results"]]
    assert vid not in ids and len(ids) == len(state.build.ids) - 1 and found["query_kind"] == "like"
    stored = np.asarray(state.vectors)
    query = stored[state.build.ids.index(vid)]
    for hit in found["results"]:
        assert hit["score"] == pytest.approx(float(stored[state.build.ids.index(hit["video_id"])] @ query), abs=1e-4)


def test_unreadable_examples_are_one_clear_error(searcher, tmp_path):
    examples = ExampleSearch(searcher)
    with pytest.raises(ExampleError, match="upload.png: not a readable image"):
        examples.image(b"this is not an image", 3, name="upload.png")
    good = searcher.video_path(searcher.state.build.ids[0])[0].read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(good[: len(good) // 8])
    with pytest.raises(ExampleError, match="broken.mp4"):
        examples.clip(broken, 3)


@pytest.fixture
def client(examples_home, monkeypatch):
    monkeypatch.setenv("TVR_HOME", str(examples_home))
    services = [SearchService(Searcher("synthetic", run, device="cpu"), poll_s=0) for run in ("m2hf", "zero-shot")]
    settings = ServeSettings(dataset="synthetic", run="m2hf", indexes=["synthetic/zero-shot"], max_upload_mb=0.5)
    with TestClient(create_app(settings, services), base_url="http://localhost") as c:
        yield c
    for service in services:
        service.close()


def _uploads_left() -> list[str]:
    return [p.name for p in Path(tempfile.gettempdir()).glob("tvr-example-*")]


def test_service_searches_by_example(client):
    ids = client.get("/api/search", params={"q": "a red ball", "k": 6}).json()
    vid = ids["results"][0]["video_id"]
    path = client.app.state.indexes.default.service.searcher.video_path(vid)[0]
    png = _frame_png(path, 1.0)
    found = client.post("/api/search?k=3&name=shot.png", content=png, headers={"Content-Type": "image/png"})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["query_kind"] == "image" and body["query"] == "image shot.png" and body["results"][0]["video_id"] == vid
    assert body["index_name"] == "synthetic/m2hf" and "index=synthetic%2Fm2hf" in body["results"][0]["thumbnail"]
    clip = client.post("/api/search?k=2", content=path.read_bytes(), headers={"Content-Type": "video/mp4"})
    assert clip.status_code == 200 and clip.json()["results"][0]["video_id"] == vid
    like = client.get("/api/search", params={"like": vid, "k": 3, "index": "synthetic/zero-shot"}).json()
    assert like["index_name"] == "synthetic/zero-shot" and vid not in [h["video_id"] for h in like["results"]]
    window = client.get("/api/search", params={"video_id": vid, "start_s": 0, "end_s": 2, "k": 2})
    assert window.status_code == 200 and window.json()["query_kind"] == "clip"
    assert _uploads_left() == []


def test_service_refuses_bad_examples_with_one_message(client, examples_home):
    thumbs = examples_home / "indexes" / "synthetic" / "m2hf" / ".thumbnails"
    before = sorted(p.name for p in thumbs.iterdir()) if thumbs.is_dir() else []
    vid = client.get("/api/search", params={"q": "x", "k": 1}).json()["results"][0]["video_id"]
    cases = [
        (client.post("/api/search", content=b"hello", headers={"Content-Type": "text/plain"}), 415, "send an image"),
        (client.post("/api/search", content=b"", headers={"Content-Type": "image/png"}), 400, "upload is empty"),
        (client.post("/api/search", content=b"\x89PNG nope", headers={"Content-Type": "image/png"}), 400,
         "not a readable image"),
        (client.post("/api/search", content=b"\x00" * 1000, headers={"Content-Type": "video/mp4"}), 400, "clip"),
        (client.post("/api/search", content=b"\x00" * (600 * 1024), headers={"Content-Type": "image/png"}), 413,
         "at most 0.5 MB"),
        (client.get("/api/search", params={"like": "ghost"}), 404, "no video 'ghost'"),
        (client.get("/api/search", params={"video_id": vid, "start_s": 3, "end_s": 1}), 400, "after the start"),
        (client.get("/api/search", params={"video_id": vid, "start_s": 0, "end_s": 500}), 400, "past the video's end"),
        (client.get("/api/search", params={"q": "x", "like": vid}), 400, "give one of q, like and video_id"),
        (client.get("/api/search", params={"q": "x", "start_s": 1}), 400, "give video_id too"),
        (client.get("/api/search", params={"q": "x", "index": "other/run"}), 404, "no index 'other/run'"),
    ]
    for response, status, message in cases:
        assert response.status_code == status and message in response.json()["error"], response.text
    assert _uploads_left() == []
    after = sorted(p.name for p in thumbs.iterdir()) if thumbs.is_dir() else []
    assert after == before                                 # nothing cached from a failed upload


def test_two_indexes_listed_picked_and_swapped_on_their_own(client):
    listed = client.get("/api/indexes").json()
    assert listed["default"] == "synthetic/m2hf"
    by_name = {one["name"]: one for one in listed["indexes"]}
    assert set(by_name) == {"synthetic/m2hf", "synthetic/zero-shot"} and client.get("/indexes").json() == listed
    assert by_name["synthetic/m2hf"]["model"] == "m2hf" and by_name["synthetic/zero-shot"]["model"] == "zero-shot"
    assert all(one["random_weights"] is True and one["n_vectors"] == 16 and one["build_id"] for one in by_name.values())
    answer = client.get("/api/search", params={"q": "a ball", "index": "synthetic/zero-shot"}).json()
    assert answer["run"] == "zero-shot" and answer["index_name"] == "synthetic/zero-shot"
    assert client.get("/api/info", params={"index": "synthetic/zero-shot"}).json()["model"] == "zero-shot"
    from retrieval.index import cli as index_cli

    assert index_cli.main(["--dataset", "synthetic", "--run", "zero-shot", "--no-gpu", "--store-vectors"]) == 0
    indexes = client.app.state.indexes
    assert indexes.get("synthetic/zero-shot").service.check_for_new_build() is True
    assert indexes.get("synthetic/m2hf").service.check_for_new_build() is False
    after = {one["name"]: one["build_id"] for one in client.get("/api/indexes").json()["indexes"]}
    assert after["synthetic/zero-shot"] != by_name["synthetic/zero-shot"]["build_id"]
    assert after["synthetic/m2hf"] == by_name["synthetic/m2hf"]["build_id"]
    assert client.get("/healthz").json()["indexes"] == {"synthetic/m2hf": "ok", "synthetic/zero-shot": "ok"}


def test_search_cli_takes_examples(examples_home, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("TVR_HOME", str(examples_home))
    searcher = Searcher("synthetic", "m2hf", device="cpu")
    vid = searcher.state.build.ids[0]
    path = searcher.video_path(vid)[0]
    image = tmp_path / "still.png"
    image.write_bytes(_frame_png(path, 1.0))
    base = ["--dataset", "synthetic", "--run", "m2hf", "-k", "2"]
    assert search_cli.main(["--image", str(image), *base]) == 0
    assert "'image still.png' (frames:" in capsys.readouterr().out
    assert search_cli.main(["--like", vid, *base, "--json"]) == 0
    assert vid not in [h["video_id"] for h in json.loads(capsys.readouterr().out)["results"]]
    assert search_cli.main(["--video-id", vid, "--start-s", "0", "--end-s", "1", *base]) == 0
    assert f"'clip {vid} 0-1 s' (video-video" in capsys.readouterr().out
    assert search_cli.main(base) == 2
    assert "give exactly one query" in capsys.readouterr().err
    assert search_cli.main(["words", "--like", vid, *base]) == 2
    assert "(got query, like)" in capsys.readouterr().err
    shutil.rmtree(tmp_path)
