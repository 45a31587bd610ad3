"""synthetic-events: videos made of 2-5 segments with known boundaries, for moment retrieval.

Each video (6-12 s, 176x144 at 15 fps, H.264 + AAC 16 kHz mono, deterministic from the seed) keeps
one background while its segments follow each other. A segment is a synthetic-av scene of its own
(:mod:`~data.synthetic.scenes` attributes: shape, colour, size, texture, motion, sound; rendered by
:mod:`~data.synthetic.render`) with 3-5 captions naming every attribute of that segment only, so a
caption is answerable from its segment's time range alone. Neighbouring segments always differ in
colour and sound (each boundary is seen and heard); a segment may repeat an earlier, non-adjacent
segment of its video (:data:`REPEAT_P`), and a test segment may reuse another test segment's bundle
(:data:`SHARE_P`), so even perfect attribute knowledge cannot always tell them apart.

Boundaries fall on a 0.2 s grid (3 frames, 3,200 audio samples); segments last at least 1.2 s.
Splits as in synthetic-av (:func:`~data.synthetic.scenes.split_sizes`); compositional at the segment
level: no full attribute bundle of a test segment occurs in a training or validation video.

:func:`generate_events` writes ``videos/``, ``annotations.jsonl`` (the ``folder`` format: every
caption of a video in its ``captions`` list, each as ``{"caption", "start_s", "end_s"}`` with its
segment's window; plus ``segments``: times, attributes and caption indices) and ``oracle.json`` /
``oracle.md`` (:mod:`~data.synthetic.events_oracle`). :func:`prepare_events` does so under
``$TVR_HOME/datasets/synthetic-events/`` and adds the manifest and the caption windows
(``windows.parquet``, :mod:`data.windows`). CLI: ``python -m data.synthetic --events``.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data.annotations import DatasetInfo
from data.atomic import write_json_atomic, write_text_atomic
from data.folder import read_jsonl
from data.manifest import BuildReport, build_manifest, write_manifest
from data.settings import Settings, get_settings
from data.synthetic import render
from data.synthetic.events_oracle import Moment, moment_ceilings, moment_markdown
from data.synthetic.output import claim_folder, render_missing
from data.synthetic.scenes import ATTRIBUTES, VideoSpec, captions_for, compositional_test_combos, split_sizes
from data.windows import WindowLog, windows_path, write_windows

EVENTS_DATASET = "synthetic-events"
EVENTS_N = 120                  # default number of videos
FPS, WIDTH, HEIGHT = 15, 176, 144
GRID_S = 0.2                    # boundary grid: 3 frames at FPS, 3,200 samples at render.SAMPLE_RATE
MIN_SEGMENT_UNITS = 6           # 1.2 s: a 1 fps frame sampler sees every segment at least once
DURATION_UNITS = (30, 60)       # 6-12 s per video
SEGMENTS = (2, 5)               # segments per video
CHANGING = ("colour", "sound")  # neighbouring segments always differ in these
REPEAT_P = 0.15                 # a segment repeats an earlier, non-adjacent segment of its video
SHARE_P = 0.10                  # a test segment reuses a bundle another test segment already has
INFO = DatasetInfo("caption", "every caption of every test video; as a moment query, its window in "
                   "windows.parquet", "synthetic-av sizes; test segment bundles unseen in train and val")
_CHANGING_AT = tuple(list(ATTRIBUTES).index(a) for a in CHANGING)


@dataclass(frozen=True)
class EventVideo:
    """One planned video: its segments in time order, each a :class:`VideoSpec` of the segment
    alone (attributes, ``duration_s``, format, seed); ``seed`` draws the shared background."""

    video_id: str
    split: str
    seed: int
    segments: tuple[VideoSpec, ...]

    @property
    def filename(self) -> str:
        return f"videos/{self.video_id}.mp4"

    @property
    def bounds(self) -> list[tuple[float, float]]:
        """``(start_s, end_s)`` of each segment, seconds from the start; they tile the video."""
        ends = np.cumsum([round(s.duration_s / GRID_S) for s in self.segments])
        edges = [0.0] + [round(float(e) * GRID_S, 3) for e in ends]
        return list(zip(edges[:-1], edges[1:]))

    @property
    def duration_s(self) -> float:
        return self.bounds[-1][1]

    def captions(self) -> list[list[str]]:
        """The 3-5 captions of each segment (:func:`~data.synthetic.scenes.captions_for`)."""
        return [captions_for(s) for s in self.segments]


def _segment_units(rng: np.random.Generator) -> list[int]:
    """Segment lengths in :data:`GRID_S` units: 2-5 varied lengths summing to 6-12 s."""
    k = int(rng.integers(SEGMENTS[0], SEGMENTS[1] + 1))
    total = int(rng.integers(DURATION_UNITS[0], DURATION_UNITS[1] + 1))
    spare = rng.multinomial(total - k * MIN_SEGMENT_UNITS, rng.dirichlet(np.ones(k)))
    return [MIN_SEGMENT_UNITS + int(x) for x in spare]


def _next_bundle(rng: np.random.Generator, bundles: list[tuple], test: bool, train_pool: list[tuple],
                 fresh: list[tuple], shared: list[tuple]) -> tuple:
    """The bundle of the segment after ``bundles`` (those of its video so far). Test segments take
    the first unused held-out bundle that fits (``fresh``, consumed) or reuse one (``shared``)."""
    def fits(c: tuple) -> bool:
        return not bundles or all(c[i] != bundles[-1][i] for i in _CHANGING_AT)

    earlier = [b for b in bundles[:-1] if fits(b)]
    if earlier and rng.random() < REPEAT_P:
        return earlier[rng.integers(len(earlier))]
    if not test:
        while not fits(c := train_pool[rng.integers(len(train_pool))]):
            pass
        return c
    reuse = [c for c in shared if fits(c)]
    unused = [c for c in fresh if fits(c)]
    if reuse and (rng.random() < SHARE_P or not unused):
        return reuse[rng.integers(len(reuse))]
    fresh.remove(unused[0])
    shared.append(unused[0])
    return unused[0]


def plan_events(n: int = EVENTS_N, seed: int = 0, n_test: int | None = None,
                n_val: int | None = None) -> list[EventVideo]:
    """Splits, segment lengths, bundles and seeds of ``n`` videos (deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 11])
    n_train, n_val, n_test = split_sizes(n, n_test, n_val)
    if n_test < 1:
        raise ValueError(f"n={n} with {n_test} test videos: synthetic-events needs test videos for its oracle")
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    splits = [splits[j] for j in rng.permutation(n)]   # ids carry no split information
    layouts = [_segment_units(rng) for _ in range(n)]
    n_test_segments = sum(len(u) for u, s in zip(layouts, splits) if s == "test")
    fresh = compositional_test_combos(rng, n_test_segments + 2 * SEGMENTS[1])   # spare for the fit rule
    held_out = set(fresh)
    train_pool = [c for c in itertools.product(*ATTRIBUTES.values()) if c not in held_out]
    shared: list[tuple] = []
    videos = []
    for i, (units, split) in enumerate(zip(layouts, splits)):
        bundles: list[tuple] = []
        for _ in units:
            bundles.append(_next_bundle(rng, bundles, split == "test", train_pool, fresh, shared))
        vid = f"evt{i:05d}"
        segments = tuple(VideoSpec(f"{vid}-{j}", j, split, dict(zip(ATTRIBUTES, b)), round(u * GRID_S, 3),
                                   FPS, WIDTH, HEIGHT, True, int(rng.integers(2**31)))
                         for j, (u, b) in enumerate(zip(units, bundles)))
        videos.append(EventVideo(vid, split, int(rng.integers(2**31)), segments))
    return videos


