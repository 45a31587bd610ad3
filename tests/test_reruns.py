"""Reruns over a corpus with broken files exit 0; only a systemic failure fails a run (issue 24).

A hostile corpus (two good videos, a zero-byte and a truncated MP4, an audio-only file, and the
real audio-only fixture files when the fixtures folder of tests/conftest.py is present) is extracted twice in a row:
both runs exit 0 and the second attempts nothing it already knows (a spy on the decoder). Then
``--retry-failed`` attempts the recorded failures again, a touched or replaced broken file is
attempted again, and a fresh failure of every video attempted (a model that cannot run) still exits
1. A failed text row is a known failure too, until ``retry_failed``. The same rule is checked for
the Prefect flow run (Completed with the counts in its artifact, or Failed) and for
``retrieval.reindex`` (command and flow).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import pytest
from conftest import FIXTURES
from test_extract_support import ffmpeg, make_video, tiny_clip_dir, tiny_config

from data.prepare import prepare
from extractors.clip import ClipFramesExtractor, ClipTextExtractor
from extractors.runner import extract_dataset

DS = "hostile"
MODALITIES = ("clip_frames", "clip_text", "audio")
FIXTURE_AUDIO = ("sonicpi_misc_crow.flac", "bell.oga", "Front_Center.wav")   # real files, no video stream


class Corpus:
    """The hostile corpus of one test: its folders, its file names and :meth:`prepare`."""

    def __init__(self, root: Path):
        self.root, self.videos = root, root / "videos"
        self.videos.mkdir(parents=True)
        make_video(self.videos / "good.mp4", seconds=1.0)
        make_video(self.videos / "silent.mp4", seconds=1.0, audio=None)
        (self.videos / "zero.mp4").write_bytes(b"")
        make_video(root / "whole.mp4", seconds=2.0)
        (self.videos / "truncated.mp4").write_bytes((root / "whole.mp4").read_bytes()[:3000])
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=16000:duration=1", "-c:a", "aac",
               self.videos / "audio_only.m4a")
        self.names = ["good.mp4", "silent.mp4", "zero.mp4", "truncated.mp4", "audio_only.m4a"]
        for name in FIXTURE_AUDIO if FIXTURES.is_dir() else ():
            shutil.copy(FIXTURES / "media" / name, self.videos / name)
            self.names.append(name)
        self.prepare()

    @property
    def broken(self) -> set[str]:
        """Video ids that fail in clip_frames (no video stream, empty, truncated)."""
        return {Path(n).stem for n in self.names} - {"good", "silent"}

    def add(self, *names: str) -> None:
        """New good videos, added to the manifest."""
        for name in names:
            make_video(self.videos / name, seconds=1.0)
        self.names += list(names)
        self.prepare()

    def prepare(self) -> None:
        ann = self.root / "captions.jsonl"
        ann.write_text("".join(json.dumps({"video": n, "captions": [f"a clip called {n}"], "split": "test"}) + "\n"
                               for n in self.names))
        prepare("folder", ann, self.videos, name=DS)


@pytest.fixture
def corpus(tvr_home, tmp_path, one_torch_thread) -> Corpus:
    return Corpus(tmp_path / "corpus")


@contextmanager
def broken_model() -> Iterator[None]:
    """Inside the block the CLIP frame model fails on every batch, as a lost or broken device would."""
    def forward(self, batch):
        raise RuntimeError("CUDA error: device lost")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ClipFramesExtractor, "forward", forward)
        yield


def run_cli(tmp_path: Path, capsys, *extra: str, modalities=MODALITIES) -> tuple[int, str, str]:
    """``python -m flows.extract`` in this process: (exit status, stdout, stderr)."""
    from flows.extract import main

    code = main([DS, "--modalities", ",".join(modalities), "--model", f"clip_frames={tiny_clip_dir(tmp_path)}",
                 "--device", "cpu", *extra])
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    """The ``error:`` lines of a command's stderr (log lines are there too)."""
    return [line for line in err.splitlines() if line.startswith("error:")]


def frames_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith("clip_frames"))


def test_reruns_exit_0_and_attempt_only_what_is_new(corpus, decoded, tmp_path, capsys):
    everything = {Path(n).stem for n in corpus.names}
    code, out, err = run_cli(tmp_path, capsys)
    assert code == 0, err
    assert set(decoded) == everything and f"failed {len(corpus.broken)}" in frames_line(out)
    decoded.clear()
    code, out, err = run_cli(tmp_path, capsys)                  # the nightly rerun
    assert code == 0, err
    assert decoded == []                                          # nothing it already knows is attempted
    assert f"skipped 2, skipped: recorded failure {len(corpus.broken)}" in frames_line(out)
    assert "failed 0" in frames_line(out) and "--retry-failed" in out

    code, out, err = run_cli(tmp_path, capsys, "--retry-failed")   # asked for: attempted again, still exit 0
    assert code == 0, err
    assert sorted(decoded) == sorted(corpus.broken) and f"failed {len(corpus.broken)}" in frames_line(out)

    decoded.clear()
    truncated = corpus.videos / "truncated.mp4"
    os.utime(truncated, ns=(time.time_ns(), time.time_ns() + 10**9))   # touched: another fingerprint
    make_video(corpus.videos / "zero.mp4", seconds=1.0)                 # replaced by a good file
    code, out, err = run_cli(tmp_path, capsys)
    assert code == 0, err
    assert sorted(decoded) == ["truncated", "zero"]               # changed files are always attempted
    assert "done 1" in frames_line(out) and "failed 1" in frames_line(out)


