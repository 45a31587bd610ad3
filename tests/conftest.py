"""Shared test fixtures: offline mode, an isolated TVR_HOME, the fixtures folder, a tiny synthetic set."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

PROJECT = Path(__file__).resolve().parents[1]
# Real media files and annotation excerpts, kept outside this repository (a clone lacks them):
# $TVR_TEST_FIXTURES, else a "shared/fixtures" folder beside the checkout. Tests that need them skip.
FIXTURES = Path(os.environ.get("TVR_TEST_FIXTURES") or PROJECT.parent / "shared" / "fixtures")
NO_FIXTURES = f"the media and annotation fixtures ({FIXTURES}) are not present"

requires_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason=NO_FIXTURES)


@pytest.fixture
def tvr_home(tmp_path, monkeypatch):
    """An empty settings root for one test."""
    root = tmp_path / "tvr_home"
    monkeypatch.setenv("TVR_HOME", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory):
    """A 16-video synthetic dataset (train 8 / val 2 / test 6), generated once per session.

    Returns the folder holding ``videos/`` and ``annotations.jsonl``.
    """
    from data import synthetic

    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(out, n=16, seed=7, n_test=6, n_val=2, progress=False)
    return out


@pytest.fixture(scope="session")
def examples_home(tiny_synthetic, tmp_path_factory):
    """TVR_HOME with the tiny synthetic set (16 videos) extracted, an M2HF run ``m2hf`` and zero-shot
    indexed (every video)."""
    from test_extract_support import prepare_synthetic, tiny_config

    from data.settings import get_settings
    from extractors.runner import extract_dataset
    from fusion.train import train
    from retrieval.index import cli as index_cli

    root = tmp_path_factory.mktemp("examples")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVR_HOME", str(root / "home"))
        prepare_synthetic(tiny_synthetic)
        extract_dataset("synthetic", tiny_config(root), shard_size=8)
        train("synthetic", "m2hf", overrides=["train.batch_size=4"], epochs=1, run_id="m2hf",
              settings=get_settings(), quiet=True)
        for run in ("m2hf", "zero-shot"):
            assert index_cli.main(["--dataset", "synthetic", "--run", run, "--no-gpu", "--store-vectors"]) == 0
        yield root / "home"


@pytest.fixture(scope="session")
def events_home(tmp_path_factory):
    """TVR_HOME with a small synthetic-events set (16 videos, caption windows) extracted with tiny
    random models, an M2HF run ``m2hf`` trained with its moment head, and its index (with the
    head's segment index)."""
    from test_extract_support import tiny_config

    from data.settings import get_settings
    from data.synthetic.events import prepare_events
    from extractors.runner import extract_dataset
    from fusion.train import train
    from retrieval.index import cli as index_cli

    root = tmp_path_factory.mktemp("events")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVR_HOME", str(root / "home"))
        prepare_events(n=16, seed=5, n_test=5, n_val=2, workers=1, progress=False)
        extract_dataset("synthetic-events", tiny_config(root), shard_size=8)
        train("synthetic-events", "m2hf", overrides=["train.batch_size=16"], epochs=1, run_id="m2hf",
              settings=get_settings(), quiet=True)
        assert index_cli.main(["--dataset", "synthetic-events", "--run", "m2hf", "--no-gpu"]) == 0
        assert index_cli.main(["--dataset", "synthetic-events", "--run", "zero-shot", "--no-gpu"]) == 0
        yield root / "home"


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """Video ids (file stems) whose file the extractors open, in order (a spy on the decoder)."""
    from extractors import reader as extract_reader

    seen: list[str] = []
    real = extract_reader.stream_video

    def spy(path, request):
        seen.append(Path(path).stem)
        return real(path, request)

    monkeypatch.setattr(extract_reader, "stream_video", spy)
    return seen


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one torch thread is fastest, and the machine's cores are shared."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_sessionfinish(session, exitstatus):
    """Stop Prefect's temporary API server (started by flow runs without a server) quietly.

    Left to its atexit hook, its "Stopping" log line goes to a handler that still holds a test's
    captured (closed) stream and prints a "Logging error" traceback after the summary.
    """
    import logging
    import sys

    server = sys.modules.get("prefect.server.api.server")
    if server is not None:
        server.subprocess_server_logger.setLevel(logging.WARNING)
        for instance in list(server.SubprocessASGIServer._instances.values()):
            instance.stop()
