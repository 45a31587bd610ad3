"""synthetic-events: segments that tile each video, a compositional split, windows that match the
rendered boundaries, reruns, the CLI and the moment oracle on a hand-built case."""
from __future__ import annotations

import json
from collections import Counter

import av
import numpy as np
import pytest

from data.manifest import read_manifest
from data.settings import get_settings
from data.synthetic import cli, events, render, scenes
from data.synthetic.events_oracle import Moment, moment_ceilings
from data.windows import read_windows, windows_path

TINY = dict(n=8, seed=3, n_test=3, n_val=1)


def bundle(spec) -> tuple:
    return tuple(spec.attributes.values())


@pytest.fixture(scope="module")
def events_home(tmp_path_factory):
    """A prepared 8-video set (train 4 / val 1 / test 3) under its own settings root."""
    settings = get_settings(tmp_path_factory.mktemp("events_home"))
    events.prepare_events(**TINY, settings=settings, progress=False)
    return settings


def records(settings):
    folder = settings.dataset_dir(events.EVENTS_DATASET)
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]


def test_segments_tile_each_video():
    videos = events.plan_events(200, seed=5)
    assert Counter(len(v.segments) for v in videos).keys() == {2, 3, 4, 5}
    for v in videos:
        bounds = v.bounds
        assert bounds[0][0] == 0 and 6 <= v.duration_s <= 12
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))        # no gap, no overlap
        for (start, end), seg in zip(bounds, v.segments):
            assert end - start >= 1.2 - 1e-9 and end - start == pytest.approx(seg.duration_s)
            assert round(start * events.FPS) == pytest.approx(start * events.FPS, abs=1e-6)   # on a frame
            assert 3 <= len(scenes.captions_for(seg)) <= 5
        for a, b in zip(v.segments, v.segments[1:]):                        # each boundary seen and heard
            assert all(a.attributes[k] != b.attributes[k] for k in events.CHANGING)
    lengths = [s.duration_s for v in videos for s in v.segments]
    assert min(lengths) == pytest.approx(1.2) and max(lengths) > 6          # varied lengths
    assert any(len(set(map(bundle, v.segments))) < len(v.segments) for v in videos)   # repeats in a video


def test_test_split_is_compositional_with_shared_bundles():
    videos = events.plan_events(200, seed=5)
    assert Counter(v.split for v in videos) == {"train": 130, "val": 20, "test": 50}
    test = [bundle(s) for v in videos if v.split == "test" for s in v.segments]
    seen = {bundle(s) for v in videos if v.split != "test" for s in v.segments}
    assert not set(test) & seen                                              # bundles unseen in train / val
    distinct = list(dict.fromkeys(test))
    assert 0.75 * len(test) < len(distinct) < len(test)                      # mostly new, some shared
    owners = {b: {v.video_id for v in videos if v.split == "test" for s in v.segments if bundle(s) == b}
              for b in distinct}
    assert any(len(o) > 1 for o in owners.values())                          # shared across test videos
    one_apart = sum(sum(x != y for x, y in zip(a, b)) == 1 for i, a in enumerate(distinct) for b in distinct[i + 1:])
    assert one_apart >= 10                                                   # near-duplicate bundles


def test_same_seed_same_plan_other_seed_differs():
    assert events.plan_events(**TINY) == events.plan_events(**TINY)
    assert events.plan_events(40, seed=1) != events.plan_events(40, seed=2)


def test_manifest_windows_and_annotations_agree(events_home):
    manifest = read_manifest(events_home.manifest_path(events.EVENTS_DATASET))
    windows = read_windows(windows_path(events.EVENTS_DATASET, events_home))
    plan = {v.video_id: v for v in events.plan_events(**TINY)}
    assert manifest.metadata["reader"] == events.EVENTS_DATASET and len(manifest) == TINY["n"]
    by_caption = {(w.video_id, w.caption_index): (w.start_s, w.end_s) for w in windows}
    assert len(by_caption) == len(windows) == sum(len(r.captions) for r in manifest.records())
    for rec in manifest.records():
        video = plan[rec.video_id]
        assert rec.captions == sum(video.captions(), []) and rec.split == video.split
        assert rec.duration_s == video.duration_s
        expected = [b for b, caps in zip(video.bounds, video.captions()) for _ in caps]
        assert [by_caption[rec.video_id, i] for i in range(len(rec.captions))] == expected
    for rec in records(events_home):
        for seg in rec["segments"]:
            assert {by_caption[rec["video_id"], i] for i in seg["captions"]} == {(seg["start_s"], seg["end_s"])}


def dominant_colours(frames: np.ndarray) -> list[str | None]:
    """Per frame ``[N, H, W, 3]``: the palette colour with the most pixels near it (every second
    pixel; None under 10)."""
    small = frames[:, ::2, ::2].astype(np.int16)
    counts = np.stack([np.all(np.abs(small - rgb) < 40, axis=-1).sum(axis=(1, 2)) for rgb in render.RGB.values()], 1)
    return [list(render.RGB)[c.argmax()] if c.max() >= 10 else None for c in counts]


