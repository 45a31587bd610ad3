"""synthetic-av: deterministic real MP4s, splits, captions and oracle ceilings."""
from __future__ import annotations

import json
import subprocess
from collections import Counter

import av
import imageio_ffmpeg
import numpy as np
import pytest

from data import synthetic
from data.synthetic import render, scenes
from data.synthetic.oracle import oracle_ceilings
from data.prepare import prepare


def records(folder):
    return [json.loads(line) for line in (folder / "annotations.jsonl").read_text().splitlines()]


def decode_all(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_plan_splits_are_compositional():
    specs = scenes.plan_dataset(400, seed=3)
    test = [tuple(s.attributes.values()) for s in specs if s.split == "test"]
    train = {tuple(s.attributes.values()) for s in specs if s.split == "train"}
    assert len(test) == 100 and len(set(test)) == len(test)  # no two test videos share an attribute set
    assert not set(test) & train  # combinations unseen in training
    one_apart = sum(1 for i, a in enumerate(test) for b in test[i + 1:] if sum(x != y for x, y in zip(a, b)) == 1)
    assert one_apart >= 25  # near-duplicate pairs
    assert Counter(s.split for s in specs) == {"train": 260, "val": 40, "test": 100}
    assert {s.fps for s in specs} == {15, 25, 30} and len({(s.width, s.height) for s in specs}) == 3
    assert min(s.duration_s for s in specs) >= 2 and max(s.duration_s for s in specs) <= 6
    silent = [s for s in specs if s.attributes["sound"] == "silent"]
    assert any(s.has_audio for s in silent) and any(not s.has_audio for s in silent)
    assert all(s.has_audio for s in specs if s.attributes["sound"] != "silent")


def test_captions_name_every_attribute():
    for spec in scenes.plan_dataset(60, seed=1):
        caps = scenes.captions_for(spec)
        assert 3 <= len(caps) <= 5 and len(set(caps)) == len(caps)
        for cap in caps:
            for attr, value in spec.attributes.items():
                assert any(w in cap for w in scenes.WORDS.get(attr, {}).get(value, [value])), (attr, cap)


def test_files_decode_with_pyav_and_ffmpeg(tiny_synthetic):
    recs = records(tiny_synthetic)
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    for rec in recs:
        path = tiny_synthetic / rec["video"]
        with av.open(str(path)) as c:
            v = c.streams.video[0]
            assert v.codec_context.name == "h264" and (v.width, v.height) == (rec["width"], rec["height"])
            assert abs(float(v.average_rate) - rec["fps"]) < 0.01
            if rec["has_audio"]:
                a = c.streams.audio[0]
                assert a.codec_context.name == "aac" and a.rate == 16000 and a.channels == 1
            else:
                assert len(c.streams.audio) == 0  # really no audio stream
        out = subprocess.run([ffmpeg, "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True)
        assert out.returncode == 0 and not out.stderr, out.stderr


def test_same_seed_same_manifest_and_frames(tiny_synthetic, tmp_path, tvr_home):
    again = tmp_path / "again"
    synthetic.generate(again, n=16, seed=7, n_test=6, n_val=2, progress=False)
    assert (again / "annotations.jsonl").read_text() == (tiny_synthetic / "annotations.jsonl").read_text()
    for rec in records(again)[:4]:
        np.testing.assert_array_equal(decode_all(again / rec["video"]), decode_all(tiny_synthetic / rec["video"]))
    m1, _ = prepare("synthetic", tiny_synthetic, tiny_synthetic, name="s1")
    m2, _ = prepare("synthetic", again, again, name="s2")
    import pyarrow.parquet as pq
    t1, t2 = pq.read_table(m1), pq.read_table(m2)
    # fingerprints name each file's size and modification time: the same content rendered twice differs there
    assert t1.drop_columns(["fingerprint"]).equals(t2.drop_columns(["fingerprint"]))
    assert t1.column("fingerprint").to_pylist() != t2.column("fingerprint").to_pylist()


def test_other_seed_differs(tmp_path):
    a = [s.attributes for s in scenes.plan_dataset(50, seed=1)]
    b = [s.attributes for s in scenes.plan_dataset(50, seed=2)]
    assert a != b


def test_attributes_are_visible_in_pixels():
    spec = next(s for s in scenes.plan_dataset(200, seed=0)
                if s.attributes["motion"] == "right" and s.attributes["size"] == "small")
    frames = render.render_frames(spec)
    target = np.array(render.RGB[spec.attributes["colour"]])

    def centre_x(frame):
        hit = np.all(np.abs(frame.astype(int) - target) < 30, axis=-1)
        return np.nonzero(hit)[1].mean() if hit.any() else np.nan

    shifts = np.diff([centre_x(f) for f in frames])
    shifts = shifts[np.isfinite(shifts) & (np.abs(shifts) < 0.3 * spec.width)]   # drop the wrap-around jumps
    rate_px = np.array(render.CROSSINGS_PER_S) * spec.width / spec.fps
    assert np.median(shifts) > 0.5 * rate_px[0]          # streams rightwards, frame after frame


def test_direction_is_hidden_from_frames_one_second_apart():
    """Shifts over 1 s (wrapped to half a crossing either way) point both ways equally often."""
    rng = np.random.default_rng(0)
    t = np.array([0.0, 1.0])
    signs = []
    for _ in range(2000):
        x, _ = render._centre_path("right", t, 320, 240, 96, rng)
        shift = (x[1] - x[0]) / (320 + 96)
        signs.append(np.sign((shift + 0.5) % 1.0 - 0.5))
    assert abs(np.mean(signs)) < 0.1
    x, _ = render._centre_path("right", np.arange(16) / 15, 320, 240, 96, rng)
    assert (np.diff(x)[np.abs(np.diff(x)) < 100] > 0).all()   # at 15 fps: always rightwards


def test_audio_classes_differ_and_silence_is_silent():
    base = scenes.plan_dataset(200, seed=0)[0]
    waves = {}
    for sound in scenes.ATTRIBUTES["sound"]:
        spec = scenes.VideoSpec(**{**base.__dict__, "attributes": {**base.attributes, "sound": sound}})
        waves[sound] = render.render_audio(spec)
    assert not waves["silent"].any()
    spectra = {k: np.abs(np.fft.rfft(w[:16000])) for k, w in waves.items() if k != "silent"}
    peaks = {k: int(np.argmax(s)) for k, s in spectra.items()}
    assert peaks["low"] < 200 < peaks["buzz"] < 1000 < peaks["high"]  # Hz (1 s window => 1 Hz bins)


def test_oracle_ceilings_hand_example():
    attrs = [dict(shape="circle", colour="red", size="small", texture="plain", motion="left", sound="low"),
             dict(shape="circle", colour="red", size="small", texture="plain", motion="right", sound="low"),
             dict(shape="square", colour="blue", size="small", texture="plain", motion="left", sound="high")]
    table = oracle_ceilings(attrs)
    # visual only: the two red circles tie (1/2 each), the blue square is unique (1)
    assert table["visual (shape, colour, size, texture)"]["R@1"] == pytest.approx(100 * (0.5 + 0.5 + 1) / 3)
    assert table["visual + motion"]["R@1"] == pytest.approx(100)
    assert table["visual + motion + sound (all)"]["R@5"] == pytest.approx(100)


def test_generator_writes_oracle_and_refuses_other_plan(tiny_synthetic):
    oracle = json.loads((tiny_synthetic / "oracle.json").read_text())
    assert oracle["n_test"] == 6 and oracle["t2v"]["visual + motion + sound (all)"]["R@1"] == 100
    with pytest.raises(FileExistsError, match="another plan"):
        synthetic.generate(tiny_synthetic, n=20, seed=7, progress=False)
