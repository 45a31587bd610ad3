"""The search service's thumbnails (retrieval.service.thumbs, .media): one cache file per clamped,
rounded moment, a size bound with least-recently-used eviction, a read-only cache served uncached
and logged once, the frame shown at a late moment of a one-keyframe video within a wall-time
budget, Busy beyond workers + queue (known keys answered without a worker), long ids."""
from __future__ import annotations

import asyncio
import logging
import os
import threading

import av
import pytest
from test_extract_support import ffmpeg, make_video

from retrieval.service.media import MediaError, MediaTimeout, frame_at
from retrieval.service.thumbs import Busy, Thumbnails

BIG = 10**8          # bytes: a bound that never evicts


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A 2 s 64x48 H.264 test pattern at 10 fps."""
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=2.0, audio=None)


@pytest.fixture(scope="module")
def one_keyframe(tmp_path_factory):
    """A 40 s 64x48 test pattern at 25 fps (1000 frames) with a single keyframe, its first."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=25:duration=40", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", "-g", "10000", "-x264-params", "keyint=10000:min-keyint=10000:scenecut=0", path)
    return path


def _jpegs(folder) -> list:
    return sorted(folder.glob("*.jpg"))


def test_moments_past_the_end_are_one_file_and_the_middle_is_keyed_on_its_moment(tmp_path, clip):
    thumbs = Thumbnails(tmp_path / "cache", max_bytes=BIG)

    async def requests():
        late = [await thumbs.get("v", clip, float(t)) for t in range(9_000_001, 9_000_061)]
        return late, await thumbs.get("v", clip, None), await thumbs.get("v", clip, 1.0)

    late, middle, one_second = asyncio.run(requests())
    thumbs.close()
    assert len(set(late)) == 1 and late[0].is_file()
    assert middle == one_second                       # the middle of a 2 s video is 1.0 s
    assert _jpegs(tmp_path / "cache") == sorted({late[0], middle})


def test_size_bound_evicts_the_least_recently_used(tmp_path, clip):
    moments = (0.5, 1.0, 1.5, 1.9)
    sizes = [Thumbnails(tmp_path / "sizes", max_bytes=BIG).make("v", clip, t).stat().st_size for t in moments]
    bound = sum(sizes) - 1                            # all four do not fit, any three do
    thumbs = Thumbnails(tmp_path / "cache", max_bytes=bound)
    first, second, third = (thumbs.make("v", clip, t) for t in moments[:3])
    os.utime(first, (1, 1))
    assert thumbs.make("v", clip, moments[0]) == first and first.stat().st_mtime > 1   # a hit, refreshed
    fourth = thumbs.make("v", clip, moments[3])
    assert _jpegs(tmp_path / "cache") == sorted([first, third, fourth])   # the second was least recent
    assert thumbs.stats()["bytes"] == sum(sizes) - sizes[1] <= bound
    thumbs.close()

    for age, path in enumerate((third, first, fourth)):
        os.utime(path, (age + 10, age + 10))
    restarted = Thumbnails(tmp_path / "cache", max_bytes=sizes[0] + sizes[3])   # the folder is read at start
    assert _jpegs(tmp_path / "cache") == sorted([first, fourth])              # the oldest went
    assert restarted.stats()["files"] == 2 and restarted.stats()["bytes"] == sizes[0] + sizes[3]
    restarted.close()


