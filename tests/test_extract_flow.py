"""The Prefect ``extract`` flow, run for real (temporary Prefect server via the test harness)."""
from __future__ import annotations

import pytest
from test_extract_support import prepare_synthetic, tiny_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_extract_flow_run_writes_features_summary_and_artifact(prefect_harness, tiny_synthetic, tvr_home, tmp_path,
                                                                monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows import extract as flow_module
    from flows.extract import extract

    given: list[dict] = []
    real_shard = flow_module.extract_shard

    def shard_spy(dataset, video_ids, config, **kw):
        given.append(config)
        return real_shard(dataset, video_ids, config, **kw)

    monkeypatch.setattr(flow_module, "extract_shard", shard_spy)
    prepare_synthetic(tiny_synthetic)
    cfg = tiny_config(tmp_path)
    decoding = {"decode": "exact", "decode_threads": 1, "prefetch": 2, "hwaccel": "none", "decode_budget_s": 300.0}
    summary = extract("synthetic", modalities=list(cfg.modalities), models=cfg.models, shard_size=8,
                      device="cpu", options=cfg.options, **decoding)
    assert len(given) == 2 and all({k: c[k] for k in decoding} == decoding for c in given)   # reach every task
    assert set(summary) == set(cfg.modalities)
    for m, counts in summary.items():
        assert counts["failed"] == 0 and counts["done"] + counts["empty"] == 16 and counts["random_weights"]
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["extract-synthetic"])))
    assert artifacts and "RANDOM WEIGHTS" in artifacts[0].data and "| clip_frames |" in artifacts[0].data
    # resumed flow run: everything skipped
    again = extract("synthetic", modalities=list(cfg.modalities), models=cfg.models, shard_size=8,
                    device="cpu", options=cfg.options)
    assert all(c["skipped"] == 16 and c["done"] == 0 for c in again.values())