def render_event_video(video: EventVideo, out_dir: Path) -> str:
    """Write ``out_dir / video.filename``: the segments' frames over one background, their sounds
    (a silent segment is a silent stretch of the track) one after the other."""
    backdrop = render.background(np.random.default_rng([video.seed, 3]), WIDTH, HEIGHT)
    frames = np.concatenate([render.render_frames(s, backdrop) for s in video.segments])
    audio = np.concatenate([render.render_audio(s) for s in video.segments])
    render.encode_mp4(frames, FPS, out_dir / video.filename, audio)
    return video.video_id


def oracle_moments(videos: list[EventVideo]) -> list[list[Moment]]:
    """The test videos' segments as the oracle sees them."""
    return [[Moment(start, end, s.attributes, len(caps))
             for (start, end), s, caps in zip(v.bounds, v.segments, v.captions())]
            for v in videos if v.split == "test"]


def generate_events(out_dir: str | Path, n: int = EVENTS_N, seed: int = 0, workers: int | None = None,
                    n_test: int | None = None, n_val: int | None = None, progress: bool = True) -> Path:
    """Render the set into ``out_dir``; videos already present (same plan) are kept.
    Returns the path of ``annotations.jsonl``."""
    out_dir = Path(out_dir)
    videos = plan_events(n, seed, n_test, n_val)
    claim_folder(out_dir, {"set": EVENTS_DATASET, "n": n, "seed": seed, "n_test": n_test, "n_val": n_val,
                           "generator": 1})
    render_missing(render_event_video, videos, out_dir, workers, progress)
    lines = []
    for v in videos:
        captions, segments = [], []
        for (start, end), seg, caps in zip(v.bounds, v.segments, v.captions()):
            segments.append({"start_s": start, "end_s": end, "attributes": seg.attributes,
                             "captions": list(range(len(captions), len(captions) + len(caps)))})
            captions += [{"caption": c, "start_s": start, "end_s": end} for c in caps]
        lines.append(json.dumps({"video_id": v.video_id, "video": v.filename, "captions": captions,
                                 "split": v.split, "duration_s": v.duration_s, "fps": FPS, "width": WIDTH,
                                 "height": HEIGHT, "has_audio": True, "segments": segments}))
    ann = out_dir / "annotations.jsonl"
    write_text_atomic(ann, "\n".join(lines) + "\n")
    moments = oracle_moments(videos)
    table = moment_ceilings(moments)
    write_json_atomic(out_dir / "oracle.json", {"n_test_videos": len(moments),
                                                "n_test_segments": sum(map(len, moments)),
                                                "n_queries": sum(m.n_captions for v in moments for m in v),
                                                "moments": table})
    write_text_atomic(out_dir / "oracle.md", moment_markdown(table, moments))
    return ann


