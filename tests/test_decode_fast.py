"""The fast decode path (frames nothing refers to skipped) takes exactly the exact path's frames.

Documented tolerance: none — the same frames (bit for bit) at the same times — on clips with
B-frames (pyramid), open GOPs and variable frame rate; the GPU request falls back to the CPU.
"""
from __future__ import annotations

import logging
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from test_extract_support import ffmpeg

from extractors.decode import DecodeOptions, DecodeRequest, decode_video

EXACT, FAST = DecodeOptions(mode="exact"), DecodeOptions(mode="fast", threads=2)


def _request(options: DecodeOptions, dense: bool) -> DecodeRequest:
    return DecodeRequest(frame_fps=1.0, frame_size=48, dense_fps=5.0 if dense else None,
                         dense_size=32 if dense else None, audio_rate=16000, options=options)


def _h264(path, x264: str, seconds: float = 6.0, fps: int = 25, gop: int = 50):
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size=320x240:rate={fps}:duration={seconds}",
           "-f", "lavfi", "-i", f"sine=frequency=330:sample_rate=16000:duration={seconds}",
           "-c:v", "libx264", "-preset", "veryfast", "-g", str(gop), "-bf", "3",
           "-x264-params", x264, "-pix_fmt", "yuv420p", "-c:a", "aac", path)
    return path


def _vfr(path):
    """Variable frame rate with B-frames: irregular steps of 10-130 ms, a 1.3 s hold."""
    rng = np.random.default_rng(3)
    steps = rng.integers(10, 130, 90).astype(float)
    steps[40] = 1300
    times = np.concatenate([[0], np.cumsum(steps)]) / 1000
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=1000, options={"bf": "3", "g": "40"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        for k, t in enumerate(times):
            img = np.zeros((240, 320, 3), np.uint8)
            img[:, : 3 * k % 320] = 200
            img[(2 * k) % 240:, :, 1] = 90
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = int(round(t * 1000)), Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


CLIPS = {
    "bframes-pyramid": lambda p: _h264(p, "b-pyramid=normal"),
    "open-gop": lambda p: _h264(p, "open-gop=1:keyint=30:min-keyint=30", gop=30),
    "vfr": _vfr,
}


@pytest.mark.parametrize("dense", [False, True], ids=["sparse-only", "sparse+dense"])
@pytest.mark.parametrize("kind", sorted(CLIPS))
def test_fast_path_takes_the_exact_frames_at_the_exact_times(tmp_path, kind, dense):
    path = CLIPS[kind](tmp_path / f"{kind}.mp4")
    exact = decode_video(path, _request(EXACT, dense))
    fast = decode_video(path, _request(FAST, dense))
    assert fast.fast and not exact.fast
    assert fast.frames_decoded < exact.frames_decoded  # non-reference B-frames were skipped
    if kind == "bframes-pyramid" and not dense:  # closed GOPs: also nothing after a GOP's last sample
        assert fast.frames_decoded < 0.5 * exact.frames_decoded
    np.testing.assert_array_equal(fast.frame_times, exact.frame_times)
    np.testing.assert_array_equal(fast.frames, exact.frames)
    np.testing.assert_array_equal(fast.dense_times, exact.dense_times)
    np.testing.assert_array_equal(fast.dense, exact.dense)
    np.testing.assert_array_equal(fast.audio, exact.audio)
    assert len(exact.frame_times) >= 5


def test_clamped_files_use_the_exact_path(tmp_path):
    one = _h264(tmp_path / "a.ts", "b-pyramid=normal", seconds=2.0)
    two = tmp_path / "b.ts"
    ffmpeg("-i", one, "-c", "copy", "-f", "mpegts", "-output_ts_offset", "600", two)
    joined = tmp_path / "joined.ts"
    joined.write_bytes(one.read_bytes() + two.read_bytes())
    fast = decode_video(joined, _request(FAST, dense=True))
    exact = decode_video(joined, _request(EXACT, dense=True))
    assert not fast.fast and fast.clamped_jumps == 1
    np.testing.assert_array_equal(fast.frames, exact.frames)
    np.testing.assert_array_equal(fast.frame_times, exact.frame_times)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine decodes on the GPU (bench/gpu_check.sh)")
def test_gpu_request_falls_back_to_the_cpu_with_a_log_line(tmp_path, caplog):
    path = CLIPS["bframes-pyramid"](tmp_path / "v.mp4")
    cpu = decode_video(path, _request(FAST, dense=True))
    with caplog.at_level(logging.WARNING, logger="tvr.decode"):
        gpu = decode_video(path, _request(DecodeOptions(hwaccel="cuda"), dense=True))
    assert gpu.hwaccel is None and "cuda decoding not available" in caplog.text and str(path) in caplog.text
    np.testing.assert_array_equal(gpu.frames, cpu.frames)
    np.testing.assert_array_equal(gpu.frame_times, cpu.frame_times)
    np.testing.assert_array_equal(gpu.dense, cpu.dense)