def test_rendered_boundaries_match_the_windows(events_home):
    root = events_home.dataset_dir(events.EVENTS_DATASET)
    boundaries = []      # per boundary: the colours of the frames just before and just after it
    for rec in records(events_home):
        with av.open(str(root / rec["video"])) as c:
            frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
        with av.open(str(root / rec["video"])) as c:
            audio = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
        assert len(frames) == round(rec["duration_s"] * events.FPS)
        assert abs(len(audio) / render.SAMPLE_RATE - rec["duration_s"]) < 0.1
        seen = dominant_colours(frames)
        expected = [seg["attributes"]["colour"] for seg in rec["segments"]
                    for _ in range(round((seg["end_s"] - seg["start_s"]) * events.FPS))]
        assert sum(s is None for s in seen) <= 0.05 * len(seen)          # the shape is almost always in view
        assert [s for s in seen if s] == [e for s, e in zip(seen, expected) if s]   # colour changes on the frame
        boundaries += [(seen[f - 1], seen[f], expected[f - 1], expected[f])
                       for f in (round(seg["start_s"] * events.FPS) for seg in rec["segments"][1:])]
        for seg in rec["segments"]:                                       # sound: silent where it should be
            a, b = (round((t + d) * render.SAMPLE_RATE) for t, d in ((seg["start_s"], 0.1), (seg["end_s"], -0.1)))
            rms = float(np.sqrt(np.mean(audio[a:b] ** 2)))
            assert (rms < 0.01) if seg["attributes"]["sound"] == "silent" else (rms > 0.03), (seg, rms)
    seen_both = [b for b in boundaries if b[0] and b[1]]
    assert len(seen_both) >= 0.9 * len(boundaries) and all(a == c != d == b for a, b, c, d in seen_both)


def test_same_seed_same_files_and_rerun_reuses_videos(events_home, tmp_path, monkeypatch, capsys):
    root = events_home.dataset_dir(events.EVENTS_DATASET)
    again = tmp_path / "again"
    events.generate_events(again, **TINY, progress=False)
    for name in ("annotations.jsonl", "oracle.json", "oracle.md"):
        assert (again / name).read_text() == (root / name).read_text()
    for rec in records(events_home)[:3]:
        assert (again / rec["video"]).read_bytes() == (root / rec["video"]).read_bytes()
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "videos").iterdir()}
    monkeypatch.setenv("TVR_HOME", str(events_home.root))
    argv = ["--events", "--n", "8", "--seed", "3", "--test", "3", "--val", "1", "--workers", "1"]
    assert cli.main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (root / "videos").iterdir()} == stamps
    assert "synthetic-events oracle ceilings" in capsys.readouterr().out
    assert cli.main(argv[:-4] + ["--val", "2"]) == 2                     # another plan in the same folder
    assert "another plan" in capsys.readouterr().err


def test_cli_refuses_out_with_events_and_too_few_videos(tvr_home):
    for argv in (["--events", "--out", "x"], ["--n", "8"], ["--events", "--n", "3"]):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 2
    assert not tvr_home.exists()                                          # refused before any work


def test_oracle_hand_built_case():
    red = dict(shape="circle", colour="red", size="small", texture="plain", motion="left", sound="low")
    blue = dict(shape="square", colour="blue", size="small", texture="plain", motion="left", sound="high")
    red2 = dict(shape="triangle", colour="red", size="large", texture="striped", motion="still", sound="buzz")
    videos = [[Moment(0, 2, red, 3), Moment(2, 5, blue, 4), Moment(5, 7, red, 3)],   # red repeated in video 0
              [Moment(0, 3, red, 2), Moment(3, 6, red2, 3)]]                        # red again in video 1
    table = moment_ceilings(videos)
    every, colour = table["visual + motion + sound (all)"], table["colour only"]
    # all attributes: the two reds of video 0 tie within it (1/2); the red bundle occurs 3 times in the corpus
    assert every["svmr"]["R1@0.5"] == pytest.approx(100 * (6 * 0.5 + 4 + 2 + 3) / 15)
    assert every["svmr"]["mIoU"] == pytest.approx(every["svmr"]["R1@0.7"])
    assert every["vcmr"]["R1@0.5"] == pytest.approx(100 * (8 / 3 + 4 + 3) / 15)
    # colour only: every video holds two reds (1/2), the corpus four (1/4)
    assert colour["svmr"]["R1@0.3"] == pytest.approx(100 * (11 * 0.5 + 4) / 15)
    assert colour["vcmr"]["R1@0.7"] == pytest.approx(100 * (11 / 4 + 4) / 15)
    assert colour["vcmr"]["R10@0.5"] == colour["svmr"]["R5@0.5"] == pytest.approx(100)
