"""Extraction on a real Dask cluster, run as an operator runs it (docs/dask.md "Lost workers, lost
scheduler"): a ``dask scheduler`` and two ``dask worker`` processes (each a nanny and its worker
process) on 127.0.0.1, the local Prefect server of flows/local.py (one per module: the command and
the workers are separate processes, given its URL and auth string in their environment; Prefect's
test harness points only the test's own process at its server), and
``python -m flows.extract synthetic --prefect --dask-address ...`` as a subprocess with
``TVR_SHARD_SIZE=2``: the 16-video tiny synthetic set, motion only (tiny random SlowFast on 32 px
clips), 8 shards.

- A worker and its nanny SIGKILLed after 2 shards are finished (markers on disk), at a moment it
  holds no in-progress record: the run completes (exit 0); a shard that had been on the lost worker
  runs again on the other one (the worker preload ``dask_build_counter.py`` lists every shard
  started and written), yet no video is written twice and every video has exactly one ``ok`` row.
- The scheduler SIGKILLed after 3 shards: exit 1 with exactly one ``error:`` line, the last one on
  stderr, naming the scheduler and what to do, and no traceback; the finished rows stay; the old
  workers finish their shard and exit, leaving no in-progress record and no held lock; a rerun on a
  new scheduler and new workers skips the kept videos and extracts the rest, nothing failed.

Every process started here runs in its own session and is killed (its whole process group) when
the test ends, however it ends; every wait has a deadline. Two quick tests check the helpers of
flows/runners.py those messages rest on.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_extract_support import prepare_synthetic

from conftest import PROJECT
from data import locks
from data.store import FeatureSet

PY = sys.executable
VIDEOS, SHARDS = 16, 8       # TVR_SHARD_SIZE=2
MOTION = ["--modalities", "motion", "--motion-size", "32", "--motion-fps", "2", "--motion-clip-frames", "4",
          "--device", "cpu"]
PRELOAD = Path(__file__).with_name("dask_build_counter.py")
SUMMARY = re.compile(r"motion\s+\w+\s+done (\d+)(?: \([^)]*\))?, empty (\d+), failed (\d+), skipped (\d+)")


def test_unreachable_scheduler_is_told_by_a_connection_attempt():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from flows.runners import unreachable_scheduler

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        up = f"tcp://127.0.0.1:{listening.getsockname()[1]}"
        assert unreachable_scheduler(DaskTaskRunner(address=up)) is None
    assert unreachable_scheduler(DaskTaskRunner(address=up)) == up   # closed now: nothing listens there
    assert unreachable_scheduler(ThreadPoolTaskRunner(max_workers=1)) is None and unreachable_scheduler(None) is None


def test_console_without_tracebacks_keeps_the_message_and_restores_the_handler(capsys):
    import logging

    from flows.runners import console_without_tracebacks

    logger = logging.getLogger("tvr.test.console")
    handler = logging.StreamHandler(sys.stderr)
    logger.addHandler(handler)
    try:
        with console_without_tracebacks():
            try:
                raise OSError("scheduler gone")
            except OSError:
                logger.error("flow failed", exc_info=True)
        err = capsys.readouterr().err
        assert "flow failed" in err and "Traceback" not in err and "scheduler gone" not in err
        try:
            raise OSError("after the block")
        except OSError:
            logger.error("again", exc_info=True)
        assert "Traceback" in capsys.readouterr().err
    finally:
        logger.removeHandler(handler)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """``flows.local``'s authenticated server on a free loopback port (no pool, deployments or worker)."""
    from flows.local import LocalPrefect

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TVR_HOME", str(tmp_path_factory.mktemp("prefect-home")))
        local = LocalPrefect(port=free_port())
    try:
        local.start_server(timeout_s=150)
        yield local
    finally:
        local.stop("server")
    assert local.pid("server") is None and not local.healthy()


