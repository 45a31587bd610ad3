"""End-to-end extraction: every modality from one decode per video, resume, bad files, fixtures, CLI."""
from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, PROJECT, requires_fixtures
from test_extract_support import ffmpeg, make_video, prepare_synthetic, tiny_clip_dir, tiny_config

from data.manifest import VideoRecord, build_manifest, write_manifest
from data.prepare import prepare
from data.settings import get_settings
from data.store import FINAL_FAILURE
from extractors import decode
from extractors.audio import AudioExtractor
from extractors.clip import ClipFramesExtractor, ClipTextExtractor
from extractors.motion import MotionExtractor
from extractors.cli import build_parser, config_from_args
from extractors.config import ExtractConfig
from extractors.runner import extract_dataset
from extractors.summary import summary_lines, summary_markdown

MODALITIES = ("clip_frames", "clip_text", "audio", "motion")


def _sets(config, dataset):
    return {e.modality: e.feature_set(get_settings(), dataset) for e in config.build()}


def _annotations(folder: Path) -> dict[str, dict]:
    lines = (folder / "annotations.jsonl").read_text().splitlines()
    return {r["video_id"]: r for r in map(json.loads, filter(None, lines))}


def test_all_modalities_one_decode_per_video_and_resume(tiny_synthetic, tvr_home, tmp_path, monkeypatch):
    prepare_synthetic(tiny_synthetic)
    ann = _annotations(tiny_synthetic)
    config = tiny_config(tmp_path)
    decode.OPENS.clear()
    opened_with = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda path, *a, **k: opened_with.append((str(path), k)) or real_open(path, *a, **k))
    counts = extract_dataset("synthetic", config, shard_size=8)
    # each video opened and decoded exactly once, although four modalities used it
    assert sorted(decode.OPENS.values()) == [1] * len(ann)
    assert all(p.startswith("file:") and k.get("options") == {"protocol_whitelist": "file"}
               for p, k in opened_with)                      # FFmpeg's file protocol only
    opened = [p.removeprefix("file:") for p, _ in opened_with]
    assert sorted(opened) == sorted(decode.OPENS) and len(set(opened)) == len(ann)
    for m in MODALITIES:
        c = counts[m]
        assert c.failed == 0 and c.done + c.empty == len(ann) and c.random_weights
    sets = _sets(config, "synthetic")
    for m, fs in sets.items():
        info = json.loads((fs.folder / "_extractor.json").read_text())
        assert info["random_weights"] is True and "RANDOM WEIGHTS" in info["WARNING"]
        assert info["params"]["weights"] == "random" and info["params"]["seed"] == 0
    frames = sets["clip_frames"].read()
    assert sorted(frames.video_ids) == sorted(ann)
    for i, vid in enumerate(frames.video_ids):
        n = int(np.floor(ann[vid]["duration_s"] - 1e-6)) + 1  # 1 fps from t = 0
        assert frames.row(i).shape == (n, 32)
        np.testing.assert_allclose(frames.timestamps(i), np.arange(n), atol=0.05)
    audio = sets["audio"].read()
    for i, vid in enumerate(audio.video_ids):
        has = ann[vid]["has_audio"]
        assert audio.column("has_audio")[i] == has
        assert audio.status[i] == ("ok" if has else "empty")
        if has:
            assert audio.row(i).shape == (int(ann[vid]["duration_s"] / 0.96), 128)
    motion = sets["motion"].read()
    assert all(motion.row(i).shape[1] == 2304 and len(motion.row(i)) >= 1 for i in range(len(motion)))
    text = sets["clip_text"].read()
    assert len(text) == sum(len(r["captions"]) for r in ann.values())
    for i in range(len(text)):
        vid, k = text.column("video_id")[i], text.column("caption_index")[i]
        assert text.column("caption")[i] == ann[vid]["captions"][k]
        assert text.row(i).shape == (text.column("eot_index")[i] + 1, 32)
    assert any("RANDOM WEIGHTS" in line for line in summary_lines("synthetic", counts))
    assert "RANDOM WEIGHTS" in summary_markdown("synthetic", counts)

    # second run: nothing decoded, no model work, everything skipped
    def boom(self, batch):
        raise AssertionError("model work in a resumed run")

    for cls in (ClipFramesExtractor, ClipTextExtractor, AudioExtractor, MotionExtractor):
        monkeypatch.setattr(cls, "forward", boom)
    again = extract_dataset("synthetic", config, shard_size=8)
    assert sorted(decode.OPENS.values()) == [1] * len(ann) and len(opened) == len(ann)
    assert all(again[m].skipped == len(ann) and again[m].done == again[m].failed == 0 for m in MODALITIES)


