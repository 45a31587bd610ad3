"""The search service (retrieval.serve / retrieval.service) over a fake model (long: one fixture
shared by every route's contract; searches by example are tests/test_search_examples.py): results equal
retrieval.search --json, bad input gets 4xx JSON, thumbnails and video ranges, micro-batching,
hot swaps (and a failing new build), and a loopback load test with a re-index mid-load."""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from fake_fusion_api import IDS, FakeFusion, write_dataset
from serve_support import indexed_dataset, sample_video
from test_reindex import home  # noqa: F401 (a fixture: tiny synthetic videos, real extraction, first reindex)

from retrieval.index import cli as index_cli, writer as index_writer
from retrieval.query import cli as search_cli, search
from retrieval.query.search import Searcher
from retrieval.service import serve
from retrieval.service.app import create_app
from retrieval.service.core import SearchService
from retrieval.service.settings import ServeSettings
from service_thread import serve_in_thread


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return sample_video(tmp_path_factory.mktemp("video"))


@pytest.fixture
def service(tvr_home, monkeypatch, video):
    fake = FakeFusion().install(monkeypatch)
    indexed_dataset("toy", 25, video)
    svc = SearchService(Searcher("toy"), poll_s=0)
    svc.fake = fake
    yield svc
    svc.close()


@pytest.fixture
def client(service):
    with TestClient(create_app(ServeSettings(dataset="toy"), service), base_url="http://localhost") as c:
        yield c


def _strip_media(found: dict) -> dict:
    """The service's answer less what only it adds: media URLs and the name of the index that answered."""
    assert found.pop("index_name") == f"{found['dataset']}/{found['run']}"
    for hit in found["results"]:
        hit.pop("thumbnail"), hit.pop("video")
    return found


def _relative(found: dict) -> dict:
    """The CLI's JSON as the service answers by default: paths relative to the video root only."""
    for hit in found["results"]:
        hit.pop("abs_path")
    return found


def test_results_equal_search_cli_json(client, capsys):
    for query, k in (("a clip of v7", 5), ("a clip of v13", 25), ("a clip of nothing in particular", 3)):
        served = client.get("/api/search", params={"q": query, "k": k})
        assert served.status_code == 200
        assert search_cli.main([query, "--dataset", "toy", "-k", str(k), "--json"]) == 0
        assert _strip_media(served.json()) == _relative(json.loads(capsys.readouterr().out))
    top = client.get("/api/search", params={"q": "a clip of v7", "k": 1}).json()["results"][0]
    assert top["video_id"] == "v7" and top["thumbnail"] == "/thumbnails/v7.jpg?index=toy%2Fzero-shot"
    assert top["video"] == "/videos/v7?index=toy%2Fzero-shot"


def test_health_info_and_page(client, service):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["build_id"] == service.searcher.state.build_id
    assert health["run"] == "zero-shot" and health["random_weights"] is True and health["problem"] is None
    info = client.get("/api/info").json()
    assert info["index"]["n_vectors"] == 25 and info["batching"]["max_batch"] == 64
    page = client.get("/")
    assert page.status_code == 200 and 'id="q"' in page.text and "RANDOM WEIGHTS" in page.text


@pytest.mark.parametrize("query, status, message", [
    ("q=", 400, "empty query"),
    ("q=%20%20%09", 400, "empty query"),
    ("k=3", 400, "empty query"),
    ("q=ball&k=0", 422, "k: Input should be greater than or equal to 1"),
    ("q=ball&k=1001", 422, "k: Input should be less than or equal to 1000"),
    ("q=ball&k=ten", 422, "k: Input should be a valid integer"),
    ("q=ball&k=2.5", 422, "k: Input should be a valid integer"),
    ("q=" + "a" * 1001, 400, "query too long: 1001 characters"),
    ("q=%FF%FEball", 400, "not valid UTF-8"),
])
def test_bad_search_input_is_a_4xx_naming_the_problem(client, query, status, message):
    response = client.get("/api/search?" + query)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_unknown_and_invalid_video_ids(client):
    for url in ("/videos/nope", "/thumbnails/nope.jpg"):
        response = client.get(url)
        assert response.status_code == 404 and "no video 'nope' in index build" in response.json()["error"]
    assert client.get("/thumbnails/v1.png").status_code == 404
    response = client.get("/videos/.hidden")
    assert response.status_code == 400 and "video id '.hidden' starts with '.'" in response.json()["error"]
    response = client.get("/videos/a%0Ab")
    assert response.status_code == 400 and "control character" in response.json()["error"]
    assert client.get("/thumbnails/v1.jpg?t=-1").status_code == 422