class Processes:
    """Processes of one test, each in its own session; ``close`` kills every process group."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.env, self.logs, self.procs = env, logs, {}
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, args: list[str], own_stderr: bool = False) -> subprocess.Popen:
        """Run ``args`` in a new session; output to ``<logs>/<name>.log`` (stderr apart, to ``.err``, if asked)."""
        with open(self.logs / f"{name}.log", "wb") as out, open(self.logs / f"{name}.err", "wb") as err:
            self.procs[name] = subprocess.Popen(args, env=self.env, cwd=PROJECT, stdout=out,
                                                stderr=err if own_stderr else subprocess.STDOUT,
                                                start_new_session=True)
        return self.procs[name]

    def signal(self, name: str, sig: int) -> None:
        try:
            os.killpg(self.procs[name].pid, sig)
        except ProcessLookupError:
            pass

    def group_alive(self, name: str) -> bool:
        """Does a process of ``name``'s group still run (zombies, left to whoever reaps them, do not count)?"""
        import psutil

        self.procs[name].poll()
        for proc in psutil.process_iter(["status"]):
            try:
                if os.getpgid(proc.pid) == self.procs[name].pid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                    return True
            except ProcessLookupError:
                continue
        return False

    def cluster(self, tag: str, workers: int = 2) -> str:
        """``dask scheduler`` + ``workers`` ``dask worker`` processes on loopback; its address once all joined."""
        from distributed import Client

        address = f"tcp://127.0.0.1:{free_port()}"
        self.start(f"scheduler-{tag}", [PY, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                        "--port", address.rsplit(":", 1)[1], "--no-dashboard"])
        for k in range(workers):
            self.start(f"worker-{tag}{k}", [PY, "-m", "distributed.cli.dask_worker", address, "--host", "127.0.0.1",
                                            "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                            "--name", f"{tag}{k}", "--preload", str(PRELOAD)])
        with Client(address, timeout=90) as client:
            client.wait_for_workers(workers, timeout=120)
        return address

    def close(self) -> None:
        for name in self.procs:
            self.signal(name, signal.SIGTERM)
            self.signal(name, signal.SIGCONT)   # a group stopped by kill_between_videos
        deadline = time.time() + 15
        while time.time() < deadline and any(self.group_alive(n) for n in self.procs):
            time.sleep(0.2)
        for name in self.procs:
            self.signal(name, signal.SIGKILL)
            self.procs[name].wait(timeout=15)


@pytest.fixture
def run_env(tmp_path, monkeypatch, tiny_synthetic, prefect_server):
    """A TVR_HOME holding a copy of the tiny synthetic set, and the processes of the test (closed at its end)."""
    home = tmp_path / "home"
    monkeypatch.setenv("TVR_HOME", str(home))
    prepare_synthetic(shutil.copytree(tiny_synthetic, tmp_path / "data"))
    counts = tmp_path / "counts"
    counts.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TVR_DASK_")}
    env.update(prefect_server.env, TVR_HOME=str(home), TVR_SHARD_SIZE="2", HF_HUB_OFFLINE="1",
               TVR_TEST_COUNTS_DIR=str(counts), PYTHONUNBUFFERED="1")
    procs = Processes(env, tmp_path / "logs")
    try:
        yield home, procs
    finally:
        procs.close()
    assert not any(procs.group_alive(n) for n in procs.procs), "processes left behind"


def extract(procs: Processes, name: str, address: str) -> subprocess.Popen:
    return procs.start(name, [PY, "-m", "flows.extract", "synthetic", "--prefect", "--dask-address", address, *MOTION],
                       own_stderr=True)


def markers(home: Path) -> list[Path]:
    return list((home / "features" / "synthetic" / "motion").glob("*/part-*.done"))


def wait_until(condition, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        assert proc is None or proc.poll() is None, f"the extract command ended (rc {proc.returncode}) before {what}"
        assert time.time() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, procs: Processes, name: str, timeout_s: float = 240) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout_s)
    return rc, (procs.logs / f"{name}.err").read_text(errors="replace")


def summary(stderr: str) -> dict[str, int]:
    found = SUMMARY.findall(stderr)
    assert len(found) == 1, f"expected one motion summary line in:\n{stderr[-3000:]}"
    return dict(zip(("done", "empty", "failed", "skipped"), map(int, found[0])))


def stored(home: Path) -> dict[str, str]:
    """``video_id -> status`` at rest, asserting one row per video (through the store and as plain Parquet)."""
    (folder,) = (home / "features" / "synthetic" / "motion").glob("*/")
    table = FeatureSet(folder).read()
    ids = table.video_ids
    assert len(ids) == len(set(ids)), f"duplicated rows: {sorted(v for v, n in Counter(ids).items() if n > 1)}"
    plain = [v for part in folder.glob("part-*.parquet") for v in pq.read_table(part, columns=["video_id"])
             .column("video_id").to_pylist()]
    assert sorted(plain) == sorted(ids), "a plain glob of the shards does not hold exactly one row per video"
    return dict(zip(ids, table.status))


def journal(counts: Path, pids: set[int] | None = None) -> list[dict]:
    """The preload's record of each worker process (of ``pids`` only, when given)."""
    return [json.loads(f.read_text()) for f in counts.glob("*.json") if pids is None or int(f.stem) in pids]


def group_pids(proc: subprocess.Popen) -> set[int]:
    import psutil

    return {proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))}


