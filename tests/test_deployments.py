"""A real local Prefect server on loopback: deploy prefect.yaml, run `extract/synthetic` through a
worker, check the store, stop everything (workers before the server)."""
from __future__ import annotations

import json
import socket

import pytest
import yaml

from conftest import PROJECT
from test_extract_support import prepare_synthetic, tiny_clip_dir

pytestmark = pytest.mark.slow
DATASETS = ("synthetic", "msrvtt", "msvd", "lsmdc", "didemo", "activitynet")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prefect_yaml_declares_every_deployment():
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    names = {(d["entrypoint"].split(":")[0], d["name"]) for d in spec["deployments"]}
    for ds in DATASETS:
        assert ("flows/extract.py", ds) in names and ("flows/evaluate.py", ds) in names
        reindex = next(d for d in spec["deployments"] if d["entrypoint"].startswith("flows/reindex.py") and d["name"] == ds)
        assert reindex["schedules"][0]["cron"] == "0 3 * * *"
    for model in ("zero-shot", "meanP", "seqTransf", "m2hf", "hcmi"):
        assert ("flows/train.py", model) in names


def test_deployment_run_through_a_worker(tvr_home, tiny_synthetic, tmp_path):
    from data.store import FeatureSet, list_extractors
    from data.settings import get_settings
    from flows.local import LocalPrefect

    prepare_synthetic(tiny_synthetic)
    local = LocalPrefect(port=free_port())
    try:
        local.up()
        assert local.healthy() and local.pid("worker") is not None
        listed = local.run("deployment", "ls").stdout
        for name in ("msrvtt", "activitynet", "zero-shot", "hcmi"):
            assert name in listed
        params = {"modalities": ["clip_frames", "clip_text"], "models": {"clip_frames": tiny_clip_dir(tmp_path)},
                  "device": "cpu"}
        run = local.run("deployment", "run", "extract/synthetic", "--params", json.dumps(params),
                        "--watch", "--watch-timeout", "240", check=False, timeout=300)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-2000:] + run.stderr[-2000:]
    finally:
        local.down()
    assert local.pid("worker") is None and local.pid("server") is None and not local.healthy()
    settings = get_settings()
    manifest_ids = set(json.loads(line)["video_id"] for line in (tiny_synthetic / "annotations.jsonl").read_text().splitlines())
    for modality in ("clip_frames", "clip_text"):
        (info,) = list_extractors(settings.features_dir, "synthetic", modality)
        fs = FeatureSet(settings.feature_dir("synthetic", modality, info["extractor_id"]))
        assert set(fs.video_status()) == manifest_ids and info["random_weights"]
