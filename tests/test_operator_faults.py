"""Operator faults give one clear line, a non-zero exit and no partial file (issue 24, item 5).

``TVR_HOME`` on a read-only mount (a read-only bind mount) or a full disk (a tiny tmpfs, and a
disk that fills while a shard is written), a store folder of another user (owned by ``nobody``;
as root, the command runs without the capabilities that bypass file permissions, since root passes
every permission check and chmod alone would prove nothing), and a Prefect server that cannot be
reached. Mounting needs root with CAP_SYS_ADMIN and dropping capabilities needs ``capsh``: where
the platform refuses, those tests skip and say why.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PROJECT
from test_extract_support import make_video, tiny_clip_dir

from data.prepare import prepare

DS = "faults"
NOBODY = 65534
DAC_CAPS = "cap_dac_override,cap_dac_read_search,cap_fowner"


def one_video_dataset(folder: Path) -> None:
    """A manifest of one generated video under ``$TVR_HOME``."""
    videos = folder / "videos"
    videos.mkdir(parents=True)
    make_video(videos / "clip.mp4", seconds=1.0)
    ann = folder / "captions.jsonl"
    ann.write_text(json.dumps({"video": "clip.mp4", "captions": ["a test pattern"], "split": "test"}) + "\n")
    prepare("folder", ann, videos, name=DS)


def extract_argv(tmp_path: Path) -> list[str]:
    return [DS, "--modalities", "clip_text", "--model", f"clip_frames={tiny_clip_dir(tmp_path)}", "--device", "cpu"]


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def shards(root: Path) -> list[str]:
    return sorted(p for p in published(root) if p.startswith("part-"))


def published(root: Path) -> set[str]:
    """Files under ``features/`` that a reader would take: shards, markers, descriptions, temporaries."""
    return {p.name for p in (root / "features").rglob("*") if p.is_file() and p.name not in (".lock", ".next-shard")}


@pytest.fixture
def mount():
    """``mount(args, target)``: mount, or skip when the platform does not allow it; unmounted after."""
    done: list[Path] = []

    def run(args: list[str], target: Path) -> None:
        result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount here (needs root with CAP_SYS_ADMIN): {result.stderr.strip()}")
        done.append(target)

    yield run
    for target in reversed(done):
        if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)


def test_read_only_tvr_home_is_one_line_and_writes_nothing(tvr_home, tmp_path, mount, capsys, one_torch_thread):
    from data.prepare import main as prepare_main
    from flows.extract import main as extract_main

    one_video_dataset(tmp_path / "media")
    before = files(tvr_home)
    mount(["-o", "bind,ro", str(tvr_home)], tvr_home)
    assert extract_main(extract_argv(tmp_path)) == 1
    assert prepare_main(["folder", "--annotations", str(tmp_path / "media" / "captions.jsonl"),
                         "--videos", str(tmp_path / "media" / "videos"), "--name", "other"]) == 1
    extract_line, prepare_line = error_lines(capsys.readouterr().err)
    for line in (extract_line, prepare_line):
        assert f"{tvr_home}" in line and "read-only file system" in line and "point TVR_HOME at a writable" in line
    assert files(tvr_home) == before


def test_full_disk_is_one_line_and_the_rerun_loses_nothing(tvr_home, tmp_path, mount, capsys, one_torch_thread):
    from flows.extract import main as extract_main

    tvr_home.mkdir()
    mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs"], tvr_home)
    one_video_dataset(tmp_path / "media")
    filler = tvr_home / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)   # fill the disk to the last block
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError as err:
        assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    assert extract_main(extract_argv(tmp_path)) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "no space left on the device" in line and f"TVR_HOME ({tvr_home})" in line and "free space" in line
    assert published(tvr_home) == set()
    filler.unlink()                                  # space freed: the rerun does everything
    assert extract_main(extract_argv(tmp_path)) == 0
    assert shards(tvr_home) == ["part-00000.done", "part-00000.parquet"]


def test_disk_filling_while_a_shard_is_written_leaves_no_partial_shard(tvr_home, tmp_path, capsys, monkeypatch,
                                                                       one_torch_thread):
    from data import store
    from flows.extract import main as extract_main

    one_video_dataset(tmp_path / "media")

    def fills_up(table, where, **kw):                # half a file written, then the disk is full
        Path(where).write_bytes(b"PAR1" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(store.pq, "write_table", fills_up)
        assert extract_main(extract_argv(tmp_path)) == 1
    [line] = error_lines(capsys.readouterr().err)
    assert "no space left on the device" in line and f"TVR_HOME ({tvr_home})" in line
    assert published(tvr_home) == {"_extractor.json"}   # no shard, no marker, no temporary file
    assert extract_main(extract_argv(tmp_path)) == 0                 # the rerun: shard 0 was spent
    assert shards(tvr_home) == ["part-00001.done", "part-00001.parquet"]


def test_store_of_another_user_is_one_line(tvr_home, tmp_path, one_torch_thread):
    one_video_dataset(tmp_path / "media")
    argv = [sys.executable, "-m", "flows.extract", *extract_argv(tmp_path), "--threads", "1"]
    if os.geteuid() == 0:
        # root passes every permission check through CAP_DAC_OVERRIDE: give the store to another user
        # (nobody) and run the command as root without the capabilities that bypass file permissions
        if shutil.which("capsh") is None:
            pytest.skip("running as root and capsh (to drop CAP_DAC_OVERRIDE) is not installed")
        for path in [tvr_home, *tvr_home.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
        argv = ["capsh", f"--drop={DAC_CAPS}", "--", "-c", 'exec "$0" "$@"', *argv]
        probe = subprocess.run(["capsh", f"--drop={DAC_CAPS}", "--", "-c", f"touch {tvr_home}/probe"],
                               capture_output=True, text=True)
        if probe.returncode == 0:
            pytest.skip("dropping CAP_DAC_OVERRIDE does not stop root writing here")
    else:                                            # permissions already hold for this user
        tvr_home.chmod(0o555)
    before = files(tvr_home)
    env = {**os.environ, "TVR_HOME": str(tvr_home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(argv, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    [line] = error_lines(done.stderr)
    assert f"{tvr_home}/features: permission denied; TVR_HOME ({tvr_home}) belongs to uid" in line
    assert "may not write there" in line and "point TVR_HOME at a folder of your own" in line
    assert files(tvr_home) == before


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_prefect_server_unreachable_is_one_line_and_starts_nothing(tvr_home, tmp_path):
    one_video_dataset(tmp_path / "media")
    before = files(tvr_home)
    url = f"http://127.0.0.1:{closed_port()}/api"
    env = {**os.environ, "TVR_HOME": str(tvr_home), "PREFECT_API_URL": url, "HF_HUB_OFFLINE": "1"}
    for command in (["flows.extract", *extract_argv(tmp_path), "--prefect"], ["flows.pipeline", "--n", "4"]):
        done = subprocess.run([sys.executable, "-m", *command], env=env, cwd=PROJECT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
        [line] = error_lines(done.stderr)
        assert f"the Prefect server at {url} (PREFECT_API_URL) cannot be reached" in line
        assert "python -m flows.local up" in line and "unset PREFECT_API_URL" in line
    assert files(tvr_home) == before