def test_systemic_failure_still_exits_1(corpus, decoded, tmp_path, capsys):
    assert run_cli(tmp_path, capsys)[0] == 0
    corpus.add("new1.mp4", "new2.mp4")
    decoded.clear()
    with broken_model():
        code, out, err = run_cli(tmp_path, capsys)
    assert code == 1 and sorted(decoded) == ["new1", "new2"]      # the known failures were not attempted
    [line] = error_lines(err)
    assert "every video failed in clip_frames, none of them a known failure" in line and "device lost" in line
    decoded.clear()                                               # the model works again
    code, out, err = run_cli(tmp_path, capsys)                    # their failure is recorded now: exit 0
    assert code == 0 and decoded == [], err
    code, out, err = run_cli(tmp_path, capsys, "--retry-failed")
    assert code == 0 and "done 2" in frames_line(out), err


@pytest.mark.parametrize("suffix, content", [(".pt", b"not a state dict"), (".safetensors", b"x")])
def test_an_unusable_weights_file_is_one_line_and_writes_nothing(corpus, decoded, tmp_path, capsys, suffix, content):
    """A weights file that cannot load is systemic for every video: one ``error:`` line naming the
    file and what to give instead, a non-zero exit, no traceback, nothing decoded or stored."""
    from data.settings import get_settings

    bad = tmp_path / f"weights{suffix}"
    bad.write_bytes(content)
    code, out, err = run_cli(tmp_path, capsys, "--weights", f"audio={bad}", modalities=("audio",))
    assert code != 0 and "Traceback" not in err
    assert error_lines(err) == [next(line for line in err.splitlines() if str(bad) in line)]
    assert "random" in error_lines(err)[0] and decoded == []
    assert not list((get_settings().features_dir / DS).rglob("*.parquet"))


def test_a_recorded_text_failure_is_known_until_retried(corpus, tmp_path, monkeypatch):
    config = tiny_config(tmp_path, modalities=("clip_text",))
    real = ClipTextExtractor.forward

    def fails_on_one_caption(self, batch):
        if any("good.mp4" in caption for _, caption in batch):
            raise RuntimeError("tokenizer broke on this caption")
        return real(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(ClipTextExtractor, "forward", fails_on_one_caption)
        first = extract_dataset(DS, config)["clip_text"]
    assert (first.done, first.failed) == (len(corpus.names) - 1, 1)
    again = extract_dataset(DS, config)["clip_text"]
    assert (again.done, again.failed, again.skipped, again.known_failed) == (0, 0, len(corpus.names) - 1, 1)
    retried = extract_dataset(DS, replace(config, retry_failed=True))["clip_text"]
    assert (retried.done, retried.failed, retried.known_failed) == (1, 0, 0)


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.mark.slow
def test_flow_runs_complete_with_known_failures_and_fail_when_systemic(prefect_harness, corpus, decoded, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from flows.extract import AllVideosFailed, extract

    def run(**kw):
        return extract(DS, modalities=list(MODALITIES), models={"clip_frames": tiny_clip_dir(tmp_path)},
                       device="cpu", return_state=True, **kw)

    first = run()
    assert first.is_completed() and first.result()["clip_frames"]["failed"] == len(corpus.broken)
    decoded.clear()
    second = run()
    assert second.is_completed() and decoded == []
    frames = second.result()["clip_frames"]
    assert (frames["skipped"], frames["known_failed"], frames["failed"]) == (2, len(corpus.broken), 0)
    newest = ArtifactFilter(key=ArtifactFilterKey(any_=["extract-hostile"]))
    with get_client(sync_client=True) as client:      # the second run's summary: the newest version of the key
        [artifact] = client.read_artifacts(artifact_filter=newest, sort=ArtifactSort.CREATED_DESC, limit=1)
    assert "skipped: recorded failure" in artifact.data and f"| 2 | {len(corpus.broken)} |" in artifact.data
    retried = run(retry_failed=True)
    assert retried.is_completed() and sorted(decoded) == sorted(corpus.broken)
    corpus.add("new1.mp4")
    with broken_model():
        failed = run()
    assert failed.is_failed()
    with pytest.raises(AllVideosFailed, match="every video failed in clip_frames"):
        failed.result()


def test_reindex_skips_known_failures_and_fails_only_when_systemic(corpus, decoded, tmp_path, capsys):
    from flows.reindex import ExtractionFailed, reindex_flow
    from retrieval.index.reader import open_build
    from retrieval.reindex import cli as reindex_cli

    assert run_cli(tmp_path, capsys, modalities=("clip_frames", "clip_text"))[0] == 0
    decoded.clear()
    assert reindex_cli.main([DS]) == 0                            # the first build: broken files not decoded again
    out = capsys.readouterr().out
    assert decoded == [] and "rebuilt" in out and open_build(DS, "zero-shot").ids == ["good", "silent"]
    assert reindex_cli.main([DS]) == 0 and "up-to-date" in capsys.readouterr().out

    corpus.add("new1.mp4")
    with broken_model(), pytest.raises(ExtractionFailed, match="every video failed in clip_frames"):
        reindex_flow.fn(DS)                                       # the scheduled deployment's flow
    assert decoded == ["new1"] and open_build(DS, "zero-shot").ids == ["good", "silent"]
    corpus.add("new2.mp4")
    with broken_model():
        assert reindex_cli.main([DS]) == 1
    err = capsys.readouterr().err
    [line] = error_lines(err)
    assert "every video failed in clip_frames, none of them a known failure" in line
    decoded.clear()
    assert reindex_cli.main([DS]) == 0 and decoded == []          # now known failures: not retried, exit 0
