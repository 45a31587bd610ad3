"""Durable publishing (data.atomic): every publish path fsyncs the file (or every file of a folder)
before the rename and the folder after it, so a power cut cannot lose the rename while later writes
survive. Each test records the real fsync and rename calls of one publish path: a feature-store
shard and its completion marker, a quarantined shard, an in-progress record, a manifest, an index
build and its ``current`` pointer, a streamed vectors file, an export bundle, a thumbnail. The last
tests show that no production code renames on its own, and that a folder that cannot be fsynced
(some file systems) does not stop a publish."""
from __future__ import annotations

import ast
import errno
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from data import atomic

PROJECT = Path(__file__).resolve().parents[1]
STAGES = ("data", "extractors", "fusion", "retrieval", "flows")


@pytest.fixture
def events(monkeypatch):
    """Every ``os.fsync`` (``("fsync", path, is_folder)``) and rename (``("rename", src, dst)``), in order."""
    seen: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        return real_fsync(fd)

    def renamer(real):
        def rename(src, dst, *args, **kwargs):
            seen.append(("rename", os.path.realpath(src), os.path.realpath(dst)))
            return real(src, dst, *args, **kwargs)
        return rename

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))   # Path.rename
    return seen


def assert_published(events: list[tuple], final: str | os.PathLike) -> str:
    """``final`` was renamed into place after its content was fsynced (a folder: every file and
    folder in it, and itself) and its folder was fsynced after the rename; returns the source name."""
    final = os.path.realpath(final)
    at = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == final]
    assert at, f"{final} was never renamed into place"
    i = at[-1]
    src = events[i][1]
    before = {(e[1], e[2]) for e in events[:i] if e[0] == "fsync"}
    if os.path.isdir(final):
        for parent, dirs, files in os.walk(final):
            rel = os.path.relpath(parent, final)
            inside = os.path.normpath(os.path.join(src, rel))
            assert (inside, True) in before, f"folder {inside} not fsynced before the rename to {final}"
            for name in files:
                assert (os.path.join(inside, name), False) in before, f"{name} not fsynced before its rename"
    else:
        assert (src, False) in before, f"{src} not fsynced before its rename to {final}"
    after = {(e[1], e[2]) for e in events[i + 1:] if e[0] == "fsync"}
    assert (os.path.dirname(final), True) in after, f"the folder of {final} not fsynced after the rename"
    return src


def test_store_shard_then_marker_each_published_durably(tmp_path, events):
    from data.store import ExtractorSpec, FeatureRow, FeatureSet

    fs = FeatureSet(tmp_path / "f", ExtractorSpec("clip_frames", 4, {"model": "tiny"}, True))
    fs.prepare()
    events.clear()
    shard = fs.write_shard([FeatureRow("v1", np.ones((2, 4), np.float32), np.arange(2.0), "ok", None)])
    assert_published(events, shard)
    assert_published(events, shard.with_suffix(".done"))
    renamed = [(i, e[2]) for i, e in enumerate(events) if e[0] == "rename"]
    assert [dst for _, dst in renamed] == [str(shard), str(shard.with_suffix(".done"))]   # shard, then marker
    between = events[renamed[0][0] + 1:renamed[1][0]]
    assert ("fsync", str(fs.folder), True) in between       # the shard's rename is on disk before its marker's


def test_quarantined_shard_leaves_and_arrives_durably(tmp_path, events):
    from data.store import ExtractorSpec, FeatureSet

    fs = FeatureSet(tmp_path / "f", ExtractorSpec("clip_frames", 4, {"model": "tiny"}, True))
    fs.prepare()
    shard = fs.folder / "part-00000.parquet"
    shard.write_bytes(b"not parquet")
    events.clear()
    target = fs.quarantine(shard, "test")
    assert_published(events, target)
    last = max(i for i, e in enumerate(events) if e[0] == "rename")
    assert ("fsync", str(fs.folder), True) in events[last:]                   # the entry left its folder too


def test_in_progress_record_published_durably(tmp_path, events):
    from data.manifest import VideoRecord
    from extractors.inprogress import decoding

    folder = tmp_path / ".inprogress"
    with decoding(folder, VideoRecord("v1", "videos/v1.mp4", "train", ["a caption"])):
        (record,) = folder.glob("*.json")
        assert_published(events, record)


def test_manifest_published_durably(tvr_home, events):
    from data.settings import get_settings
    from fake_fusion_api import write_dataset

    write_dataset("toy", 3)
    assert_published(events, get_settings().manifest_path("toy"))


def test_index_build_and_current_pointer_published_durably(tvr_home, events):
    from fake_fusion_api import write_dataset
    from retrieval.index import writer
    from retrieval.index.layout import POINTER

    ids = write_dataset("toy", 12)
    vectors = np.random.default_rng(0).normal(size=(12, 8)).astype(np.float32)
    events.clear()
    info = {"extractor_ids": {"clip_frames": "aaa"}, "random_weights": True, "model": "zero-shot"}
    folder = writer.write_build("toy", "zero-shot", vectors, ids, info=info, use_gpu=False, store_vectors=True)
    assert sorted(p.name for p in folder.iterdir()) == ["ids.json", "index.faiss", "info.json", "manifest.parquet",
                                                        "vectors.npy"]
    staged = assert_published(events, folder)
    assert Path(staged).name.startswith(".tmp-")
    assert_published(events, folder.parent / POINTER)
    pointer_renamed = [i for i, e in enumerate(events) if e[0] == "rename" and e[2].endswith("/" + POINTER)][-1]
    build_renamed = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == str(folder)][-1]
    assert build_renamed < pointer_renamed                                   # `current` names a durable build
    assert (folder.parent / POINTER).read_text().strip() == folder.name


