"""Issue 26: a prepared dataset of one's own deployed by one command, Prefect's telemetry off, a
stable key on every artifact.

- ``flows.local deploy --dataset NAME`` refuses a bad name, an unprepared dataset, a bad cron
  string and prefect.yaml's own datasets with one line (exit 2), before any server is asked;
- every ``create_*_artifact`` call under flows/ passes a ``key``, and :func:`flows.common.artifact_key`
  makes only keys Prefect accepts;
- slow: a flow command (``python -m flows.extract NAME --prefect``: a temporary local server), run
  on a terminal with no proxy to the internet, prints no telemetry notice, analytics error or
  traceback;
- slow: a real local server and worker: a dataset prepared from a folder is deployed, extracted by
  ``prefect deployment run extract/NAME --watch`` (its progress artifact found by key), deployed
  again with an interval schedule (the same deployments, updated), re-indexed by a flow run that
  Prefect's scheduler created, and still deployed after the server restarts.
"""
from __future__ import annotations

import ast
import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest

from conftest import PROJECT
from test_deployments import artifact, client_of, free_port
from test_extract_support import make_video, tiny_clip_dir

NAME = "mine"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A folder dataset: 3 one-second videos under ``videos/clips`` and ``captions.jsonl``."""
    root = tmp_path_factory.mktemp("folder")
    clips = root / "videos" / "clips"
    clips.mkdir(parents=True)
    rows = []
    for i, word in enumerate(("cat", "dog", "bird")):
        make_video(clips / f"{word}.mp4", seconds=1.0)
        rows.append({"video": f"clips/{word}.mp4", "captions": [f"a {word} moves", f"the {word}"],
                     "split": ("train", "val", "test")[i]})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def prepare_folder(folder) -> None:
    """``python -m data.prepare folder ... --name mine`` into the current ``TVR_HOME``."""
    from data.prepare import prepare

    prepare("folder", folder / "captions.jsonl", folder / "videos", name=NAME)


def deploy(*args: str) -> int:
    """``python -m flows.local deploy <args>``, in this process: its exit status."""
    from flows.local import main

    return main(["deploy", *args])


@pytest.mark.parametrize("args, says", [
    (["--dataset", "../x"], "dataset name '../x' starts with '.'"),
    (["--dataset", "a%b"], "which Prefect refuses in deployment names"),
    (["--dataset", "msrvtt"], "deployed from prefect.yaml"),
    (["--dataset", "nope"], "dataset 'nope' is not prepared: no manifest at"),
    (["--dataset", NAME, "--schedule", "61 3 * * *"], "--schedule '61 3 * * *' is not a cron string"),
    (["--dataset", NAME, "--schedule", "every night"], "is not a cron string"),
    (["--dataset", NAME, "--interval", "0"], "--interval 0: expected a number of seconds"),
    (["--dataset", NAME, "--concurrency", "0"], "--concurrency 0: expected 1 or more"),
    (["--interval", "5"], "--interval: only with deploy --dataset NAME"),
])
def test_deploy_dataset_refusals_are_one_line(tvr_home, capsys, args, says):
    assert deploy(*args, "--port", str(free_port())) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err


def test_deploy_dataset_needs_a_running_server(tvr_home, folder, capsys):
    prepare_folder(folder)
    port = free_port()
    assert deploy("--dataset", NAME, "--port", str(port)) == 1
    assert f"no Prefect server answers at http://127.0.0.1:{port}/api" in capsys.readouterr().err


def test_every_artifact_has_a_key():
    for path in sorted((PROJECT / "flows").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if re.fullmatch(r"create_\w+_artifact", name):
                    assert "key" in {k.arg for k in node.keywords}, f"{path.name}:{node.lineno}: {name} without a key"


def test_artifact_keys_are_what_prefect_accepts():
    from flows.common import artifact_key

    assert artifact_key("extract", NAME, "progress") == "extract-mine-progress"
    for parts in [("extract", "Vidéo_Set", "progress"), ("train", "synthetic-meanP-s0"), ("evaluate", "数据", "r")]:
        assert re.fullmatch(r"[a-z0-9-]+", artifact_key(*parts)), parts
    assert artifact_key("extract", "Vidéo_Set") == "extract-vid-o-set"


def run_on_terminal(cmd: list[str], env: dict, timeout_s: float) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as stdin / stdout / stderr: (exit status, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=follower, stdout=follower, stderr=follower, env=env, cwd=PROJECT)
    os.close(follower)
    chunks, deadline = [], time.time() + timeout_s
    try:
        while time.time() < deadline:
            if select.select([leader], [], [], 1)[0]:
                try:
                    chunk = os.read(leader, 65536)
                except OSError:  # the terminal closed: every writer exited
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
    return proc.wait(), re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))


@pytest.mark.slow
def test_a_flow_command_prints_no_telemetry(tmp_path, folder):
    from prefect._internal.analytics.ci_detection import CI_ENV_VARS  # telemetry is off on CI machines anyway

    home = tmp_path / "home"
    unset = {"PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK", "PREFECT_API_URL", "PREFECT_HOME", *CI_ENV_VARS}
    env = {k: v for k, v in os.environ.items() if k not in unset}
    # no way out: a telemetry heartbeat fails (and says so) at once, online or not
    env.update(TVR_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"), HTTPS_PROXY="http://127.0.0.1:9",
               HTTP_PROXY="http://127.0.0.1:9", NO_PROXY="127.0.0.1,localhost", PYTHONPATH=str(PROJECT))
    subprocess.run([sys.executable, "-m", "data.prepare", "folder", "--annotations", str(folder / "captions.jsonl"),
                    "--videos", str(folder / "videos"), "--name", NAME], env=env, check=True, capture_output=True)
    code, out = run_on_terminal([sys.executable, "-m", "flows.extract", NAME, "--prefect", "--modalities", "clip_text",
                                 "--model", f"clip_text={tiny_clip_dir(tmp_path)}", "--device", "cpu"], env, 300)
    assert code == 0 and "Finished in state Completed" in out, out
    for line in out.splitlines():
        assert not re.search(r"telemetry|analytics|anonymous usage|traceback", line, re.I), line


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    """A local server (its scheduler looking every second) over a TVR_HOME holding the folder
    dataset: no work pool, deployment or worker yet."""
    from flows.local import LocalPrefect

    root = tmp_path_factory.mktemp("own-dataset")
    patch = pytest.MonkeyPatch()
    patch.setenv("TVR_HOME", str(root / "home"))
    patch.setenv("TVR_PREFECT_PORT", str(free_port()))
    patch.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")
    patch.setenv("PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS", "1")
    prepare_folder(folder)
    local = LocalPrefect()
    local.models = {"clip_frames": tiny_clip_dir(root)}
    try:
        local.start_server()
        yield local
    finally:
        local.down()
        patch.undo()


def runs_of(client, deployment_id):
    """The flow runs of one deployment."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def deployments(local) -> dict:
    """``extract/mine`` and ``reindex/mine`` as the server has them now."""
    with client_of(local) as client:
        return {kind: client.read_deployment_by_name(f"{kind}/{NAME}") for kind in ("extract", "reindex")}


