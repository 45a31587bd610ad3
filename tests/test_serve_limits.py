"""The search service under attack (issue 23): containment, hosts, tokens, one error shape, bounded
queues and deadlines, swap retries, startup race, damaged or deleted builds, slow clients.

Loopback only, bounded in requests and time; a fake model (tests/fake_fusion_api.py)."""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pytest
from fake_fusion_api import FakeFusion
from fastapi.testclient import TestClient
from serve_support import indexed_dataset, sample_video

from retrieval.index import cli as index_cli
from retrieval.query import search as search_module
from retrieval.query.search import Searcher
from retrieval.service import core
from retrieval.service.app import create_app
from retrieval.service.batcher import MicroBatcher, Overloaded
from retrieval.service.core import SearchService
from retrieval.service.serve import exposure_warning
from retrieval.service.server import uvicorn_config
from retrieval.service.settings import ServeSettings
from service_thread import serve_in_thread

TOKEN = "0123456789abcdef0123"


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return sample_video(tmp_path_factory.mktemp("video"))


@pytest.fixture
def service(tvr_home, monkeypatch, video):
    FakeFusion().install(monkeypatch)
    indexed_dataset("toy", 25, video)
    svc = SearchService(Searcher("toy"), poll_s=0)
    yield svc
    svc.close()


def client_for(service, **options) -> TestClient:
    return TestClient(create_app(ServeSettings(dataset="toy", **options), service), base_url="http://localhost")


