"""Rendering one planned video (:class:`data.synthetic.scenes.VideoSpec`) into a real MP4 file.

Frames are ``[N, H, W, 3]`` uint8 RGB: one large sprite (shape, colour, size, texture) over a dark
gradient background, moving as the ``motion`` attribute says; the sound is a mono float32 waveform
in [-1, 1] at :data:`SAMPLE_RATE` (16 kHz). :func:`encode_mp4` writes H.264 video (+ AAC audio, or
no audio stream) single-threaded and bit-exact, so the same spec always gives the same file.
"""
from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np

from data.atomic import atomic_path
from data.synthetic.scenes import VideoSpec

SAMPLE_RATE = 16_000
RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230),
       "yellow": (235, 220, 30), "magenta": (220, 40, 210)}
SIZE_FRACTION = {"small": 0.40, "large": 0.65}
CROSSINGS_PER_S = (1.1, 1.9)   # speed of a moving object: frame crossings per second


def _sprite(shape: str, texture: str, colour: str, side: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB sprite ``[side, side, 3]`` uint8 and its alpha mask ``[side, side]`` bool."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) + 0.5
    c = side / 2
    if shape == "circle":
        mask = (xx - c) ** 2 + (yy - c) ** 2 <= c * c
    elif shape == "square":
        mask = np.ones((side, side), bool)
    else:  # triangle pointing up
        mask = (yy >= 0.05 * side) & (np.abs(xx - c) <= (yy / side) * c)
    rgb = np.empty((side, side, 3), np.float32)
    rgb[:] = RGB[colour]
    if texture == "striped":
        period = max(4, side // 6)
        stripes = ((xx + yy) // (period / 2)).astype(int) % 2 == 1
        rgb[stripes] *= 0.35
    return rgb.astype(np.uint8), mask


def background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A dark, low-saturation gradient with fixed grain: ``[h, w, 3]`` uint8."""
    base = rng.uniform(20, 90)
    tint = rng.uniform(-12, 12, size=3)
    grad = np.linspace(0, rng.uniform(-25, 25), h)[:, None, None]
    grain = rng.normal(0, 6, size=(h, w, 1))
    bg = base + tint[None, None, :] + grad + grain
    return np.clip(bg, 0, 255).astype(np.uint8)


def _centre_path(motion: str, t: np.ndarray, w: int, h: int, side: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Object centre ``(x, y)`` in pixels at each time ``t`` (seconds).

    A moving object streams across the frame at ``CROSSINGS_PER_S`` (drawn per video) and wraps
    around: it leaves on one side and re-enters on the other. Between two frames of a dense
    stream (15 fps) it shifts by 7-13% of the frame, which a motion model sees; between frames
    sampled one second apart it shifts by the fractional part of the crossing rate, spread evenly
    over (0.1, 0.9) of a crossing, so such frames show it at unrelated places and its direction
    cannot be read from them.
    """
    x0, y0 = w * rng.uniform(0.4, 0.6), h * rng.uniform(0.4, 0.6)
    if motion == "still":
        return np.full_like(t, x0), np.full_like(t, y0)
    rate, phase = rng.uniform(*CROSSINGS_PER_S), rng.uniform()
    sign = -1 if motion in ("left", "up") else 1    # image y grows downwards
    extent = (w if motion in ("left", "right") else h) + side   # the object fully leaves before it re-enters
    travel = ((phase + sign * rate * t) % 1.0) * extent - side / 2
    if motion in ("left", "right"):
        return travel, np.full_like(t, y0)
    return np.full_like(t, x0), travel


def render_frames(spec: VideoSpec, backdrop: np.ndarray | None = None) -> np.ndarray:
    """All frames ``[n_frames, H, W, 3]`` uint8 (RGB).

    ``backdrop`` (``[H, W, 3]`` uint8) replaces the spec's own background, which is drawn anyway so
    that the motion path stays the spec's (the events set keeps one background across segments).
    """
    rng = np.random.default_rng([spec.seed, 3])
    a = spec.attributes
    n = int(round(spec.duration_s * spec.fps))
    side = int(SIZE_FRACTION[a["size"]] * spec.height)
    sprite, mask = _sprite(a["shape"], a["texture"], a["colour"], side)
    bg = background(rng, spec.width, spec.height)
    if backdrop is not None:
        bg = backdrop
    cx, cy = _centre_path(a["motion"], np.arange(n) / spec.fps, spec.width, spec.height, side, rng)
    frames = np.repeat(bg[None], n, axis=0)
    for i in range(n):
        x, y = int(round(cx[i] - side / 2)), int(round(cy[i] - side / 2))
        fx0, fy0 = max(0, x), max(0, y)
        fx1, fy1 = min(spec.width, x + side), min(spec.height, y + side)
        if fx0 >= fx1 or fy0 >= fy1:
            continue
        sub_mask = mask[fy0 - y: fy1 - y, fx0 - x: fx1 - x]
        frames[i, fy0:fy1, fx0:fx1][sub_mask] = sprite[fy0 - y: fy1 - y, fx0 - x: fx1 - x][sub_mask]
    return frames


def render_audio(spec: VideoSpec) -> np.ndarray:
    """Mono waveform ``[n_samples]`` float32 in [-1, 1] at 16 kHz."""
    rng = np.random.default_rng([spec.seed, 4])
    n = int(round(spec.duration_s * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    detune = rng.uniform(0.95, 1.05)
    sound = spec.attributes["sound"]
    if sound == "low":
        y = 0.4 * np.sin(2 * np.pi * 150 * detune * t) + 0.1 * np.sin(2 * np.pi * 300 * detune * t)
    elif sound == "high":
        y = 0.35 * np.sin(2 * np.pi * 1800 * detune * t)
    elif sound == "buzz":
        y = 0.25 * (2 * ((330 * detune * t) % 1.0) - 1)  # sawtooth: rich timbre
    elif sound == "beeping":
        gate = (t % 0.25) < 0.1
        y = 0.4 * np.sin(2 * np.pi * 900 * detune * t) * gate
    elif sound == "noise":
        gate = (t % 0.5) < 0.15
        y = 0.3 * rng.uniform(-1, 1, n) * gate
    else:  # silent
        y = np.zeros(n)
    return y.astype(np.float32)


def _wav_bytes(samples: np.ndarray) -> bytes:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wf:
        wf.setnchannels(1)
        wf.setsampwidth(2)
        wf.setframerate(SAMPLE_RATE)
        wf.writeframes(pcm.tobytes())
    return buf.getvalue()


def encode_mp4(frames: np.ndarray, fps: int, out: Path, audio: np.ndarray | None) -> None:
    """Encode ``frames`` (``[N, H, W, 3]`` uint8) and optional 16 kHz mono audio to an MP4.

    Uses an ffmpeg filter graph built by ffmpeg-python, run with imageio-ffmpeg's static binary.
    Single-threaded and bit-exact so the same input gives the same file.
    """
    import ffmpeg
    import imageio_ffmpeg

    n, h, w, _ = frames.shape
    video = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=fps)
    streams = [video]
    kwargs = dict(vcodec="libx264", pix_fmt="yuv420p", preset="ultrafast", crf=20, threads=1,
                  movflags="+faststart", map_metadata=-1, fflags="+bitexact")
    kwargs["flags:v"] = "+bitexact"
    wav_path = None
    if audio is not None:
        wav_path = out.with_suffix(".wav.tmp")
        wav_path.write_bytes(_wav_bytes(audio))
        streams.append(ffmpeg.input(str(wav_path)))
        kwargs.update(acodec="aac", aac_coder="fast", ar=SAMPLE_RATE, ac=1, audio_bitrate="48k")
        kwargs["flags:a"] = "+bitexact"
    try:
        with atomic_path(out) as tmp:
            stream = ffmpeg.output(*streams, str(tmp), format="mp4", **kwargs).overwrite_output()
            stream.run(cmd=imageio_ffmpeg.get_ffmpeg_exe(), input=frames.tobytes(), quiet=True)
    except ffmpeg.Error as exc:
        raise RuntimeError(f"ffmpeg failed for {out}: {exc.stderr.decode(errors='replace')[-800:]}") from exc
    finally:
        if wav_path is not None:
            wav_path.unlink(missing_ok=True)


def render_video(spec: VideoSpec, out_dir: Path) -> str:
    out = out_dir / spec.filename
    encode_mp4(render_frames(spec), spec.fps, out, render_audio(spec) if spec.has_audio else None)
    return spec.video_id