@pytest.mark.slow
def test_own_dataset_is_deployed_extracted_and_reindexed_on_its_schedule(server, capsys):
    from data.settings import get_settings

    assert deploy("--dataset", NAME, "--schedule", "0 3 * * *") == 0
    assert f"deployed extract/{NAME}" in capsys.readouterr().out
    first = deployments(server)
    assert [s.schedule.cron for s in first["reindex"].schedules] == ["0 3 * * *"]
    assert first["extract"].global_concurrency_limit.limit == 1 and first["reindex"].parameters == {"dataset": NAME}
    server.start_worker()   # after the deployment made the work pool

    params = {"modalities": ["clip_frames", "clip_text"], "models": server.models, "device": "cpu"}
    done = server.run("deployment", "run", f"extract/{NAME}", "--params", json.dumps(params), "--watch",
                      "--watch-interval", "1", check=False, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    with client_of(server) as client:
        (run,) = runs_of(client, first["extract"].id)
    assert run.state.type.value == "COMPLETED", run.state
    progress = artifact(server, f"extract-{NAME}-progress")
    assert progress.type == "progress" and progress.data == 100.0 and progress.flow_run_id == run.id

    # again, every 5 s: the same two deployments, updated
    assert deploy("--dataset", NAME, "--interval", "5", "--concurrency", "2") == 0
    second = deployments(server)
    assert {k: d.id for k, d in second.items()} == {k: d.id for k, d in first.items()}
    assert [s.schedule.interval.total_seconds() for s in second["reindex"].schedules] == [5]
    assert second["extract"].global_concurrency_limit.limit == 2

    deadline, completed = time.time() + 240, None
    with client_of(server) as client:
        while completed is None and time.time() < deadline:
            runs = runs_of(client, second["reindex"].id)
            completed = next((r for r in runs if r.state and r.state.type.value == "COMPLETED"), None)
            time.sleep(1)
    assert completed is not None, (f"no scheduled reindex/{NAME} run completed; see {server.home / 'logs'} (Prefect's "
                                   f"scheduler needs the SQLAlchemy 2.0 of requirements.lock)")
    assert completed.auto_scheduled and completed.created_by.type == "SCHEDULE"
    assert (get_settings().indexes_dir / NAME / "zero-shot" / "current").is_file()
    assert "rebuilt" in artifact(server, f"reindex-{NAME}").data

    server.stop("worker")
    server.stop("server")
    server.start_server()
    kept = deployments(server)
    assert {k: d.id for k, d in kept.items()} == {k: d.id for k, d in first.items()}
    assert [s.schedule.interval.total_seconds() for s in kept["reindex"].schedules] == [5]
