"""The extract flow on Dask (prefect-dask) gives the same features as the default runner.

Real Prefect flow runs (temporary server via the test harness) on a tiny synthetic dataset with a
tiny random CLIP and random VGGish; each runner writes into its own TVR_HOME holding a copy of the
same dataset, and the stored features are compared row by row.
"""
from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_extract_support import prepare_synthetic, tiny_config

from data.settings import get_settings
from data.store import FeatureSet

MODALITIES = ("clip_frames", "clip_text")
SHARD_SIZE = 4  # 16 videos -> 4 shard tasks on 2 workers: some worker runs at least 2 of them


def test_runner_choice_from_settings(monkeypatch, tmp_path):
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import describe, task_runner

    monkeypatch.delenv("TVR_DASK_ADDRESS", raising=False)
    monkeypatch.delenv("TVR_DASK_LOCAL_WORKERS", raising=False)
    default = task_runner(settings=get_settings(tmp_path))
    assert isinstance(default, ThreadPoolTaskRunner) and default._max_workers == 1
    monkeypatch.setenv("TVR_DASK_ADDRESS", "tcp://10.1.2.3:8786")
    remote = task_runner(settings=get_settings(tmp_path))
    assert isinstance(remote, DaskTaskRunner) and remote.address == "tcp://10.1.2.3:8786"
    assert "10.1.2.3" in describe(remote)
    with pytest.raises(ValueError, match="not both"):
        task_runner(local_workers=2, settings=get_settings(tmp_path))
    local = task_runner(address="", local_workers=3, settings=get_settings(tmp_path))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs["n_workers"] == 3 and local.cluster_kwargs["threads_per_worker"] == 1
    monkeypatch.setenv("TVR_DASK_LOCAL_WORKERS", "two")
    with pytest.raises(ValueError, match="TVR_DASK_LOCAL_WORKERS"):
        get_settings(tmp_path)


def test_shard_tasks_on_cuda_carry_the_gpu_tag():
    from flows.extract import GPU_TAG, shard_task_for

    assert GPU_TAG == "gpu"
    assert shard_task_for("cuda").tags == {"gpu"} and shard_task_for("cuda:1").tags == {"gpu"}
    assert shard_task_for("cpu").tags == set()


def test_dask_options_need_prefect(capsys):
    from flows.extract import main

    with pytest.raises(SystemExit):
        main(["synthetic", "--dask-workers", "2"])
    assert "need --prefect" in capsys.readouterr().err


# ---- real flow runs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


def _home(tmp_path, monkeypatch, tiny_synthetic, name: str):
    """A fresh TVR_HOME (set in the environment, so Dask workers started now inherit it) + dataset copy."""
    root = tmp_path / name
    monkeypatch.setenv("TVR_HOME", str(root))
    prepare_synthetic(shutil.copytree(tiny_synthetic, tmp_path / f"{name}-data"))
    return root


def _run(runner, model_dir) -> dict:
    from flows.extract import extract

    cfg = tiny_config(model_dir, modalities=MODALITIES)
    return extract.with_options(task_runner=runner)(
        "synthetic", modalities=list(MODALITIES), models=cfg.models, shard_size=SHARD_SIZE, device="cpu",
        options=cfg.options)


def _stored(root) -> dict[str, dict]:
    """Per modality: extractor-id and ``{(video_id, caption_index): (status, values [T, D])}``."""
    out = {}
    for folder in sorted((root / "features" / "synthetic").glob("*/*")):
        table = FeatureSet(folder).read()
        captions = table.column("caption_index") if folder.parent.name == "clip_text" else [None] * len(table)
        rows = {(v, c): (s, table.row(i)) for i, (v, c, s) in
                enumerate(zip(table.video_ids, captions, table.status))}
        assert len(rows) == len(table), f"{folder}: duplicated rows"
        out[folder.parent.name] = {"id": folder.name, "rows": rows}
    return out


@pytest.fixture(scope="module")
def reference(prefect_harness, tiny_synthetic, model_dir, tmp_path_factory):
    """Features written by the default runner (shards one after another in this process)."""
    from flows.runners import task_runner

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TVR_DASK_ADDRESS", raising=False)
        mp.delenv("TVR_DASK_LOCAL_WORKERS", raising=False)
        root = _home(tmp_path_factory.mktemp("default"), mp, tiny_synthetic, "home")
        summary = _run(task_runner(), model_dir)
        assert all(c["done"] + c["empty"] == 16 and c["failed"] == 0 for c in summary.values()), summary
        return _stored(root)


def _assert_same_features(got: dict, expected: dict) -> None:
    assert set(got) == set(expected) == set(MODALITIES)
    for m in MODALITIES:
        assert got[m]["id"] == expected[m]["id"], m  # same extractor-id: same model, weights, parameters
        assert got[m]["rows"].keys() == expected[m]["rows"].keys(), m
        for key, (status, values) in expected[m]["rows"].items():
            got_status, got_values = got[m]["rows"][key]
            assert got_status == status, (m, key)
            assert got_values.shape == values.shape, (m, key)
            np.testing.assert_allclose(got_values, values, rtol=1e-5, atol=1e-6, err_msg=f"{m} {key}")
    assert {s for s, _ in expected["clip_frames"]["rows"].values()} == {"ok"}  # the comparison is not vacuous
    assert sum(v.size for _, v in expected["clip_frames"]["rows"].values()) > 0


@pytest.mark.slow
def test_local_dask_cluster_gives_the_default_runners_features_and_loads_models_once_per_worker(
        reference, tiny_synthetic, model_dir, tmp_path, monkeypatch):
    import dask
    from prefect_dask import DaskTaskRunner

    from flows.runners import task_runner

    monkeypatch.delenv("TVR_DASK_ADDRESS", raising=False)
    monkeypatch.setenv("TVR_DASK_LOCAL_WORKERS", "2")
    counts_dir = tmp_path / "counts"
    counts_dir.mkdir()
    monkeypatch.setenv("TVR_TEST_COUNTS_DIR", str(counts_dir))
    root = _home(tmp_path, monkeypatch, tiny_synthetic, "home")
    runner = task_runner()
    assert isinstance(runner, DaskTaskRunner) and runner.cluster_kwargs["n_workers"] == 2
    before = set(multiprocessing.active_children())
    with dask.config.set({"distributed.worker.preload": [str(Path(__file__).with_name("dask_build_counter.py"))]}):
        summary = _run(runner, model_dir)
    assert all(c["done"] + c["empty"] == 16 and c["failed"] == 0 for c in summary.values()), summary
    _assert_same_features(_stored(root), reference)
    leftover = set(multiprocessing.active_children()) - before
    assert not leftover, f"the local Dask cluster left processes behind: {leftover}"

    per_worker = [json.loads(f.read_text()) for f in counts_dir.glob("*.json")]
    assert len(per_worker) <= 2 and sum(c["shards"] for c in per_worker) == 16 // SHARD_SIZE, per_worker
    assert max(c["shards"] for c in per_worker) >= 2, per_worker  # some worker ran several shards ...
    assert all(c["models"] == 1 for c in per_worker), per_worker  # ... and built the tiny CLIP once