def test_streamed_vectors_file_published_durably(tmp_path, events):
    from retrieval.index.writer import write_vectors

    path = tmp_path / ".encoded-x.npy"
    write_vectors(path, 5, [np.ones((3, 4), np.float32), np.ones((2, 4), np.float32)])
    assert assert_published(events, path).endswith(".npy.part")
    assert np.load(path).shape == (5, 4)


def test_export_bundle_published_durably(tmp_path, monkeypatch, events):
    import torch

    from fusion import export
    from fusion.bundle import BUNDLE_FILE, LOCAL_DIR, WEIGHTS_FILE

    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text('{"width": 8}')
    tower = tmp_path / "tower"
    (tower / "sub").mkdir(parents=True)                   # a local text tower: nested folders in the bundle
    (tower / "config.json").write_text("{}")
    (tower / "sub" / "vocab.txt").write_text("a b c")
    loaded = SimpleNamespace(run_dir=run_dir, model=torch.nn.Linear(2, 2), name="m", config={}, dataset="toy",
                             extractor_ids={"clip_text": "bbb"}, random_weights=True, fine_grained=False)
    monkeypatch.setattr(export, "load_model", lambda run, settings=None: loaded)
    monkeypatch.setattr(export, "pick_extractor", lambda *a, **k: {"params": {"model": f"{LOCAL_DIR}{tower}"}})
    out = export.export_bundle("r1", tmp_path / "out" / "bundle", settings=SimpleNamespace())
    assert (out / BUNDLE_FILE).is_file() and (out / WEIGHTS_FILE).is_file()
    assert (out / "text_tower" / "model" / "sub" / "vocab.txt").is_file()
    assert Path(assert_published(events, out)).name.startswith(".bundle.tmp-")


def test_thumbnail_published_durably(tmp_path, events):
    from test_extract_support import make_video

    from retrieval.service.thumbs import Thumbnails

    clip = make_video(tmp_path / "clip.mp4", seconds=1.0, audio=None)
    thumbs = Thumbnails(tmp_path / "cache", max_bytes=10**8)
    try:
        events.clear()
        cached = thumbs.make("v", clip, 0.5)
        assert isinstance(cached, Path) and cached.parent == tmp_path / "cache"
        assert_published(events, cached)
    finally:
        thumbs.close()


def test_a_folder_that_cannot_be_fsynced_still_publishes(tmp_path, monkeypatch):
    """File systems that refuse to fsync (EINVAL) or to open (EACCES) a folder are skipped, as
    PostgreSQL does; a file's failed fsync is an error, and the previous file stays."""
    real_fsync, real_open = os.fsync, os.open
    refused = []

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            refused.append("fsync")
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_fsync(fd)

    def open_(path, flags, *args):
        if os.path.isdir(path):
            refused.append("open")
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic.write_text_atomic(tmp_path / "a.txt", "new\n")
    monkeypatch.setattr(os, "open", open_)
    atomic.write_text_atomic(tmp_path / "b.txt", "b\n")
    assert (tmp_path / "a.txt").read_text() == "new\n" and (tmp_path / "b.txt").read_text() == "b\n"
    assert refused == ["fsync", "open"]
    monkeypatch.setattr(os, "open", real_open)
    (tmp_path / "b.txt").unlink()

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing)
    with pytest.raises(OSError, match="Input/output"):
        atomic.write_text_atomic(tmp_path / "a.txt", "newer\n")
    assert (tmp_path / "a.txt").read_text() == "new\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]          # no temporary file left


def _renames_outside_atomic(root: Path = PROJECT) -> list[str]:
    """``file:line`` of every rename call (``os.replace`` / ``os.rename`` / ``shutil.move``, a
    ``.rename(x)`` or a one-argument ``.replace(x)``) in the stages under ``root``, ``data/atomic.py``
    excepted."""
    found = []
    for stage in STAGES:
        for path in sorted((root / stage).rglob("*.py")):
            if path == root / "data" / "atomic.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                    continue
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
                name = node.func.attr
                if ((owner == "os" and name in ("replace", "rename", "renames"))
                        or (owner == "shutil" and name == "move") or name == "rename"
                        or (name == "replace" and len(node.args) == 1 and not node.keywords)):
                    found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_every_rename_in_the_stages_goes_through_data_atomic():
    assert _renames_outside_atomic() == []


def test_the_rename_check_finds_a_bare_rename(tmp_path):
    copy = tmp_path / "project"
    for stage in STAGES:
        (copy / stage).mkdir(parents=True)
    (copy / "data" / "atomic.py").write_text((PROJECT / "data" / "atomic.py").read_text())
    (copy / "fusion" / "bad.py").write_text("import os\nfrom pathlib import Path\n\n\ndef f(a, b):\n"
                                            "    os.replace(a, b)\n    Path(a).rename(b)\n    a.replace('x', 'y')\n")
    assert _renames_outside_atomic(copy) == ["fusion/bad.py:6", "fusion/bad.py:7"]