def kill_between_videos(procs: Processes, name: str, records: Path, timeout_s: float = 30) -> None:
    """SIGKILL worker ``name`` and its nanny at a moment its worker holds no in-progress record.

    The group is stopped (SIGSTOP) before looking, so it cannot start decoding in between; if a video
    is being decoded it runs on for 20 ms and is looked at again. (A worker killed while decoding
    leaves its video recorded ``failed`` by design: extractors/inprogress.py.)"""
    pids = {str(p) for p in group_pids(procs.procs[name])}
    deadline = time.time() + timeout_s
    while True:
        procs.signal(name, signal.SIGSTOP)
        held = [p.name for p in records.glob("*") if pids & set(p.name.split("."))] if records.is_dir() else []
        if not held:
            procs.signal(name, signal.SIGKILL)
            return
        procs.signal(name, signal.SIGCONT)
        assert time.time() < deadline, f"worker {name} never stopped decoding for {timeout_s} s: {held}"
        time.sleep(0.02)


@pytest.mark.slow
def test_lost_worker_shards_run_again_without_duplicate_rows(run_env, tmp_path):
    home, procs = run_env
    address = procs.cluster("a")
    counts = Path(procs.env["TVR_TEST_COUNTS_DIR"])
    run = extract(procs, "extract", address)

    def victim() -> str | None:   # a worker that wrote a shard: that shard's result lives in its memory
        if len(markers(home)) < 2:
            return None
        return next((n for n in ("worker-a0", "worker-a1")
                     if any(c["written"] for c in journal(counts, group_pids(procs.procs[n])))), None)

    wait_until(lambda: victim() is not None, 180, "2 shards were finished", run)
    name = victim()
    kill_between_videos(procs, name, home / "features" / "synthetic" / ".inprogress")
    done_at_kill = len(markers(home))
    assert run.poll() is None and done_at_kill < SHARDS, "the run ended before the worker was lost: nothing tested"

    rc, stderr = finish(run, procs, "extract")
    assert rc == 0, stderr[-3000:]
    assert "Finished in state Completed" in stderr and "error:" not in stderr
    assert set(stored(home).values()) == {"ok"} and len(stored(home)) == VIDEOS

    per_worker = journal(counts)
    written = Counter(v for c in per_worker for modality, ids in c["written"] for v in ids)
    assert max(written.values()) == 1, f"videos written twice: {sorted(v for v, n in written.items() if n > 1)}"
    started = Counter(tuple(ids) for c in per_worker for ids in c["started"])
    assert max(started.values()) >= 2, f"no shard ran again after the worker was lost: {started}"
    got = summary(stderr)
    assert got["failed"] == 0 and got["done"] + got["empty"] + got["skipped"] == VIDEOS, got


@pytest.mark.slow
def test_lost_scheduler_fails_in_one_line_keeps_finished_rows_and_a_rerun_resumes(run_env):
    home, procs = run_env
    address = procs.cluster("b")
    run = extract(procs, "extract", address)
    wait_until(lambda: len(markers(home)) >= 3, 180, "3 shards were finished", run)
    procs.signal("scheduler-b", signal.SIGKILL)
    assert run.poll() is None and len(markers(home)) < SHARDS, "the run ended before the scheduler was lost"

    rc, stderr = finish(run, procs, "extract")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert rc == 1, stderr[-3000:]
    assert "Traceback" not in stderr and not any(line.startswith("  File ") for line in lines), stderr[-3000:]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert f"the Dask scheduler at {address} cannot be reached" in errors[0]
    assert "finished before are kept" in errors[0] and "start a scheduler and its workers" in errors[0]

    # the old workers finish the shard they were running, then leave by themselves
    wait_until(lambda: not any(procs.group_alive(f"worker-b{k}") for k in range(2)), 90, "the old workers exited")
    records = home / "features" / "synthetic" / ".inprogress"
    assert not records.is_dir() or not list(records.iterdir()), "in-progress records left behind"
    (folder,) = (home / "features" / "synthetic" / "motion").glob("*/")
    with locks.try_exclusive(folder / ".lock") as free:
        assert free, "the feature folder's lock is still held"
    kept = stored(home)
    assert len(kept) >= 6 and set(kept.values()) == {"ok"}, kept

    rerun = extract(procs, "rerun", procs.cluster("c"))
    rc, stderr = finish(rerun, procs, "rerun")
    assert rc == 0, stderr[-3000:]
    assert "Finished in state Completed" in stderr and "error:" not in stderr
    got = summary(stderr)
    assert got == {"done": VIDEOS - len(kept), "empty": 0, "failed": 0, "skipped": len(kept)}, got
    after = stored(home)
    assert len(after) == VIDEOS and set(after.values()) == {"ok"}