def test_a_symlink_out_of_the_video_folder_is_not_served(service, tvr_home, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not a video")
    target = tvr_home / "media" / "toy" / "videos" / "v3.mp4"
    target.unlink()
    target.symlink_to(secret)
    with client_for(service) as client:
        for url in ("/videos/v3", "/thumbnails/v3.jpg"):
            response = client.get(url)
            assert response.status_code == 404 and "not available" in response.json()["error"], url
            assert str(tmp_path) not in response.text
        assert client.get("/videos/v4").status_code == 200


def test_only_configured_hosts_and_relative_paths(service, tvr_home):
    with client_for(service) as client:
        evil = client.get("/api/search", params={"q": "a clip of v1"}, headers={"Host": "evil.example"})
        assert evil.status_code == 400 and "host 'evil.example' is not accepted" in evil.json()["error"]
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert client.get("/healthz", headers={"Host": host}).status_code == 200, host
        hit = client.get("/api/search", params={"q": "a clip of v1", "k": 1}).json()["results"][0]
        assert hit["path"] == "videos/v1.mp4" and "abs_path" not in hit
    with client_for(service, allow_hosts=["search.example"], absolute_paths=True) as client:
        found = client.get("/api/search", params={"q": "a clip of v1", "k": 1}, headers={"Host": "search.example"})
        assert found.status_code == 200 and found.json()["results"][0]["abs_path"].startswith(str(tvr_home))


def test_one_json_error_shape_and_no_server_paths(service, tvr_home):
    with client_for(service) as client:
        cases = [("/api/search?q=a%00b", 400, "control character"),
                 ("/thumbnails/v1.jpg?t=nan", 422, "finite number"),
                 ("/no/such/route", 404, "Not Found"),
                 ("/videos/%ff", 400, "not valid UTF-8"),
                 ("/videos/v1.mp4x", 404, "no video 'v1.mp4x'")]
        for url, status, message in cases:
            response = client.get(url)
            assert response.status_code == status and message in response.json()["error"], (url, response.text)
        for header in ("bytes=abc", "bytes=5-2"):
            response = client.get("/videos/v1", headers={"Range": header})
            assert response.status_code in (400, 416) and response.json()["error"], header
        os.remove(tvr_home / "media" / "toy" / "videos" / "v2.mp4")
        gone = client.get("/thumbnails/v2.jpg")
        assert gone.status_code == 404 and str(tvr_home) not in gone.text


def test_thumbnail_cache_keys_on_the_clamped_moment_and_survives_a_read_only_cache(service, tvr_home):
    cache = tvr_home / "indexes" / "toy" / "zero-shot" / ".thumbnails"
    with client_for(service) as client:
        for t in range(9000001, 9000021):
            assert client.get(f"/thumbnails/v5.jpg?t={t}").status_code == 200
        assert len(list(cache.glob("*.jpg"))) == 1
    shutil.rmtree(cache)
    cache.write_text("a file where the cache folder should be")
    with client_for(service) as client:
        response = client.get("/thumbnails/v6.jpg?t=1")
        assert response.status_code == 200 and response.content[:3] == b"\xff\xd8\xff"
        assert client.get("/api/info").json()["thumbnails"]["read_only"] is True


def test_the_token_guards_everything_but_the_page_and_health(service):
    with client_for(service, token=TOKEN) as client:
        refused = client.get("/api/search", params={"q": "a clip of v1"})
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        assert "bearer token" in refused.json()["error"]
        assert client.get("/videos/v1").status_code == 401
        assert client.get("/api/info", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}).status_code == 401
        assert client.get("/").status_code == 200 and 'id="signin"' in client.get("/").text
        assert client.get("/healthz").status_code == 200
        assert client.get("/api/search", params={"q": "a clip of v1"},
                          headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        client.cookies.set("tvr_token", TOKEN)
        assert client.get("/videos/v1").status_code == 200
    with pytest.raises(ValueError, match="at least 16 characters"):
        ServeSettings(dataset="toy", token="short")
    assert "WITHOUT authentication" in exposure_warning(ServeSettings(dataset="toy", host="0.0.0.0"))
    assert "need the bearer token" in exposure_warning(ServeSettings(dataset="toy", host="0.0.0.0", token=TOKEN))
    assert exposure_warning(ServeSettings(dataset="toy")) is None


def test_a_full_queue_is_503_with_retry_after_and_a_slow_query_504(service):
    gate = threading.Event()
    slow = SearchService(service.searcher, poll_s=0, max_queue=2, timeout_s=0.3)
    real = slow._answer
    slow.batcher.answer = lambda *a: (gate.wait(5), real(*a))[1]
    try:
        with client_for(slow) as client:
            late = client.get("/api/search", params={"q": "a clip of v1"})
            assert late.status_code == 504 and "deadline of 0.3 s" in late.json()["error"]
            held = [slow.submit("a clip of v2", 1) for _ in range(2)]
            full = client.get("/api/search", params={"q": "a clip of v3"})
            assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1
            assert "queue is full" in full.json()["error"]
            gate.set()
            for future in held:
                future.exception(5)                 # answered or expired, never left hanging
            assert client.get("/api/search", params={"q": "a clip of v4", "k": 1}).status_code == 200
    finally:
        gate.set()
        slow.close()


def test_the_batcher_survives_a_cancelled_future():
    entered, gate = threading.Event(), threading.Event()

    def answer(texts, ks, params):
        entered.set()
        gate.wait(5)
        return [t.upper() for t in texts]

    batcher = MicroBatcher(answer, max_queue=4)
    try:
        first = batcher.submit("first", 1)
        assert entered.wait(5) and first.cancel()     # the client gave up while its batch was computed
        gate.set()
        assert batcher.submit("second", 1).result(5) == "SECOND"
        queued = [batcher.submit(f"q{i}", 1) for i in range(4)]
        with pytest.raises(Overloaded):
            for _ in range(64):
                batcher.submit("more", 1)
        assert [f.result(5) for f in queued][:1] == ["Q0"]
    finally:
        gate.set()
        batcher.close()


def test_a_failed_swap_is_retried_with_backoff(service, monkeypatch):
    monkeypatch.setattr(core, "FIRST_BACKOFF_S", 0.2)
    real_open, failures = service.searcher.open, []

    def flaky_open():
        if len(failures) < 2:
            failures.append(1)
            raise OSError("manifest briefly unavailable")
        return real_open()

    monkeypatch.setattr(service.searcher, "open", flaky_open)
    old = service.searcher.state.build_id
    assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
    assert not service.check_for_new_build()
    health = service.health()
    assert health["status"] == "degraded" and "briefly unavailable" in health["last_error"]
    assert 0 < health["next_retry_in_s"] <= 0.2
    assert not service.check_for_new_build()             # not due yet: no second attempt
    assert len(failures) == 1
    deadline = time.monotonic() + 10
    while service.searcher.state.build_id == old and time.monotonic() < deadline:
        time.sleep(0.05)
        service.check_for_new_build()
    assert service.searcher.state.build_id != old and len(failures) == 2
    health = service.health()
    assert health["status"] == "ok" and health["last_error"] is None and health["next_retry_in_s"] is None


def test_a_build_published_during_startup_is_swapped_in(service, monkeypatch):
    real, published = search_module.open_build, []

    def open_then_publish(*args, **kwargs):
        build = real(*args, **kwargs)
        if not published:
            assert index_cli.main(["--dataset", "toy", "--no-gpu"]) == 0
            published.append(build.build_id)
        return build

    monkeypatch.setattr(search_module, "open_build", open_then_publish)
    fresh = SearchService(Searcher("toy"), poll_s=0)
    try:
        assert fresh.searcher.state.build_id == published[0]
        assert fresh.check_for_new_build() and fresh.searcher.state.build_id != published[0]
    finally:
        fresh.close()


def test_a_deleted_or_damaged_serving_build_is_reported_and_replaced(service, tvr_home):
    first = service.searcher.state.build_id
    assert index_cli.main(["--dataset", "toy", "--no-gpu", "--store-vectors"]) == 0
    assert service.check_for_new_build()
    second = service.searcher.state.build_id
    with client_for(service) as client:
        os.truncate(tvr_home / "indexes" / "toy" / "zero-shot" / second / "vectors.npy", 0)
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and "vectors.npy is 0 bytes" in health["problem"]
        damaged = client.get("/api/search", params={"q": "a clip of v1", "k": 2, "rerank": 5})
        assert damaged.status_code == 503 and second in damaged.json()["error"]
        answered = client.get("/api/search", params={"q": "a clip of v1", "k": 2, "rerank": 5})
        assert answered.status_code == 200 and answered.json()["index"]["build_id"] == first
        assert client.get("/healthz").json()["status"] == "degraded"        # answering from a fallback
        shutil.rmtree(tvr_home / "indexes" / "toy" / "zero-shot" / first)
        health = client.get("/healthz").json()
        assert health["status"] == "degraded" and "gone" in health["problem"]


def test_slow_clients_are_cut_off_and_connections_limited(service):
    settings = ServeSettings(dataset="toy", header_timeout_s=0.5, max_connections=300)
    assert uvicorn_config(None, settings).limit_concurrency == 300
    with serve_in_thread(create_app(settings, service), settings=settings) as base:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        slow = []
        for _ in range(150):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")   # headers never finished
            slow.append(sock)
        time.sleep(1.5)
        closed = 0
        for sock in slow:
            sock.settimeout(2)
            try:
                closed += sock.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            except socket.timeout:                      # still open: the server kept waiting
                pass
            sock.close()
        assert closed == 150
        import httpx

        assert httpx.get(base + "/healthz", headers={"Host": "localhost"}, timeout=5).json()["status"] == "ok"


def test_the_cli_enables_the_fault_log(tmp_path):
    """A fatal signal in the service leaves tracebacks on stderr (faulthandler), not a silent death."""
    import signal
    import subprocess
    import sys

    code = ("import sys, time; from retrieval.service.serve import enable_fault_log; enable_fault_log(); "
            "print('ready', flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(__file__)))
    assert child.stdout.readline().strip() == b"ready"
    child.send_signal(signal.SIGBUS)
    _, err = child.communicate(timeout=30)
    assert child.returncode != 0 and b"Fatal Python error: Bus error" in err and b"File" in err


def test_thumbnails_have_their_own_bounded_pool_and_never_delay_health(service, monkeypatch):
    """20 concurrent slow thumbnails: 1 worker + 2 waiting are accepted, the rest get 503 with
    Retry-After at once, and /healthz answers quickly throughout."""
    import httpx

    from retrieval.service import thumbs

    real = thumbs.frame_at
    monkeypatch.setattr(thumbs, "frame_at", lambda *a, **kw: (time.sleep(1.0), real(*a, **kw))[1])
    settings = ServeSettings(dataset="toy", thumb_workers=1, thumb_queue=2)
    with serve_in_thread(create_app(settings, service), settings=settings) as base:
        statuses, retry_after = [], []

        def fetch(i: int) -> None:
            response = httpx.get(f"{base}/thumbnails/v{i}.jpg?t=1", headers={"Host": "localhost"}, timeout=30)
            statuses.append(response.status_code)
            if response.status_code == 503:
                retry_after.append(int(response.headers["retry-after"]))

        threads = [threading.Thread(target=fetch, args=(i,)) for i in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        worst = 0.0
        for _ in range(5):
            start = time.perf_counter()
            assert httpx.get(base + "/healthz", headers={"Host": "localhost"}, timeout=5).status_code == 200
            worst = max(worst, time.perf_counter() - start)
            time.sleep(0.1)
        for thread in threads:
            thread.join(60)
    assert statuses.count(200) == 3 and statuses.count(503) == 17 and min(retry_after) >= 1
    assert worst < 0.5, f"/healthz took {worst:.2f} s behind thumbnails"
