"""Operations without a Prefect server: progress events and how they are drawn, exit codes of
the extract command, the re-index flow's serving-run default and busy failure, the local
server's auth file and quoted shell lines, console scripts and ``--version``."""
from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import tomllib

import pytest

from conftest import PROJECT
from data.progress import Bars, ProgressEvent


def test_bars_write_periodic_lines_with_rate_and_eta_when_not_on_a_terminal():
    lines: list[str] = []
    now = [0.0]
    bars = Bars(tty=False, log_fn=lines.append, interval_s=30, clock=lambda: now[0])
    for k in range(1, 11):                       # one step every 10 s: a line at most every 30 s
        now[0] = 10.0 * k
        bars(ProgressEvent("epoch 1/2", k, 10, "step", {"loss": 1.0 / k}))
    assert lines == ["epoch 1/2: 1/10 step (loss 1)",
                     "epoch 1/2: 4/10 step (loss 0.25), 0.1 step/s, ETA 1 min 00 s",
                     "epoch 1/2: 7/10 step (loss 0.1429), 0.1 step/s, ETA 30 s",
                     "epoch 1/2: 10/10 step (loss 0.1), 0.1 step/s"]
    every = Bars(tty=False, log_fn=lines.append, interval_s=0, clock=lambda: now[0])
    every(ProgressEvent("shards", 1, None, "shard"))
    now[0] += 7200
    every(ProgressEvent("shards", 3, None, "shard"))
    assert lines[-2:] == ["shards: 1 shard", "shards: 3 shard, 0.000278 shard/s"]


def test_bars_on_a_pipe_write_lines_to_stderr(monkeypatch):
    pipe = io.StringIO()                          # not a terminal, like `2> log` or `| tee`
    monkeypatch.setattr(sys, "stderr", pipe)
    with Bars.for_cli(interval_s=0) as bars:
        for k in (1, 2):
            bars(ProgressEvent("index synthetic/r", k, 2, "video"))
    assert pipe.getvalue().splitlines()[0] == "index synthetic/r: 1/2 video"
    assert pipe.getvalue().splitlines()[1].startswith("index synthetic/r: 2/2 video, ")


def test_training_command_prints_progress_lines_when_piped(tmp_path, monkeypatch, capsys):
    from data.settings import get_settings
    from fake_features import write_fake_dataset
    from fusion.train import main

    monkeypatch.setenv("TVR_HOME", str(tmp_path / "home"))
    write_fake_dataset(get_settings(), "fake", 20, seed=0, dims={"clip_frames": 16, "clip_text": 16})
    assert main(["--dataset", "fake", "--model", "meanP", "--epochs", "2", "--set", "train.batch_size=8"]) == 0
    err = capsys.readouterr().err                 # pytest's capture is not a terminal
    for epoch in ("epoch 1/2", "epoch 2/2"):
        done = [line for line in err.splitlines() if line.startswith(f"{epoch}: ")]
        assert done and done[-1].endswith(" step/s") and "/4 step (loss " in done[-1], err


def test_bars_draw_tqdm_on_a_terminal(capsys):
    with Bars(tty=True) as bars:
        for k in range(1, 5):
            bars(ProgressEvent("index synthetic/r", k, 4, "step", {"encoded": "test"}))
    err = capsys.readouterr().err
    assert "index synthetic/r" in err and "4/4" in err and "encoded test" in err


def test_training_reports_every_step_and_every_epoch(tmp_path):
    from data.settings import get_settings
    from fake_features import write_fake_dataset
    from fusion.train import train

    settings = get_settings(tmp_path / "home")
    write_fake_dataset(settings, "fake", 20, seed=0, dims={"clip_frames": 16, "clip_text": 16})
    events, epochs = [], []
    folder = train("fake", "meanP", overrides=["train.batch_size=8"], epochs=2, settings=settings, quiet=True,
                   progress=events.append, on_epoch=epochs.append)
    history = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert epochs == history and len(history) == 2
    steps = history[0]["steps"]
    assert [(e.task, e.done, e.total) for e in events] == \
        [(f"epoch {k}/2", s, steps) for k in (1, 2) for s in range(1, steps + 1)]
    assert events[steps - 1].info["loss"] == pytest.approx(history[0]["loss"])