def _bad_dataset(root: Path) -> Path:
    videos = root / "videos"
    videos.mkdir(parents=True)
    make_video(videos / "good.mp4", seconds=2.0, audio=(44100, 2))
    make_video(videos / "noaudio.mp4", seconds=2.0, audio=None)
    (videos / "zero.mp4").write_bytes(b"")
    make_video(root / "full.mp4", seconds=2.0)
    (videos / "truncated.mp4").write_bytes((root / "full.mp4").read_bytes()[:3000])
    (videos / "notvideo.mp4").write_text("hello, I am a text file\n" * 40)
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=48000:duration=1.5", "-c:a", "aac",
           videos / "audioonly.m4a")
    names = ["good.mp4", "noaudio.mp4", "zero.mp4", "truncated.mp4", "notvideo.mp4", "audioonly.m4a"]
    ann = root / "captions.jsonl"
    ann.write_text("".join(json.dumps({"video": n, "captions": [f"caption of {n}"], "split": "test"}) + "\n"
                           for n in names))
    return ann


EXPECTED = {  # video -> (clip_frames, audio, motion) status; clip_text is ok for all
    "good": ("ok", "ok", "ok"),
    "noaudio": ("ok", "empty", "ok"),
    "zero": ("failed", "failed", "failed"),
    "truncated": ("failed", "failed", "failed"),
    "notvideo": ("failed", "failed", "failed"),
    "audioonly": ("failed", "ok", "failed"),
}
ERRORS = {"zero": "empty file (0 bytes)", "truncated": "truncated or corrupt MP4/MOV",
          "notvideo": "not a media file FFmpeg can read", "audioonly": "no video stream (audio-only file)"}


def test_bad_files_are_recorded_and_the_rest_extracted(tvr_home, tmp_path):
    ann = _bad_dataset(tmp_path / "bad")
    prepare("folder", ann, tmp_path / "bad" / "videos", name="bad")
    config = tiny_config(tmp_path)
    counts = extract_dataset("bad", config, shard_size=4)
    sets = _sets(config, "bad")
    tables = {m: fs.read() for m, fs in sets.items()}
    for m, col in (("clip_frames", 0), ("audio", 1), ("motion", 2)):
        t = tables[m]
        status = dict(zip(t.video_ids, t.status))
        errors = dict(zip(t.video_ids, t.column("error")))
        assert status == {v: s[col] for v, s in EXPECTED.items()}, m
        for vid, message in ERRORS.items():
            if status[vid] == "failed":
                assert message in errors[vid] and vid in errors[vid], (m, vid, errors[vid])
        assert counts[m].failed == list(status.values()).count("failed")
    audio = tables["audio"]
    has_audio = dict(zip(audio.video_ids, audio.column("has_audio")))
    assert has_audio["good"] and has_audio["audioonly"] and has_audio["noaudio"] is False
    assert set(tables["clip_text"].status) == {"ok"} and len(tables["clip_text"]) == len(EXPECTED)


def test_text_only_run_opens_no_video(tvr_home, tmp_path):
    ann = _bad_dataset(tmp_path / "bad")
    prepare("folder", ann, tmp_path / "bad" / "videos", name="bad")
    decode.OPENS.clear()
    counts = extract_dataset("bad", tiny_config(tmp_path, modalities=("clip_text",)))
    assert counts["clip_text"].done == len(EXPECTED) and not decode.OPENS


