"""The README's "Your own videos" commands, run as written (bash, from the project root) on a fresh
temporary TVR_HOME, with ``~/videos`` holding the three real clips of the test fixtures: prepare,
extract, index, search (by text and by image) and serve (the page's API answered over loopback)."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import FIXTURES, PROJECT, requires_fixtures

pytestmark = [pytest.mark.slow, requires_fixtures]
CLIPS = ("bikes.mp4", "carphone_pristine.mp4", "xine-ui_logo.mpg")


def readme_commands() -> list[str]:
    """The commands of the README's own-videos block, comments removed."""
    text = (PROJECT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- own-videos:.*?```bash\n(.*?)```.*?<!-- /own-videos -->", text, re.S)
    assert block, "README.md has no own-videos block"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_own_videos_commands_run_as_written(tmp_path):
    commands = readme_commands()
    assert len(commands) <= 5 and all(c.startswith(".venv/bin/python -m ") for c in commands)
    prepare, extract, index, search, serve = commands
    (tmp_path / "videos").mkdir()
    for name in CLIPS:
        shutil.copyfile(FIXTURES / "media" / name, tmp_path / "videos" / name)
    env = {**os.environ, "HOME": str(tmp_path), "TVR_HOME": str(tmp_path / "tvr_home")}
    if not (PROJECT / ".venv" / "bin" / "python").exists():
        pytest.skip("the README's commands name .venv/bin/python (./scripts/test.sh creates it)")

    def run(command: str) -> str:
        done = subprocess.run(["bash", "-c", command], cwd=PROJECT, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        return done.stdout + done.stderr

    out = run(prepare)
    assert "3 videos" in out and "0 captions" in out and "search works; training needs captions" in out
    out = run(extract)
    assert out.count("done 3, empty 0, failed 0") >= 2 and "RANDOM WEIGHTS" in out
    out = run(index)
    assert "3 videos" in out or "3 x " in out
    assert "serving run of mine: zero-shot" in out
    out = run(search)
    assert "'people riding bikes'" in out and all(Path(c).stem in out for c in CLIPS)
    import av
    from PIL import Image

    with av.open(str(tmp_path / "videos" / "bikes.mp4")) as container:
        frame = next(container.decode(video=0))
    Image.fromarray(frame.to_ndarray(format="rgb24")).save(tmp_path / "photo.jpg")
    by_image = search.split(' "')[0] + f" --image {tmp_path / 'photo.jpg'}" + search.split('"')[-1]
    out = run(by_image)
    first = next(line for line in out.splitlines() if re.match(r"\s+1\s", line))
    assert "bikes" in first, out

    port = _free_port()
    server = subprocess.Popen(["bash", "-c", serve.replace("--port 8000", f"--port {port}")], cwd=PROJECT,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = server.stdout.readline()
            lines.append(line)
            if line.startswith("on http://") or server.poll() is not None:
                break
        assert "serving mine/zero-shot (zero-shot model, build " in "".join(lines), "".join(lines)
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                if httpx.get(base + "/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        found = httpx.get(base + "/api/search", params={"q": "people riding bikes", "k": 3}, timeout=60).json()
        assert {hit["video_id"] for hit in found["results"]} == {Path(c).stem for c in CLIPS}
        thumb = httpx.get(base + found["results"][0]["thumbnail"], timeout=60)
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
        image = httpx.post(base + "/api/search?k=1&name=photo.jpg", content=(tmp_path / "photo.jpg").read_bytes(),
                           headers={"Content-Type": "image/jpeg"}, timeout=120).json()
        assert image["results"][0]["video_id"] == "bikes" and image["query_kind"] == "image"
        assert "RANDOM WEIGHTS" in httpx.get(base + "/", timeout=10).text
    finally:
        server.terminate()
        server.wait(timeout=30)