def _extract_cli(args: list[str], home) -> subprocess.CompletedProcess:
    env = {**os.environ, "TVR_HOME": str(home), "PYTHONPATH": str(PROJECT)}
    return subprocess.run([sys.executable, "-m", "flows.extract", *args], env=env, cwd=PROJECT,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_extract_exit_codes_missing_manifest_and_every_video_failed(tmp_path):
    from data.prepare import prepare
    from test_extract_support import tiny_clip_dir

    done = _extract_cli(["nothing-here"], tmp_path / "home")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0 and "no manifest" in done.stderr
    videos = tmp_path / "bad" / "videos"
    videos.mkdir(parents=True)
    (videos / "zero.mp4").write_bytes(b"")
    (videos / "text.mp4").write_text("not a video\n" * 40)
    ann = tmp_path / "bad" / "captions.jsonl"
    ann.write_text("".join(json.dumps({"video": n, "captions": ["a caption"], "split": "test"}) + "\n"
                           for n in ("zero.mp4", "text.mp4")))
    old = os.environ.get("TVR_HOME")
    os.environ["TVR_HOME"] = str(tmp_path / "home")
    try:
        prepare("folder", ann, videos, name="bad")
    finally:
        os.environ.pop("TVR_HOME") if old is None else os.environ.__setitem__("TVR_HOME", old)
    done = _extract_cli(["bad", "--modalities", "clip_frames", "--model", f"clip_frames={tiny_clip_dir(tmp_path)}",
                         "--device", "cpu"], tmp_path / "home")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "every video failed in clip_frames" in done.stderr and "Traceback" not in done.stderr


def test_reindex_flow_defaults_to_the_serving_run_and_fails_when_busy(tvr_home, monkeypatch):
    import flows.reindex as flow
    from data.names import InvalidName
    from retrieval.index.serving import set_serving_run
    from retrieval.reindex.run import ReindexResult

    calls = []

    def fake(dataset, run, **kw):
        calls.append(run)
        return ReindexResult(dataset, run, status, "another reindex of this dataset and run is running")

    monkeypatch.setattr(flow, "reindex", fake)
    status = "up-to-date"
    assert flow.reindex_flow.fn("ds")["run"] == "zero-shot"
    set_serving_run("ds", "m2hf-run")
    assert flow.reindex_flow.fn("ds")["run"] == "m2hf-run"
    assert flow.reindex_flow.fn("ds", run="other")["run"] == "other"
    assert calls == ["zero-shot", "m2hf-run", "other"]
    status = "busy"
    with pytest.raises(flow.ReindexBusy, match="another re-index of this index is running"):
        flow.reindex_flow.fn("ds")
    for bad in ({"dataset": "../etc"}, {"dataset": "ds", "run": "a/b"}):
        with pytest.raises(InvalidName):
            flow.reindex_flow.fn(**bad)
    assert len(calls) == 4


def test_local_auth_file_is_private_and_env_lines_are_quoted(tmp_path):
    from flows.local import auth_string

    home = tmp_path / "it's a home"
    env = {**os.environ, "TVR_HOME": str(home), "PYTHONPATH": str(PROJECT)}
    script = f'eval "$({shlex.quote(sys.executable)} -m flows.local env)" && printf "%s\\n" "$TVR_HOME" "$PREFECT_API_AUTH_STRING"'
    out = subprocess.run(["bash", "-c", script], env=env, cwd=PROJECT, capture_output=True, text=True,
                         timeout=120, check=True).stdout.splitlines()
    auth = home / "prefect" / "auth"
    assert out == [str(home), auth.read_text().strip()] and out[1].startswith("tvr:") and len(out[1]) > 40
    assert auth.stat().st_mode & 0o777 == 0o600
    assert auth_string(home / "prefect") == out[1]          # created once, then reused
    auth.chmod(0o644)
    with pytest.raises(PermissionError, match="readable by others"):
        auth_string(home / "prefect")


def test_console_scripts_resolve_and_print_the_version(capsys):
    import importlib

    from data.cli import version

    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"tvr-extract", "tvr-train", "tvr-evaluate", "tvr-search", "tvr-serve", "tvr-index",
            "tvr-reindex", "tvr-export-model", "tvr-export-embeddings"} <= set(scripts)
    for name, target in scripts.items():
        module, func = target.split(":")
        main = getattr(importlib.import_module(module), func)
        with pytest.raises(SystemExit) as done:
            main(["--version"])
        assert done.value.code == 0, name
        assert capsys.readouterr().out.strip().endswith(version()), name