@requires_fixtures
def test_real_fixture_clips_extract_without_error(tvr_home, tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    names = ["bikes.mp4", "carphone_pristine.mp4", "xine-ui_logo.mpg"]
    for n in names:
        shutil.copy(FIXTURES / "media" / n, media / n)
    # a real stereo 44.1 kHz track (drum loop) muxed onto the silent carphone clip
    ffmpeg("-i", FIXTURES / "media" / "carphone_pristine.mp4", "-i", FIXTURES / "media" / "sonicpi_loop_amen.flac",
           "-c:v", "copy", "-c:a", "aac", media / "carphone_amen.mp4")
    names.append("carphone_amen.mp4")
    ann = tmp_path / "fixtures.jsonl"
    ann.write_text("".join(json.dumps({"video": n, "captions": ["a clip"]}) + "\n" for n in names))
    prepare("folder", ann, media, name="fixtures")
    config = tiny_config(tmp_path, modalities=("clip_frames", "audio", "motion"))
    counts = extract_dataset("fixtures", config)
    assert all(c.failed == 0 for c in counts.values()), summary_lines("fixtures", counts)
    audio = _sets(config, "fixtures")["audio"].read()
    rows = dict(zip(audio.video_ids, range(len(audio))))
    assert audio.column("has_audio")[rows["carphone_amen"]] is True
    assert audio.row(rows["carphone_amen"]).shape == (1, 128)  # 1.75 s of drums: one 0.96 s window
    assert [audio.status[rows[v]] for v in ("bikes", "carphone_pristine", "xine-ui_logo")] == ["empty"] * 3
    frames = _sets(config, "fixtures")["clip_frames"].read()
    lengths = dict(zip(frames.video_ids, frames.lengths))
    assert lengths["bikes"] == 10 and lengths["carphone_pristine"] == 4 and lengths["xine-ui_logo"] == 1


def _cli_args(dataset: str, tmp_path: Path) -> list[str]:
    return [dataset, "--model", f"clip_frames={tiny_clip_dir(tmp_path)}", "--motion-size", "32",
            "--motion-fps", "2", "--motion-clip-frames", "4", "--device", "cpu", "--threads", "1"]


def test_cli_help_documents_the_options():
    out = subprocess.run([sys.executable, "-m", "flows.extract", "--help"], cwd=PROJECT, check=True,
                         capture_output=True, text=True).stdout
    for option in ("--modalities", "--weights", "--model", "--shard-size", "--device", "--prefect"):
        assert option in out


def test_prefect_path_builds_the_same_config_as_the_plain_run(tvr_home, tmp_path, monkeypatch):
    """``--prefect`` (and so a deployment) gets every option: each ExtractConfig field is a flow
    parameter, and the flow parameters the command line hands over give back the plain run's config."""
    from flows import extract as flow_module

    flow_parameters = set(inspect.signature(flow_module.extract.fn).parameters)
    assert {f.name for f in dataclasses.fields(ExtractConfig)} <= flow_parameters
    argv = ["syn", "--modalities", "clip_frames,clip_text", "--model", f"clip_frames={tiny_clip_dir(tmp_path)}",
            "--device", "cpu", "--precision", "fp32", "--seed", "9", "--batch-size", "clip_text=5",
            "--frame-fps", "2", "--decode", "exact", "--decode-threads", "3", "--decode-workers", "2",
            "--prefetch", "7", "--decode-budget", "12.5", "--hwaccel", "none", "--shard-size", "4"]
    settings = get_settings()
    plain = config_from_args(build_parser("x").parse_args(argv), settings)
    defaults = ExtractConfig()
    assert all(getattr(plain, f) != getattr(defaults, f) for f in
               ("decode", "decode_threads", "decode_workers", "prefetch", "decode_budget_s", "hwaccel"))
    calls = []

    class Flow:   # stands in for the Prefect flow: records what a flow run would be given
        def with_options(self, **_):
            return lambda *args, **kwargs: calls.append((args, kwargs))

    monkeypatch.setattr(flow_module, "extract", Flow())
    monkeypatch.setattr(flow_module, "require_api_server", lambda runner: None)
    table, _ = build_manifest([VideoRecord("v", "v.mp4", "test", ["a caption"])], tmp_path, dataset="syn")
    settings.manifest_path("syn").parent.mkdir(parents=True)
    write_manifest(table, settings.manifest_path("syn"))   # read and checked before the flow run, not used
    assert flow_module.main(argv + ["--prefect"]) == 0
    [(args, kwargs)] = calls
    assert args == ("syn",) and kwargs["shard_size"] == 4
    assert set(kwargs) <= flow_parameters
    assert ExtractConfig.from_parameters(kwargs, settings) == plain


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_one_row_per_video(tiny_synthetic, tvr_home, tmp_path):
    prepare_synthetic(tiny_synthetic)
    env = {**os.environ, "TVR_HOME": str(tvr_home), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.extract", *_cli_args("synthetic", tmp_path),
                             "--shard-size", "2"], cwd=PROJECT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    features = tvr_home / "features" / "synthetic"
    deadline = time.time() + 300
    while not list(features.glob("*/*/part-*.done")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(list(features.glob("*/*/part-*.done")))
    assert 0 < done_before < 4 * 8  # killed mid-run: some shards written, not all
    config = tiny_config(tmp_path)
    counts = extract_dataset("synthetic", config, shard_size=2)
    n = len(_annotations(tiny_synthetic))
    assert sum(c.skipped for c in counts.values()) > 0
    for m, fs in _sets(config, "synthetic").items():
        # a video being decoded at the kill is recorded as failed ("worker died while decoding ...", at most one)
        assert counts[m].failed <= 1 and all(e.startswith(FINAL_FAILURE) for e in counts[m].errors)
        assert counts[m].skipped + counts[m].done + counts[m].empty + counts[m].failed == n
        leftovers = [p.name for p in fs.folder.iterdir()
                     if p.suffix in (".tmp", ".claim") or (p.suffix == ".parquet" and not p.with_suffix(".done").is_file())]
        assert leftovers == [], leftovers
        keys = []
        for shard in fs.completed_shards():
            t = pq.read_table(shard)
            if m == "clip_text":
                keys += list(zip(t.column("video_id").to_pylist(), t.column("caption_index").to_pylist()))
            else:
                keys += t.column("video_id").to_pylist()
        assert len(keys) == len(set(keys)), f"{m}: duplicate rows across shards"
        assert len({k[0] if m == "clip_text" else k for k in keys}) == n
