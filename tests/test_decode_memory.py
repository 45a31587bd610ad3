"""Bounded decoding: hostile timestamps, streaming windows, memory and time budgets."""
from __future__ import annotations

import numpy as np
import pytest
from test_extract_support import make_video, tiny_config

from bench.decode_memory import hostile_ts, long_video, peak_rss
from data.manifest import VideoRecord
from extractors import decode
from extractors.base import VideoItem, push_video
from extractors.decode import MAX_GAP_S, DecodeOptions, DecodeRequest, _Timeline, decode_video
from extractors.reader import iter_decoded, merged_request

ALL = DecodeRequest(frame_fps=1.0, frame_size=224, dense_fps=15.0, dense_size=128, audio_rate=16000)


def test_timeline_clamps_jumps_and_keeps_normal_times_bit_for_bit():
    rng = np.random.default_rng(0)
    for _ in range(200):
        raw = np.cumsum(rng.choice([0.04, 0.0, 0.5, 7.0, 36000.0, -95000.0, -0.3], 40))
        timeline = _Timeline(step=0.04)
        times = np.array([timeline(float(t)) for t in raw])
        steps = np.diff(times)
        assert (steps >= 0).all() and (steps <= MAX_GAP_S + 1e-9).all() and times[0] <= MAX_GAP_S
        normal = (np.diff(raw) >= 0) & (np.diff(raw) <= MAX_GAP_S) & (times[:-1] > 0)
        np.testing.assert_allclose(steps[normal], np.diff(raw)[normal], atol=1e-6)
    clean = [0.0, 0.04, 1.0, 3.0]
    timeline = _Timeline(step=0.04)
    assert [timeline(t) for t in clean] == clean and timeline.jumps == 0


@pytest.mark.parametrize("kind", ["jump", "wrap"])
def test_hostile_timestamps_extract_ok_with_bounded_memory(tmp_path, kind):
    path = hostile_ts(tmp_path, kind)
    peak = peak_rss(path)
    assert peak["rss_mb"] < 1024, peak  # the decode of the same file asked for 24.7 / 65 GiB before
    assert 6 <= peak["frames"] <= 8 and abs(peak["audio_s"] - 6) < 0.3
    assert peak["dense"] <= 15 * (6 + MAX_GAP_S + 1)  # a gap adds at most MAX_GAP_S of held frames
    extractors = tiny_config(tmp_path).build()
    jobs = [(VideoRecord(kind, path.name, "test", ["a capture"]), merged_request(extractors))]
    for item in iter_decoded(jobs, tmp_path):
        rows = push_video(extractors, item)
    rows = {m: r + next(e for e in extractors if e.modality == m).flush() for m, r in rows.items()}
    assert {m: [r.status for r in rs] for m, rs in rows.items()} == {
        "clip_frames": ["ok"], "clip_text": ["ok"], "audio": ["ok"], "motion": ["ok"]}
    (frames,) = rows["clip_frames"]
    assert 6 <= len(frames.values) <= 8 and frames.timestamps_s[-1] <= 6 + MAX_GAP_S
    assert len(rows["audio"][0].values) == 6  # 6 s of sound: 6 windows of 0.96 s


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_video_length(tmp_path):
    """A 30-minute video decodes within 1.5x the peak memory of a 1-minute one (all parts requested)."""
    peaks = {minutes: peak_rss(long_video(tmp_path, minutes)) for minutes in (1, 30)}
    assert peaks[30]["dense"] >= 15 * 1799 and peaks[30]["frames"] == 1800  # it did decode all of it
    assert peaks[30]["rss_mb"] <= 1.5 * peaks[1]["rss_mb"], peaks


def _rows(extractors, item):
    rows = push_video(extractors, item)
    return {e.modality: rows[e.modality] + e.flush() for e in extractors}


def test_streamed_windows_give_the_rows_of_one_whole_window(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", seconds=7.3, size="96x64", fps=10, audio=(16000, 1))
    extractors = tiny_config(tmp_path, modalities=("clip_frames", "audio", "motion")).build()
    request = extractors[0].request.merge(extractors[1].request).merge(extractors[2].request)
    record = VideoRecord("v", "v.mp4", "train", ["x"])
    whole = _rows(extractors, VideoItem(record, decode_video(path, request)))
    monkeypatch.setattr(decode, "WINDOW_FRAMES", 2)
    monkeypatch.setattr(decode, "WINDOW_DENSE", 3)
    monkeypatch.setattr(decode, "WINDOW_AUDIO_S", 0.7)
    with decode.stream_video(path, request) as stream:
        windows = list(stream.chunks())
        item = VideoItem(record, stream.info, chunks=iter(windows))
        assert len(windows) >= 8
        streamed = _rows(extractors, item)
    for m in whole:
        (a,), (b,) = whole[m], streamed[m]
        assert a.status == b.status == "ok" and a.values.shape == b.values.shape, m
        np.testing.assert_allclose(a.values, b.values, atol=1e-4, err_msg=m)
        np.testing.assert_allclose(a.timestamps_s, b.timestamps_s, err_msg=m)
    assert whole["motion"][0].values.shape[0] == 4  # 15 frames at 2 fps: 3 clips of 4 + a kept half clip


def test_time_and_memory_budgets_fail_the_video_with_a_specific_error(tmp_path, monkeypatch):
    path = make_video(tmp_path / "v.mp4", seconds=2.0)
    extractors = tiny_config(tmp_path).build()
    record = VideoRecord("v", "v.mp4", "train", ["x"])
    slow = DecodeRequest(frame_fps=1.0, frame_size=64, audio_rate=16000, options=DecodeOptions(budget_s=0.0))
    items = iter_decoded([(record, slow)], tmp_path)  # held: a dropped iterator abandons its decodes
    rows = _rows(extractors, next(items))
    assert rows["clip_frames"][0].status == rows["audio"][0].status == "failed"
    assert "decoding exceeded its time budget of 0 s" in rows["clip_frames"][0].error
    assert rows["clip_text"][0].status == "ok"
    monkeypatch.setattr(decode, "MAX_PIXELS", 64 * 47)
    (item,) = iter_decoded([(record, ALL)], tmp_path)
    assert "64x48 pictures exceed the decode memory budget" in item.error and str(path) in item.error