def prepare_events(n: int = EVENTS_N, seed: int = 0, settings: Settings | None = None, workers: int | None = None,
                   n_test: int | None = None, n_val: int | None = None,
                   progress: bool = True) -> tuple[Path, BuildReport]:
    """Generate (or reuse) the set under ``$TVR_HOME/datasets/synthetic-events/``, then write its
    manifest and its caption windows beside it, both read from ``annotations.jsonl`` by the ``folder``
    reader as for synthetic-av (:func:`data.folder.read_jsonl`, :func:`data.manifest.build_manifest`).
    Returns (manifest path, report)."""
    settings = settings or get_settings()
    root = settings.dataset_dir(EVENTS_DATASET)
    ann = generate_events(root, n, seed, workers, n_test, n_val, progress)
    metadata = {"reader": EVENTS_DATASET, "text_unit": INFO.text_unit, "test_queries": INFO.test_queries,
                "split_protocol": INFO.splits}
    log = WindowLog()
    table, report = build_manifest(read_jsonl(ann, log), root, dataset=EVENTS_DATASET, source=str(ann),
                                   strict_missing=True, metadata=metadata)
    out = write_manifest(table, settings.manifest_path(EVENTS_DATASET), home=settings.root)
    write_windows(windows_path(EVENTS_DATASET, settings), log.windows)
    return out, report
