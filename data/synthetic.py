"""synthetic-av: a generated video collection in which every modality matters.

Each video is a real MP4 (H.264 video, AAC audio at 16 kHz mono, or no audio stream at all) of
one large shape over a varied background. Its attributes:

============  =====================================================================
group         attribute: values
============  =====================================================================
visual        ``shape``: circle / square / triangle; ``colour``: 5 values;
              ``size``: small (~40% of the frame height) / large (~65%);
              ``texture``: plain / striped
motion        ``motion``: still / left / right / up / down, streaming across the frame at
              1.1-1.9 crossings per second and wrapping around (see :func:`_centre_path`)
sound         ``sound``: low hum / high tone / buzz / beeping / noise bursts / silent
              (silent = a silent track or no audio stream at all)
============  =====================================================================

Every caption names every attribute, in 3-5 paraphrases per video. The test split uses full
attribute combinations never seen in training (compositional), no two test videos share one,
and half of the test videos come in near-duplicate pairs that differ in a single attribute.
Everything is deterministic from the seed.

CLI: ``python -m data.synthetic --n 300 --seed 0 --out DIR`` writes ``DIR/videos/*.mp4``,
``DIR/annotations.jsonl`` (the ``folder`` dataset format plus an ``attributes`` object) and
``DIR/oracle.json`` / ``DIR/oracle.md`` (the R@K ceilings of perfect attribute knowledge).
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import multiprocessing
import os
import sys
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from data.atomic import atomic_path, write_json_atomic, write_text_atomic
from data.cli import add_version

SAMPLE_RATE = 16_000
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": ("circle", "square", "triangle"),
    "colour": ("red", "green", "blue", "yellow", "magenta"),
    "size": ("small", "large"),
    "texture": ("plain", "striped"),
    "motion": ("still", "left", "right", "up", "down"),
    "sound": ("low", "high", "buzz", "beeping", "noise", "silent"),
}
GROUPS = {
    "visual": ("shape", "colour", "size", "texture"),
    "motion": ("motion",),
    "sound": ("sound",),
}
RGB = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (40, 60, 230),
       "yellow": (235, 220, 30), "magenta": (220, 40, 210)}
SIZE_FRACTION = {"small": 0.40, "large": 0.65}
CROSSINGS_PER_S = (1.1, 1.9)   # speed of a moving object: frame crossings per second

# Paraphrase vocabulary: each attribute value has several surface forms.
WORDS = {
    "shape": {"circle": ["circle", "disc", "round disc"], "square": ["square", "box", "square block"],
              "triangle": ["triangle", "triangular shape", "triangle"]},
    "size": {"small": ["small", "little", "smaller"], "large": ["large", "big", "huge"]},
    "texture": {"plain": ["plain", "solid", "uniform"], "striped": ["striped", "stripy", "banded"]},
    "motion": {"still": ["stays still", "does not move", "rests in place"],
               "left": ["moves to the left", "slides leftwards", "travels left"],
               "right": ["moves to the right", "slides rightwards", "travels right"],
               "up": ["moves up", "rises upwards", "travels upward"],
               "down": ["moves down", "falls downwards", "sinks down"]},
    "sound": {"low": ["a low hum", "a deep low tone", "a low droning sound"],
              "high": ["a high-pitched tone", "a high whistle", "a shrill high tone"],
              "buzz": ["a harsh buzz", "a buzzing sound", "a rough buzzing noise"],
              "beeping": ["rhythmic beeping", "fast repeated beeps", "a beeping pattern"],
              "noise": ["bursts of static noise", "crackling noise bursts", "pulses of hiss"],
              "silent": ["no sound at all", "complete silence", "nothing audible"]},
}
TEMPLATES = [
    "a {size} {texture} {colour} {shape} {motion} with {sound}",
    "there is a {colour} {shape}, {size} and {texture}, that {motion} while you hear {sound}",
    "{sound} plays as a {size} {colour} {shape} with a {texture} look {motion}",
    "a {texture} {colour} {shape} of {size} size {motion}; the audio is {sound}",
    "video of a {size} {colour} {texture} {shape} that {motion}, with {sound} in the background",
]


@dataclass(frozen=True)
class VideoSpec:
    """Everything needed to render one video deterministically."""

    video_id: str
    index: int
    split: str
    attributes: dict
    duration_s: float
    fps: int
    width: int
    height: int
    has_audio: bool
    seed: int

    @property
    def filename(self) -> str:
        return f"videos/{self.video_id}.mp4"


# ---------------------------------------------------------------------------------------------
# Planning: attribute combinations and splits
# ---------------------------------------------------------------------------------------------
def _combo_dict(combo: tuple) -> dict:
    return dict(zip(ATTRIBUTES, combo))


def plan_dataset(n: int, seed: int, n_test: int | None = None, n_val: int | None = None) -> list[VideoSpec]:
    """Choose attributes, splits and formats for ``n`` videos (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 1])
    n_test = min(100, n // 4) if n_test is None else n_test
    n_val = max(1, n // 10) if n_val is None else n_val
    if n_test + n_val >= n:
        raise ValueError(f"n={n} too small for {n_test} test and {n_val} val videos")
    all_combos = list(itertools.product(*ATTRIBUTES.values()))
    names = list(ATTRIBUTES)
    # Test: half near-duplicate pairs (differ in exactly one attribute), all combinations distinct.
    test: list[tuple] = []
    chosen: set[tuple] = set()
    while len(test) < n_test:
        base = all_combos[rng.integers(len(all_combos))]
        if base in chosen:
            continue
        test.append(base)
        chosen.add(base)
        if len(test) < n_test and len(test) <= n_test // 2:
            attr = names[rng.integers(len(names))]
            k = names.index(attr)
            others = [v for v in ATTRIBUTES[attr] if v != base[k]]
            twin = base[:k] + (others[rng.integers(len(others))],) + base[k + 1:]
            if twin not in chosen:
                test.append(twin)
                chosen.add(twin)
    pool = [c for c in all_combos if c not in chosen]
    n_train = n - n_test - n_val
    rest = [pool[i] for i in rng.integers(len(pool), size=n_train + n_val)]
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    combos = rest + test
    order = rng.permutation(n)  # interleave splits so ids carry no split information
    specs = []
    for vid_idx, j in enumerate(order):
        combo, split = combos[j], splits[j]
        attrs = _combo_dict(combo)
        fmt = rng.random()
        if fmt < 0.08:
            fps, (w, h) = 15, (176, 144)
        elif fmt < 0.16:
            fps, (w, h) = 30, (480, 360)
        else:
            fps, (w, h) = 25, (320, 240)
        duration = float(np.round(rng.uniform(2.0, 6.0) * 2) / 2)
        has_audio = not (attrs["sound"] == "silent" and rng.random() < 0.5)
        specs.append(VideoSpec(f"syn{vid_idx:05d}", vid_idx, split, attrs, duration, fps, w, h,
                               has_audio, int(rng.integers(2**31))))
    return specs


def captions_for(spec: VideoSpec) -> list[str]:
    """3-5 paraphrased captions, each naming every attribute."""
    rng = np.random.default_rng([spec.seed, 2])
    k = int(rng.integers(3, 6))
    templates = rng.permutation(len(TEMPLATES))[:k]
    caps = []
    for t in templates:
        words = {a: WORDS[a][v][rng.integers(len(WORDS[a][v]))] for a, v in spec.attributes.items() if a in WORDS}
        words["colour"] = spec.attributes["colour"]
        caps.append(TEMPLATES[t].format(**words))
    return caps


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
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


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
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


def render_frames(spec: VideoSpec) -> np.ndarray:
    """All frames ``[n_frames, H, W, 3]`` uint8 (RGB)."""
    rng = np.random.default_rng([spec.seed, 3])
    a = spec.attributes
    n = int(round(spec.duration_s * spec.fps))
    side = int(SIZE_FRACTION[a["size"]] * spec.height)
    sprite, mask = _sprite(a["shape"], a["texture"], a["colour"], side)
    bg = _background(rng, spec.width, spec.height)
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


# ---------------------------------------------------------------------------------------------
# Oracle ceilings
# ---------------------------------------------------------------------------------------------
ORACLE_SUBSETS = {
    "colour only": ("colour",),
    "visual (shape, colour, size, texture)": GROUPS["visual"],
    "visual + motion": GROUPS["visual"] + GROUPS["motion"],
    "visual + sound": GROUPS["visual"] + GROUPS["sound"],
    "visual - shape + motion + sound": ("colour", "size", "texture", "motion", "sound"),
    "visual + motion + sound (all)": GROUPS["visual"] + GROUPS["motion"] + GROUPS["sound"],
}


def oracle_ceilings(attributes: list[dict], ks=(1, 5, 10)) -> dict[str, dict[str, float]]:
    """Expected text-to-video R@K (%) of a model that knows exactly the attributes of a subset.

    Every caption names all attributes, so a query for video i ties with every gallery video that
    matches i on the known subset; with ties broken uniformly at random, P(rank < K) = min(1, K/m)
    for m tied videos. Every caption of a video gives the same value, so the per-video mean is the
    per-caption mean up to caption counts (reported per video).
    """
    out = {}
    for name, keys in ORACLE_SUBSETS.items():
        sigs = [tuple(a[k] for k in keys) for a in attributes]
        counts: dict[tuple, int] = {}
        for s in sigs:
            counts[s] = counts.get(s, 0) + 1
        out[name] = {f"R@{k}": float(100 * np.mean([min(1.0, k / counts[s]) for s in sigs])) for k in ks}
    return out


def oracle_markdown(table: dict[str, dict[str, float]], n_test: int) -> str:
    lines = [f"# synthetic-av oracle ceilings (test split, {n_test} videos, text-to-video)", "",
             "Expected R@K (%) of a model that knows the listed attributes perfectly and nothing else; "
             "ties broken uniformly at random.", "", "| knows | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['R@1']:.1f} | {row['R@5']:.1f} | {row['R@10']:.1f} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
def generate(out_dir: str | Path, n: int = 300, seed: int = 0, workers: int | None = None,
             n_test: int | None = None, n_val: int | None = None, progress: bool = True) -> Path:
    """Render the dataset into ``out_dir``; videos already present (same plan) are kept.

    Returns the path of ``annotations.jsonl``.
    """
    out_dir = Path(out_dir)
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    specs = plan_dataset(n, seed, n_test, n_val)
    plan_key = {"n": n, "seed": seed, "n_test": n_test, "n_val": n_val, "generator": 1}
    plan_file = out_dir / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan_key:
        raise FileExistsError(f"{out_dir} holds a synthetic dataset with another plan "
                              f"({plan_file.read_text().strip()}); choose an empty folder")
    write_json_atomic(plan_file, plan_key)
    todo = [s for s in specs if not (out_dir / s.filename).is_file()]
    workers = workers or os.cpu_count() or 1
    start = time.time()
    # spawn, not fork: forking a process that already runs torch's thread pools can deadlock the child
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, _ in enumerate(pool.map(render_video, todo, itertools.repeat(out_dir), chunksize=4), 1):
            if progress and (done % 25 == 0 or done == len(todo)):
                print(f"  rendered {done}/{len(todo)} videos ({time.time() - start:.1f} s)", file=sys.stderr)
    lines = []
    for s in specs:
        rec = {"video_id": s.video_id, "video": s.filename, "captions": captions_for(s), "split": s.split,
               "duration_s": s.duration_s, "fps": s.fps, "width": s.width, "height": s.height,
               "has_audio": s.has_audio, "attributes": s.attributes}
        lines.append(json.dumps(rec))
    ann = out_dir / "annotations.jsonl"
    write_text_atomic(ann, "\n".join(lines) + "\n")
    test_attrs = [s.attributes for s in specs if s.split == "test"]
    table = oracle_ceilings(test_attrs)
    write_json_atomic(out_dir / "oracle.json", {"n_test": len(test_attrs), "t2v": table})
    write_text_atomic(out_dir / "oracle.md", oracle_markdown(table, len(test_attrs)))
    return ann


def load_attributes(annotations: str | Path) -> dict[str, dict]:
    """``video_id -> attributes`` from a synthetic ``annotations.jsonl``."""
    out = {}
    with open(annotations, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[rec["video_id"]] = rec["attributes"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="number of videos (default 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--out", required=True, help="output folder (videos/, annotations.jsonl, oracle.md)")
    p.add_argument("--test", type=int, default=None, help="test videos (default min(100, n/4))")
    p.add_argument("--val", type=int, default=None, help="validation videos (default n/10)")
    p.add_argument("--workers", type=int, default=None, help="render processes (default: all cores)")
    add_version(p)
    args = p.parse_args(argv)
    start = time.time()
    ann = generate(args.out, args.n, args.seed, args.workers, args.test, args.val)
    print(f"wrote {args.n} videos and {ann} in {time.time() - start:.1f} s")
    print((Path(args.out) / "oracle.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