@pytest.mark.parametrize("blocked", ["file-in-the-way", "read-only-folder"])
def test_unwritable_cache_serves_bytes_and_logs_once(tmp_path, clip, caplog, blocked):
    cache = tmp_path / "cache"
    if blocked == "file-in-the-way":                  # works as root too
        (tmp_path / "file").write_text("not a folder")
        cache = tmp_path / "file" / "cache"
    else:
        cache.mkdir()
        cache.chmod(0o555)
        if os.access(cache, os.W_OK):
            cache.chmod(0o755)
            pytest.skip("running as root: a read-only mode does not stop writes")
    expected = Thumbnails(tmp_path / "writable", max_bytes=BIG).make("v", clip, 0.5).read_bytes()
    thumbs = Thumbnails(cache, max_bytes=BIG)
    try:
        with caplog.at_level(logging.WARNING, logger="retrieval.service.thumbs"):
            served = asyncio.run(_get_all(thumbs, clip, (0.5, 0.5, 1.0, 1.5)))
        assert served[0] == served[1] == expected and all(s[:3] == b"\xff\xd8\xff" for s in served)
        assert len([r for r in caplog.records if r.name == "retrieval.service.thumbs"]) == 1
        assert thumbs.stats()["read_only"] and thumbs.stats()["files"] == 0
    finally:
        thumbs.close()
        if cache.is_dir():
            cache.chmod(0o755)


async def _get_all(thumbs: Thumbnails, video, moments) -> list:
    return [await thumbs.get("v", video, t) for t in moments]


def test_late_moments_of_a_one_keyframe_video_get_the_frame_shown_then(one_keyframe):
    moments = (24.0, 30.0, 30.03, 39.0, 39.99)
    shown = {}
    with av.open(str(one_keyframe)) as container:     # the reference: every frame, in order
        for frame in container.decode(container.streams.video[0]):
            for t in moments:
                if frame.time <= t:                   # the last frame whose time <= t
                    shown[t] = (frame.time, frame.to_image().tobytes())
    assert shown[30.03][0] == 30.0 and shown[39.99][0] == pytest.approx(39.96)
    for t in moments:
        assert frame_at(one_keyframe, t).tobytes() == shown[t][1], t


def test_decoding_past_its_budget_raises_media_timeout(tmp_path, one_keyframe):
    with pytest.raises(MediaTimeout):
        frame_at(one_keyframe, 39.0, decode_s=0.0)
    thumbs = Thumbnails(tmp_path / "cache", max_bytes=BIG, decode_s=1e-9)
    with pytest.raises(MediaTimeout) as timeout:
        thumbs.make("v", one_keyframe, 39.0)
    assert isinstance(timeout.value, MediaError) and not (tmp_path / "cache").exists()
    thumbs.close()


def test_busy_beyond_workers_plus_queue_and_known_keys_need_no_worker(tmp_path, clip):
    thumbs = Thumbnails(tmp_path / "cache", max_bytes=BIG, workers=1, queue=2)
    release = threading.Event()

    def held_make(video_id, video, at_s):             # holds its worker until released
        assert release.wait(10), "never released"
        return b"made"

    async def scenario():
        cached = await thumbs.get("v", clip, 1.0)     # made for real: the duration is now known
        thumbs.make = held_make
        held = [asyncio.ensure_future(thumbs.get("v", clip, t)) for t in (0.2, 0.4, 0.6)]
        for _ in range(2000):
            if thumbs.stats()["running"] == 1 and thumbs.stats()["waiting"] == 2:
                break
            await asyncio.sleep(0.005)
        assert (thumbs.stats()["running"], thumbs.stats()["waiting"]) == (1, 2)
        with pytest.raises(Busy) as busy:
            await thumbs.get("v", clip, 0.8)
        assert busy.value.retry_after_s >= 1
        assert await thumbs.get("v", clip, 1.0) == cached      # a known key, answered while full
        release.set()
        return await asyncio.gather(*held)

    try:
        assert asyncio.run(scenario()) == [b"made"] * 3
        assert thumbs.stats()["running"] == thumbs.stats()["waiting"] == 0
    finally:
        release.set()
        thumbs.close()


def test_ids_of_250_bytes_get_a_cache_file(tmp_path, clip):
    thumbs = Thumbnails(tmp_path / "cache", max_bytes=BIG)
    path = thumbs.make("é" * 125, clip, 0.5)
    thumbs.close()
    assert path.is_file() and len(path.name) < 100
