"""One real, authenticated local Prefect server on loopback for this module (``flows.local up``:
server + pool + ``prefect deploy --all`` + process worker), shared by every test here:

- a request without the auth string is refused; the worker (which has it) still runs
  ``extract/synthetic``;
- ``train/meanP`` and ``evaluate/synthetic`` deployment runs leave table artifacts whose figures
  equal the run's log and evaluation.json (read back through the Prefect client);
- ``reindex/synthetic`` without a ``run`` refreshes the serving run's index (set with
  ``python -m retrieval.index --serve``); triggered twice at once, one run completes and the other
  is cancelled by the deployment's concurrency limit.

Workers are stopped before the server at the end.
"""
from __future__ import annotations

import base64
import json
import socket
import time
import urllib.error
import urllib.request

import pytest
import yaml

from conftest import PROJECT
from test_extract_support import prepare_synthetic, tiny_clip_dir

pytestmark = pytest.mark.slow
DATASETS = ("synthetic", "msrvtt", "msvd", "lsmdc", "didemo", "activitynet")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}
RUN = "ops-meanp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_prefect_yaml_declares_every_deployment():
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    names = {(d["entrypoint"].split(":")[0], d["name"]) for d in spec["deployments"]}
    crons = set()
    for ds in DATASETS:
        assert ("flows/extract.py", ds) in names and ("flows/evaluate.py", ds) in names
        reindex = next(d for d in spec["deployments"] if d["entrypoint"].startswith("flows/reindex.py") and d["name"] == ds)
        assert "run" not in reindex["parameters"]  # the flow's default: the dataset's serving run
        assert reindex["concurrency_limit"] == {"limit": 1, "collision_strategy": "CANCEL_NEW"}
        crons.add(reindex["schedules"][0]["cron"])
        extract = next(d for d in spec["deployments"] if d["entrypoint"].startswith("flows/extract.py") and d["name"] == ds)
        assert extract["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert len(crons) == len(DATASETS)  # staggered
    for model in ("zero-shot", "meanP", "seqTransf", "m2hf", "hcmi"):
        assert ("flows/train.py", model) in names


@pytest.fixture(scope="module")
def server(tiny_synthetic, tmp_path_factory):
    """The running local server (a :class:`flows.local.LocalPrefect`) over a TVR_HOME holding the
    tiny synthetic manifest; ``models`` is the tiny CLIP model name for extraction."""
    from flows.local import LocalPrefect

    root = tmp_path_factory.mktemp("deployments")
    patch = pytest.MonkeyPatch()
    patch.setenv("TVR_HOME", str(root / "home"))
    patch.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")  # the worker looks for new runs every 2 s
    prepare_synthetic(tiny_synthetic)
    local = LocalPrefect(port=free_port())
    local.models = {"clip_frames": tiny_clip_dir(root)}
    try:
        local.up()
        yield local
    finally:
        local.down()
        patch.undo()
    assert local.pid("worker") is None and local.pid("server") is None and not local.healthy()


def client_of(local):
    """A sync Prefect client for ``local`` (its URL and auth string)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    class Client:
        def __enter__(self):
            self.settings = temporary_settings({PREFECT_API_URL: local.api,
                                                PREFECT_API_AUTH_STRING: local.env["PREFECT_API_AUTH_STRING"]})
            self.settings.__enter__()
            self.client = get_client(sync_client=True).__enter__()
            return self.client

        def __exit__(self, *exc):
            self.client.__exit__(*exc)
            self.settings.__exit__(*exc)

    return Client()


def run_deployment(local, name: str, parameters: dict, count: int = 1, timeout_s: float = 240) -> list:
    """Create ``count`` runs of deployment ``name`` back to back; wait until all are terminal."""
    with client_of(local) as client:
        deployment = client.read_deployment_by_name(name)
        ids = [client.create_flow_run_from_deployment(deployment.id, parameters=parameters).id for _ in range(count)]
        deadline = time.time() + timeout_s
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state and r.state.type.value in TERMINAL for r in runs) or time.time() > deadline:
                return runs
            time.sleep(1)


def artifact(local, key: str):
    """The newest version of the artifact ``key``."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with client_of(local) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC)
    assert found, f"no artifact {key!r}"
    return found[0]


def api_status(url: str, auth: str | None = None, post: bool = False) -> int:
    request = urllib.request.Request(url, data=b"{}" if post else None, method="POST" if post else "GET",
                                     headers={"Content-Type": "application/json"})
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def test_unauthenticated_request_is_refused_and_the_worker_still_runs(server, tmp_path):
    from data.settings import get_settings
    from data.store import FeatureSet, list_extractors

    auth = server.env["PREFECT_API_AUTH_STRING"]
    assert (server.home / "auth").stat().st_mode & 0o777 == 0o600
    pool = f"{server.api}/work_pools/tvr-process"
    assert api_status(pool) == 401 and api_status(pool, "tvr:wrong") == 401
    assert api_status(pool, auth) == 200
    # CSRF protection: a browser-style POST without the CSRF token is refused even with the auth string
    assert api_status(server.api + "/deployments/filter", auth, post=True) == 403
    listed = server.run("deployment", "ls").stdout  # the CLI with the auth string
    for name in ("msrvtt", "activitynet", "zero-shot", "hcmi"):
        assert name in listed
    params = {"modalities": ["clip_frames", "clip_text"], "models": server.models, "device": "cpu"}
    (run,) = run_deployment(server, "extract/synthetic", params)
    assert run.state.type.value == "COMPLETED", run.state
    settings = get_settings()
    for modality in ("clip_frames", "clip_text"):
        (info,) = list_extractors(settings.features_dir, "synthetic", modality)
        fs = FeatureSet(settings.feature_dir("synthetic", modality, info["extractor_id"]))
        assert len(fs.video_status()) == 16 and info["random_weights"]


def test_train_and_evaluate_runs_publish_their_figures(server):
    from data.settings import get_settings

    overrides = ["frame_layers=1", "text_layers=1", "train.batch_size=8", "heads=4"]
    (run,) = run_deployment(server, "train/meanP", {"dataset": "synthetic", "epochs": 2, "overrides": overrides,
                                                    "run_id": RUN})
    assert run.state.type.value == "COMPLETED", run.state
    folder = get_settings().runs_dir / RUN
    history = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    table = json.loads(artifact(server, f"train-{RUN}").data)
    assert [row["epoch"] for row in table] == [0, 1]
    assert [row["val_t2v_R@1"] for row in table] == [h["val_t2v_R@1"] for h in history]
    assert [row["loss"] for row in table] == [h["loss"] for h in history]
    assert all(row["random_weights"] == "RANDOM WEIGHTS" for row in table)
    assert artifact(server, f"curves-{RUN}").data.endswith(f"({(folder / 'curves.png').as_uri()})")

    (run,) = run_deployment(server, "evaluate/synthetic", {"run": RUN})
    assert run.state.type.value == "COMPLETED", run.state
    result = json.loads((folder / "evaluation.json").read_text())
    rows = json.loads(artifact(server, f"evaluate-synthetic-{RUN}").data)
    assert [(r["direction"], r["v2t_protocol"]) for r in rows] == [("t2v", "-"), ("v2t", "group-best")]
    assert rows[0]["R@1"] == result["t2v"]["R@1"] and rows[1]["R@5"] == result["v2t"]["R@5"]
    assert all(r["random_weights"] == "RANDOM WEIGHTS" for r in rows)

    (bad,) = run_deployment(server, "evaluate/synthetic", {"run": "../../etc"})
    assert bad.state.type.value == "FAILED" and not (get_settings().root.parent / "etc").exists()


def test_nightly_reindex_refreshes_the_serving_run_and_runs_one_at_a_time(server, capsys):
    from data.settings import get_settings
    from retrieval.index import cli as index_cli
    from retrieval.index.serving import serving_run

    assert index_cli.main(["--dataset", "synthetic", "--run", RUN, "--serve", "--no-gpu"]) == 0
    assert serving_run("synthetic") == RUN
    root = get_settings().indexes_dir / "synthetic"
    before = (root / RUN / "current").read_text()
    runs = run_deployment(server, "reindex/synthetic", {}, count=2)
    states = sorted(r.state.type.value for r in runs)
    assert states == ["CANCELLED", "COMPLETED"], [(r.state.type.value, r.state.message) for r in runs]
    cancelled = next(r for r in runs if r.state.type.value == "CANCELLED")
    assert "concurrency limit" in cancelled.state.message.lower()
    assert (root / RUN / "current").read_text() != before  # the serving run's index was rebuilt
    assert not (root / "zero-shot").exists()
    assert RUN in artifact(server, "reindex-synthetic").data
