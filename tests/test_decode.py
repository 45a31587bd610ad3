"""One-pass decoding: sampling by pts, sizes, rotation, audio resampling and specific errors."""
from __future__ import annotations

import subprocess
from fractions import Fraction

import av
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import FIXTURES, NO_FIXTURES, requires_fixtures
from test_extract_support import ffmpeg, make_video

from extractors.decode import DecodeError, DecodeRequest, decode_video, resized_dims

ALL = DecodeRequest(frame_fps=1.0, frame_size=32, dense_fps=15.0, dense_size=32, audio_rate=16000)


def test_sparse_dense_and_audio_from_one_decode(tmp_path):
    path = make_video(tmp_path / "v.mp4", seconds=3.5, fps=25, audio=(48000, 6))
    d = decode_video(path, ALL)
    assert d.frames.shape == (4, 32, 32, 3) and d.frames.dtype == np.uint8
    np.testing.assert_allclose(d.frame_times, [0, 1, 2, 3], atol=1e-6)
    # dense: a regular 15 fps grid over the video, every grid point filled
    assert d.dense.shape[1:] == (32, 32, 3)
    assert len(d.dense) == len(d.dense_times) == 53  # grid points 0 .. 3.4667 (last frame at 3.46 s)
    np.testing.assert_allclose(np.diff(d.dense_times), 1 / 15)
    # 6-channel 48 kHz AAC -> 16 kHz mono float32
    assert d.has_audio and d.audio.dtype == np.float32 and d.audio.ndim == 1
    assert abs(len(d.audio) / 16000 - 3.5) < 0.1
    spectrum = np.abs(np.fft.rfft(d.audio[4000:20000]))
    assert abs(np.argmax(spectrum) * 16000 / 16000 - 440) < 5  # the 440 Hz sine survived the downmix


def test_only_requested_parts_are_produced(tmp_path):
    path = make_video(tmp_path / "v.mp4")
    d = decode_video(path, DecodeRequest(audio_rate=16000))
    assert len(d.frames) == 0 and len(d.dense) == 0 and d.has_audio
    d = decode_video(path, DecodeRequest(frame_fps=1.0, frame_size=32))
    assert len(d.frames) == 2 and len(d.audio) == 0 and not d.has_audio