def test_thumbnails_are_cached_and_videos_serve_ranges(client, tvr_home, video):
    response = client.get("/thumbnails/v3.jpg?t=1.5")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert response.content[:3] == b"\xff\xd8\xff"
    cached = list((tvr_home / "indexes" / "toy" / "zero-shot" / ".thumbnails").glob("*-1500ms-*.jpg"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_ino
    assert client.get("/thumbnails/v3.jpg?t=1.5").content == response.content
    assert cached[0].stat().st_ino == stamp                          # served from the cache, not rewritten
    assert client.get("/thumbnails/v3.jpg").status_code == 200      # the middle of the video
    full = video.read_bytes()
    ranged = client.get("/videos/v3", headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == full[100:200]
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(full)}"
    assert client.get("/videos/v3").content == full
    assert client.get("/videos/v3", headers={"Range": f"bytes={len(full) + 5}-"}).status_code == 416


def test_thumbnail_seeks_to_the_moment(tmp_path, video):
    """Frames at different moments differ (the pattern moves), and the middle is the default."""
    from retrieval.service.media import frame_at

    early, late, middle = frame_at(video, 0.2), frame_at(video, 3.5), frame_at(video, None)
    assert early.tobytes() != late.tobytes()
    assert middle.tobytes() == frame_at(video, 2.0).tobytes()


def test_concurrent_queries_share_model_calls(service):
    """16 threads, 64 queries with different k: fewer model calls than queries, each answer its own."""
    batched = SearchService(service.searcher, poll_s=0, wait_s=0.05)
    texts = [f"a clip of v{i % 25}" for i in range(64)]
    try:
        with ThreadPoolExecutor(16) as pool:
            found = list(pool.map(lambda i: batched.query(texts[i], 1 + i % 5), range(64)))
    finally:
        batched.close()
    assert [f["results"][0]["video_id"] for f in found] == [t.split(" of ")[-1] for t in texts]
    assert [len(f["results"]) for f in found] == [1 + i % 5 for i in range(64)]
    sizes = [call[1] for call in service.fake.calls if call[0] == "encode"]
    assert sum(sizes) == 64 and max(sizes) > 1 and len(sizes) < 64
    counters = batched.info()["batching"]
    assert counters["batches"] == len(sizes) and counters["queries"] == 64 and counters["busy_s"] > 0


def test_a_lone_query_does_not_wait_for_a_batch():
    """One request alone is answered at once, whatever ``wait_s``; queued ones still share a call."""
    from retrieval.service.batcher import MicroBatcher

    calls, gate, entered = [], threading.Event(), threading.Event()

    def answer(texts, ks, params):
        entered.set()
        gate.wait(5)
        calls.append(list(texts))
        return [t.upper() for t in texts]

    batcher = MicroBatcher(answer, wait_s=2.0)
    try:
        gate.set()
        start = time.monotonic()
        assert batcher.submit("alone", 1).result(5) == "ALONE"
        assert time.monotonic() - start < 1.0          # not the 2 s batch wait
        gate.clear()
        entered.clear()
        blocker = batcher.submit("first", 1)           # holds the worker until the gate opens
        assert entered.wait(5)
        queued = [batcher.submit(f"q{i}", 1) for i in range(5)]
        gate.set()
        assert blocker.result(5) == "FIRST" and [f.result(5) for f in queued] == [f"Q{i}" for i in range(5)]
    finally:
        batcher.close()
    assert calls[0] == ["alone"] and ["q0", "q1", "q2", "q3", "q4"] in calls


def test_a_lone_query_runs_on_lone_threads_and_a_batch_on_all(service):
    """``lone_threads``: a batch of one query is encoded with that many torch threads, a batch of
    several with the threads torch had when the service started; unset, torch is left alone."""
    import torch

    before = torch.get_num_threads()
    seen = []
    search = service.searcher.search
    service.searcher.search = lambda texts, *a, **kw: seen.append(torch.get_num_threads()) or search(texts, *a, **kw)
    try:
        torch.set_num_threads(2)
        tuned = SearchService(service.searcher, poll_s=0, lone_threads=1)
        tuned._answer(["a clip of v1"], [3], [None])
        tuned._answer(["a clip of v1", "a clip of v2"], [3, 3], [None, None])
        tuned._answer(["a clip of v3"], [3], [None])
        assert tuned.info()["batching"]["threads"] == {"lone": 1, "batch": 2}
        tuned.close()
        untouched = SearchService(service.searcher, poll_s=0)
        untouched._answer(["a clip of v4"], [3], [None])
        untouched.close()
        assert seen == [1, 2, 1, 1]         # the last: torch left at what the previous lone query set
    finally:
        torch.set_num_threads(before)


def test_hot_swap_and_a_failing_new_build(client, service, tvr_home):
    old = service.searcher.state.build_id
    write_dataset("toy", 28)                                     # 3 new videos
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    assert service.check_for_new_build()
    new = client.get("/api/search", params={"q": "a clip of v27", "k": 1}).json()
    assert new["index"]["build_id"] != old and new["results"][0]["video_id"] == "v27"
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["build_id"] == new["index"]["build_id"]
    # a new build for other extractors cannot serve this model: the old one keeps answering
    ids = [f"v{i}" for i in range(28)]
    other = index_writer.write_build("toy", "zero-shot", FakeFusion().encode_split(None, "toy", "test").video_vectors,
                               ids, info={"extractor_ids": {**IDS, "clip_text": "zzz"},
                                          "random_weights": True, "model": "zero-shot"}, use_gpu=False)
    assert not service.check_for_new_build()
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and health["build_id"] == new["index"]["build_id"]
    assert f"build '{other.name}' could not be opened" in health["problem"]
    answered = client.get("/api/search", params={"q": "a clip of v2"}).json()
    assert answered["index"]["build_id"] == new["index"]["build_id"]


def test_watcher_swaps_in_the_background(service):
    svc = SearchService(service.searcher, poll_s=0.05)
    try:
        old = svc.searcher.state.build_id
        write_dataset("toy", 26)
        assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
        deadline = time.monotonic() + 10
        while svc.searcher.state.build_id == old and time.monotonic() < deadline:
            time.sleep(0.02)
        assert svc.searcher.state.build_id != old and svc.swaps == 1
        assert svc.query("a clip of v25", 1)["results"][0]["video_id"] == "v25"
    finally:
        svc.close()


def test_cli_refuses_clearly(tvr_home, monkeypatch, capsys):
    FakeFusion().install(monkeypatch)
    write_dataset("toy", 5)
    assert serve.main(["--dataset", "toy"]) == 2
    assert "no index for dataset 'toy', run 'zero-shot'" in capsys.readouterr().err
    assert serve.main(["--dataset", "../etc"]) == 2
    assert "dataset '../etc'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main(["--help"])
    assert "default: loopback only" in capsys.readouterr().out


def load_with_a_swap(svc: SearchService, dataset: str, queries: list[str], reindex,
                     other: SearchService | None = None) -> tuple[str, str]:
    """400 queries from 16 threads over loopback HTTP; after 100 answers ``reindex()`` publishes a new
    build (the service's watcher swaps it in); the last 5 queries of each thread are sent after the
    swap. Asserts zero errors and that every query sent after the swap answered from the new build;
    returns (old, new) build ids. ``other``: a second index served beside it, which every other
    query of odd threads asks (``?index=``); its answers must all come from its own build."""
    services = [svc] + ([other] if other is not None else [])
    names = [f"{s.searcher.dataset}/{s.searcher.run}" for s in services]
    app = create_app(ServeSettings(dataset=dataset, indexes=names[1:]), services if other else svc)
    old = svc.searcher.state.build_id
    others = []
    done, errors, answers = [], [], []
    lock = threading.Lock()
    swapped = threading.Event()

    def client_thread(t: int, base: str) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for i in range(25):
                if i == 20:                                      # the last 5 of each: after the swap
                    swapped.wait(120)
                sent = time.monotonic()
                to_other = other is not None and t % 2 == 1 and i % 2 == 1
                try:
                    r = http.get("/api/search", params={"q": queries[(t * 25 + i) % len(queries)], "k": 5,
                                                        "index": names[1] if to_other else names[0]})
                    if r.status_code != 200:
                        raise AssertionError(f"{r.status_code}: {r.text[:200]}")
                    with lock:
                        (others if to_other else answers).append((sent, r.json()["index"]["build_id"]))
                except Exception as err:                     # counted, not raised: zero is the assertion
                    with lock:
                        errors.append(repr(err))
                with lock:
                    done.append(1)
                time.sleep(0.005)

    with serve_in_thread(app) as base:
        threads = [threading.Thread(target=client_thread, args=(t, base)) for t in range(16)]
        start = time.monotonic()
        for th in threads:
            th.start()
        while len(done) < 100:
            time.sleep(0.005)
        reindex()                                                # a changed manifest, re-indexed mid-load
        deadline = time.monotonic() + 60
        while svc.searcher.state.build_id == old and time.monotonic() < deadline:
            time.sleep(0.005)
        swapped_at = time.monotonic()
        swapped.set()
        for th in threads:
            th.join(timeout=300)
        elapsed = time.monotonic() - start
    svc.close()
    new = svc.searcher.state.build_id
    assert new != old and errors == [] and len(answers) + len(others) == 400
    if other is not None:
        assert len(others) == 96 and {build for _, build in others} == {other.searcher.state.build_id}
    assert elapsed < 300
    after = [build for sent, build in answers if sent > swapped_at]
    assert len(after) >= (80 if other is None else 56) and set(after) == {new}, \
        "a query sent after the swap answered from the old build"
    assert {build for _, build in answers} == {old, new}
    return old, new


@pytest.mark.slow
def test_load_400_queries_16_threads_with_a_swap_mid_load(service, video):
    """Loopback only, the fake model, two indexes served: a re-index (python -m retrieval.index) of
    one index's changed manifest swaps that index alone."""
    def reindex():
        write_dataset("toy", 30)
        assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0

    indexed_dataset("toy2", 12, video)
    other = SearchService(Searcher("toy2"), poll_s=0.05)
    try:
        load_with_a_swap(SearchService(service.searcher, poll_s=0.05), "toy",
                         [f"a clip of v{i}" for i in range(25)], reindex, other)
    finally:
        other.close()


@pytest.mark.slow
def test_load_on_the_synthetic_index_with_retrieval_reindex_mid_load(home):  # noqa: F811 (fixture)
    """Loopback only, the real zero-shot model (tiny random CLIP) on synthetic videos
    (tests/test_reindex.py's fixture): `python -m retrieval.reindex` of a manifest with two more
    videos extracts, encodes and publishes mid-load."""
    from retrieval.reindex import run as rx

    def reindex():
        home.manifest(home.ids[:12])
        assert rx.reindex("syn").status == "rebuilt"

    captions = [r["captions"][0] for r in home.records[:16]]
    _, new = load_with_a_swap(SearchService(Searcher("syn"), poll_s=0.05), "syn", captions, reindex)
    assert len(Searcher("syn").state.build.ids) == 12


@pytest.mark.slow
def test_bench_runs_on_tiny_sizes(tmp_path, capsys):
    from test_extract_support import tiny_clip_dir

    from bench import serve as bench_serve

    assert bench_serve.main(["--videos", "40", "--queries", "8", "--clients", "1,4",
                             "--model", tiny_clip_dir(tmp_path), "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert "p50 ms" in out and "RANDOM WEIGHTS" in out
    assert "stored=fp32: throughput at 4 clients" in out and "bf16: throughput at 4 clients" in out
    assert "bf16 vs stored=fp32 on 50 queries: top-10 overlap" in out


@pytest.mark.slow
def test_bench_measures_another_checkout_side_by_side(tmp_path, capsys):
    """``--against DIR``: both services answer, in alternating rounds, and the ratio table compares
    them (here the other checkout is this one, so both rows exist and every request is answered)."""
    from test_extract_support import tiny_clip_dir

    from bench import serve as bench_serve

    root = Path(__file__).resolve().parents[1]
    assert bench_serve.main(["--videos", "30", "--queries", "6", "--clients", "2", "--query-precision", "stored",
                             "--rounds", "2", "--against", str(root), "--model", tiny_clip_dir(tmp_path),
                             "--home", str(tmp_path / "home")]) == 0
    out = capsys.readouterr().out
    assert f"against: {root}" in out and "2 alternating rounds per setting" in out
    table = [line.split() for line in out.splitlines() if line.startswith(("this ", "against "))]
    assert sorted(row[0] for row in table) == ["against", "this"]
    assert all(row[3] == "12" and row[4] == "0" for row in table)        # 2 rounds x 6 requests, no errors
    assert "p50 this/against" in out
    with pytest.raises(SystemExit):
        bench_serve.main(["--against", str(tmp_path)])                    # not a checkout: a usage error


def test_query_precision_reaches_the_service_and_the_cli_alike(tmp_path, monkeypatch, capsys):
    """The real zero-shot model (tiny random CLIP): ``--query-precision bf16`` runs the text tower in
    bf16 in the service and in retrieval.search alike (equal JSON, both say bf16), and the default
    stays the stored precision (fp32 on CPU), with scores close to bf16's."""
    from test_extract_support import tiny_clip_dir

    from bench.serve import build_home

    home = tmp_path / "home"
    monkeypatch.setenv("TVR_HOME", str(home))
    build_home(home, "bench", 40, tiny_clip_dir(tmp_path))
    fast = SearchService(Searcher("bench", query_precision="bf16"), poll_s=0)
    exact = Searcher("bench")
    assert fast.health()["query_precision"] == "bf16" and exact.encoder.precision == "fp32"
    with TestClient(create_app(ServeSettings(dataset="bench", query_precision="bf16"), fast),
                    base_url="http://localhost") as client:
        for query in ("a dog runs on the beach", "someone cooks pasta"):
            served = client.get("/api/search", params={"q": query, "k": 40}).json()
            assert search_cli.main([query, "--dataset", "bench", "-k", "40", "--json", "--query-precision", "bf16"]) == 0
            assert _strip_media(served) == _relative(json.loads(capsys.readouterr().out))
            assert served["query_precision"] == "bf16"
            reference = exact.search([query], 40)[0]
            assert reference["query_precision"] == "fp32"
            scores = {hit["video_id"]: hit["score"] for hit in reference["results"]}
            diffs = [abs(hit["score"] - scores[hit["video_id"]]) for hit in served["results"]]
            assert len(diffs) == 40 and 0 < max(diffs) < 0.02        # every video scored, bf16 not bit-equal
    fast.close()


def test_damaged_pointer_while_serving_keeps_answering_and_says_so(client, service, tvr_home):
    before = service.searcher.state.build_id
    (tvr_home / "indexes" / "toy" / "zero-shot" / "current").write_text("no-such-build\n")
    assert not service.check_for_new_build()
    health = client.get("/healthz").json()
    assert health["status"] == "degraded" and health["build_id"] == before
    assert "names build 'no-such-build'" in health["problem"] and "newest verified build" in health["problem"]
    found = client.get("/api/search", params={"q": "a clip of v9", "k": 1}).json()
    assert found["results"][0]["video_id"] == "v9" and "newest verified build" in found["note"]
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0          # the next build repairs it
    assert service.check_for_new_build() and client.get("/healthz").json()["status"] == "ok"


def test_thumbnail_links_point_at_the_best_moment():
    from retrieval.service.responses import with_media_urls

    found = {"results": [{"video_id": "a b", "moments": [{"start_s": 1.0, "end_s": 2.5, "score": 0.3},
                                                         {"start_s": 4.0, "end_s": 5.0, "score": 0.1}]},
                         {"video_id": "c", "moments": None},
                         {"video_id": "d", "start_s": 2.0, "end_s": 3.0, "score": 0.5}]}      # a corpus-mode hit
    first, second, third = with_media_urls(found, index="toy/zero-shot")["results"]
    assert first["thumbnail"] == "/thumbnails/a%20b.jpg?index=toy%2Fzero-shot&t=1.8"
    assert [m["thumbnail"] for m in first["moments"]] == ["/thumbnails/a%20b.jpg?index=toy%2Fzero-shot&t=1.8",
                                                          "/thumbnails/a%20b.jpg?index=toy%2Fzero-shot&t=4.5"]
    assert first["video"] == "/videos/a%20b?index=toy%2Fzero-shot"
    assert second["thumbnail"] == "/thumbnails/c.jpg?index=toy%2Fzero-shot"
    assert third["thumbnail"] == "/thumbnails/d.jpg?index=toy%2Fzero-shot&t=2.5"


def test_search_parameters_per_query_reach_the_index(client, monkeypatch, capsys):
    """GET /api/search?nprobe=..&efSearch=..&rerank=..: per query, equal to the CLI's flags; bad values are 422."""
    calls = []
    real = search.search

    def spy(index, queries, k, **kwargs):
        calls.append(kwargs)
        return real(index, queries, k, **kwargs)

    monkeypatch.setattr(search, "search", spy)
    served = client.get("/api/search", params={"q": "a clip of v7", "k": 3, "nprobe": 7, "efSearch": 40})
    assert served.status_code == 200 and calls[-1]["nprobe"] == 7 and calls[-1]["efSearch"] == 40
    assert search_cli.main(["a clip of v7", "--dataset", "toy", "-k", "3", "--json", "--nprobe", "7",
                        "--ef-search", "40"]) == 0
    assert _strip_media(served.json()) == _relative(json.loads(capsys.readouterr().out))
    assert calls[-1]["nprobe"] == 7
    client.get("/api/search", params={"q": "a clip of v7", "k": 3})
    assert calls[-1]["nprobe"] is None                                  # the build's defaults
    bad = client.get("/api/search", params={"q": "a clip of v7", "nprobe": 0})
    assert bad.status_code == 422 and "nprobe" in bad.json()["error"]


def test_serve_says_which_run_and_model_answer_and_why(service, monkeypatch, capsys):
    """Without --run the dataset's serving run answers, else zero-shot: the first lines say which and why."""
    import uvicorn

    from retrieval.index.serving import set_serving_run

    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    assert serve.main(["--dataset", "toy"]) == 0
    out = capsys.readouterr().out
    assert "serving toy/zero-shot (zero-shot model, build " in out
    assert "no serving run is recorded for toy, so its zero-shot model answers" in out and "RANDOM WEIGHTS" in out
    set_serving_run("toy", "zero-shot")
    assert serve.main(["--index", "toy"]) == 0
    assert "): the serving run recorded for toy" in capsys.readouterr().out
    assert serve.main(["--dataset", "toy", "--run", "zero-shot"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("serving toy/zero-shot (zero-shot model, build ") and first.endswith(")")
    assert serve.main([]) == 2
    assert "nothing to serve" in capsys.readouterr().err