def test_variable_frame_rate_selects_by_presentation_time(tmp_path):
    path = tmp_path / "vfr.mp4"
    times = [0.0, 0.1, 0.2, 1.5, 3.05, 3.1]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1000)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            img = np.full((48, 64, 3), 40 * k, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = int(t * 1000), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    d = decode_video(path, DecodeRequest(frame_fps=1.0, frame_size=16, dense_fps=2.0, dense_size=16))
    np.testing.assert_allclose(d.frame_times, [0.0, 1.5, 3.05], atol=2e-3)
    # brightness tells which source frame was chosen (0, 120, 160)
    np.testing.assert_allclose(d.frames.mean(axis=(1, 2, 3)), [0, 120, 160], atol=6)
    # dense 2 fps: sample-and-hold of the latest frame at 0, .5, 1, 1.5, 2, 2.5, 3
    assert len(d.dense) == 7
    np.testing.assert_allclose(d.dense.mean(axis=(1, 2, 3)), [0, 80, 80, 120, 120, 120, 120], atol=6)


def test_video_shorter_than_one_interval_gives_one_frame(tmp_path):
    path = make_video(tmp_path / "short.mp4", seconds=0.2, fps=25, audio=None)
    d = decode_video(path, ALL)
    assert d.frames.shape[0] == 1 and d.frame_times[0] == 0
    assert len(d.dense) >= 1 and not d.has_audio and len(d.audio) == 0


@pytest.mark.parametrize("size", ["16x12", "1920x1080"])
def test_tiny_and_large_frames_come_out_at_the_target_size(tmp_path, size):
    path = make_video(tmp_path / "v.mp4", seconds=1.0, size=size, fps=5, audio=None)
    d = decode_video(path, DecodeRequest(frame_fps=1.0, frame_size=224, dense_fps=5.0, dense_size=64))
    assert d.frames.shape == (1, 224, 224, 3) and d.dense.shape == (5, 64, 64, 3)


def test_resized_dims_keep_aspect_and_sample_aspect_ratio():
    assert resized_dims(640, 272, 224) == (527, 224)
    assert resized_dims(272, 640, 224) == (224, 527)
    assert resized_dims(100, 100, 224, sar=2.0) == (448, 224)


def _ffmpeg_first_frame(path, w, h):
    raw = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(path), "-frames:v", "1",
                          "-f", "rawvideo", "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(h, w, 3)


def test_rotation_metadata_is_applied_like_ffmpeg(tmp_path):
    src = make_video(tmp_path / "v.mp4", seconds=1.0, size="64x48", fps=5, audio=None)
    rotated = tmp_path / "rot.mp4"
    ffmpeg("-display_rotation", "90", "-i", src, "-c", "copy", rotated)
    reference = _ffmpeg_first_frame(rotated, 48, 64)[8:56]  # ffmpeg autorotates: 48 x 64, centre 48 x 48
    d = decode_video(rotated, DecodeRequest(frame_fps=1.0, frame_size=48))
    assert d.rotation == 90
    ours = d.frames[0].astype(float)
    err = np.abs(ours - reference).mean()
    wrong = np.abs(np.rot90(ours, 2) - reference).mean()
    assert err < 3 and wrong > 5 * err + 10


def test_audio_only_file_reports_missing_video_and_keeps_audio():
    if not FIXTURES.is_dir():
        pytest.skip(NO_FIXTURES)
    d = decode_video(FIXTURES / "media" / "Front_Center.wav", ALL)
    assert d.video_error and "no video stream (audio-only file)" in d.video_error
    assert d.has_audio and abs(len(d.audio) / 16000 - 1.43) < 0.05
    frames_only = decode_video(FIXTURES / "media" / "Front_Center.wav", DecodeRequest(frame_fps=1.0, frame_size=32))
    assert "no video stream" in frames_only.video_error and len(frames_only.frames) == 0


@pytest.mark.parametrize("kind, message", [
    ("missing", "file not found"),
    ("zero", "empty file (0 bytes)"),
    ("text", "not a media file FFmpeg can read"),
    ("truncated", "truncated or corrupt MP4/MOV (its index cannot be read)"),
    ("truncated-faststart", "corrupt or truncated data after"),
])
def test_bad_files_raise_specific_errors(tmp_path, kind, message):
    path = tmp_path / f"{kind}.mp4"
    if kind == "zero":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video\n" * 50)
    elif kind.startswith("truncated"):  # index at the end (ffmpeg's default) or at the front
        good = make_video(tmp_path / "good.mp4", seconds=2.0, faststart=kind.endswith("faststart"))
        path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DecodeError) as info:
        decode_video(path, ALL)
    assert message in str(info.value) and str(path) in str(info.value)


def test_requests_merge_and_refuse_conflicts():
    a = DecodeRequest(frame_fps=1.0, frame_size=224)
    b = DecodeRequest(audio_rate=16000)
    assert a.merge(b) == DecodeRequest(frame_fps=1.0, frame_size=224, audio_rate=16000)
    with pytest.raises(ValueError, match="frame_size"):
        a.merge(DecodeRequest(frame_fps=1.0, frame_size=256))


@requires_fixtures
@pytest.mark.parametrize("name, frames", [("bikes.mp4", 10), ("carphone_pristine.mp4", 4), ("xine-ui_logo.mpg", 1)])
def test_fixture_clips_decode(name, frames):
    d = decode_video(FIXTURES / "media" / name, ALL)
    assert d.frames.shape == (frames, 32, 32, 3) and not d.has_audio and d.video_error is None
