"""The memory-mapped feature cache (fusion.featurecache) behind the loader: same batches as the
store read into memory, rebuilt when the store changes, never trusted when damaged."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data.settings import get_settings
from data.store import FeatureRow, FeatureSet
from fake_features import write_fake_dataset
from fusion import featurecache
from fusion.features import load_features
from fusion.featurecache import CACHE_DIR, MARKER, open_rows, store_key

PROJECT = Path(__file__).resolve().parents[1]
MODALITIES = ["audio", "motion"]


@pytest.fixture
def home(tmp_path, monkeypatch):
    settings = get_settings(tmp_path / "home")
    ids = write_fake_dataset(settings, "fake", 24, seed=1, dims={"clip_frames": 16, "clip_text": 16}, shard_size=5)
    monkeypatch.setattr(featurecache, "CHUNK_BYTES", 4096)     # several chunks per folder
    return SimpleNamespace(settings=settings, ids=ids)


def feature_set(home, modality: str) -> FeatureSet:
    return FeatureSet(home.settings.feature_dir("fake", modality, home.ids[modality]))


def rewrite_video(home, modality: str, video: str, value: float) -> None:
    """A newer shard holding ``video`` again (re-extracted), with every value = ``value``."""
    fs = feature_set(home, modality)
    old = fs.read([video])
    rows = [FeatureRow(video, np.full_like(old.row(i), value), old.timestamps(i), old.status[i],
                       extra={k: old.column(k)[i] for k in fs.spec.extra_columns}) for i in range(len(old))]
    fs.write_shard(rows)


def assert_same_as_store(home, modality: str) -> None:
    """The cache holds exactly the store's current rows (a video's rows in their stored order)."""
    fs = feature_set(home, modality)
    stored, cached = fs.read(), open_rows(fs)
    a, b = np.argsort(stored.video_ids, kind="stable"), np.argsort(cached.video_ids, kind="stable")
    assert len(a) == len(b) and [stored.video_ids[i] for i in a] == [cached.video_ids[i] for i in b]
    starts = np.concatenate([[0], np.cumsum(cached.lengths)])
    for i, j in zip(a, b):
        np.testing.assert_array_equal(cached.values[starts[j]: starts[j + 1]], stored.row(i))
        assert stored.status[i] == cached.status[j]
        assert all(stored.column(n)[i] == cached.column(n)[j] for n in fs.spec.extra_columns)
    assert isinstance(cached.values, np.memmap) and cached.source.parent.name == CACHE_DIR


def batches(feats) -> list[torch.Tensor]:
    videos, caps = feats.split_videos("train"), feats.split_captions("train")
    uniform = feats.video_batch(videos, 4)
    first, second = feats.video_views(videos, 4, "two-view", torch.Generator().manual_seed(3))
    text, eot = feats.text_batch(caps, 6), feats.text_batch(caps, 6, eot_only=True)
    stats = feats.input_statistics("train", chunk_rows=5)
    out = [uniform.frames, uniform.frame_t, uniform.audio, uniform.audio_t, uniform.audio_mask, uniform.has_audio,
           uniform.motion, uniform.motion_t, first.frames, second.frames, second.frame_mask, text.tokens,
           text.token_mask, text.eot, eot.tokens, feats.caption_video, feats.eot, *stats["audio"], *stats["motion"]]
    return out + [torch.tensor(feats.caption_index)]


def test_mapped_loader_gives_the_batches_of_the_store_in_memory(home):
    rewrite_video(home, "clip_frames", "vid00003", 7.0)      # the newest shard wins, in the cache too
    rewrite_video(home, "clip_text", "vid00004", -2.0)
    for modality in ("clip_frames", "clip_text", "audio", "motion"):
        assert_same_as_store(home, modality)
    mapped = load_features("fake", MODALITIES, settings=home.settings)
    in_memory = load_features("fake", MODALITIES, settings=home.settings, in_memory=True)
    assert mapped.video_ids == in_memory.video_ids and mapped.captions == in_memory.captions
    for a, b in zip(batches(mapped), batches(in_memory)):
        assert torch.equal(a, b)
    v = mapped.video_ids.index("vid00003")
    assert (mapped.frames.row(v) == 7.0).all()
    stored = feature_set(home, "clip_frames").read(["vid00003"])
    assert torch.equal(mapped.frames.row(v), torch.from_numpy(stored.row(0).copy()))


def test_a_changed_store_gets_a_new_cache_and_the_old_one_goes(home):
    fs = feature_set(home, "clip_frames")
    first_key = store_key(fs)
    open_rows(fs)
    rewrite_video(home, "clip_frames", "vid00001", 5.0)
    assert store_key(fs) != first_key
    feats = load_features("fake", [], settings=home.settings)
    assert (feats.frames.row(feats.video_ids.index("vid00001")) == 5.0).all()
    kept = [p.name for p in (fs.folder / CACHE_DIR).iterdir() if p.is_dir()]
    assert kept == [store_key(fs)]
    fs.tidy()                                               # compaction: new shard names, same rows
    assert store_key(fs) not in kept
    assert_same_as_store(home, "clip_frames")


def damage_marker(folder: Path) -> None:
    (folder / MARKER).unlink()                              # a build killed before its marker


def damage_values(folder: Path) -> None:
    with open(folder / "values.npy", "r+b") as fh:          # truncated
        fh.truncate(fh.seek(0, 2) - 4)


def damage_rows(folder: Path) -> None:
    data = bytearray((folder / "rows.parquet").read_bytes())  # same size, other bytes
    data[len(data) // 2] ^= 0xFF
    (folder / "rows.parquet").write_bytes(bytes(data))


def damage_key(folder: Path) -> None:
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "key": "0" * 16}))


def damage_json(folder: Path) -> None:
    (folder / MARKER).write_text("{not json")


def damage_shape(folder: Path) -> None:
    marker = json.loads((folder / MARKER).read_text())
    (folder / MARKER).write_text(json.dumps({**marker, "steps": marker["steps"] - 1}))


@pytest.mark.parametrize("damage", [damage_marker, damage_values, damage_rows, damage_key, damage_json, damage_shape])
def test_a_damaged_or_partial_cache_is_rebuilt_never_read(home, damage, caplog):
    fs = feature_set(home, "clip_text")
    folder = open_rows(fs).source
    (folder.parent / ".values.npy.debris.tmp").write_bytes(b"left by a killed build")
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="tvr.featurecache"):
        assert_same_as_store(home, "clip_text")
    assert "building it again" in caplog.text
    assert sorted(p.name for p in folder.parent.iterdir()) == [".lock", folder.name]
    assert json.loads((folder / MARKER).read_text())["key"] == store_key(fs)


def test_read_only_folder_and_store_changed_while_building_use_a_private_copy(home, monkeypatch, caplog):
    fs = feature_set(home, "audio")
    monkeypatch.setattr(featurecache.os, "access", lambda path, mode: False)
    with caplog.at_level(logging.WARNING, logger="tvr.featurecache"):
        rows = open_rows(fs)
    assert "not writable" in caplog.text and not rows.source.exists()   # mapped, then deleted
    assert not (fs.folder / CACHE_DIR).exists() or not any(p.is_dir() for p in (fs.folder / CACHE_DIR).iterdir())
    assert rows.video_ids == fs.read().video_ids and float(rows.values.sum()) == float(fs.read().flat.sum())
    monkeypatch.undo()
    monkeypatch.setattr(featurecache, "CHUNK_BYTES", 4096)

    states = FeatureSet.video_states

    def writer_meanwhile(self):                            # a writer commits a shard mid-build
        out = states(self)
        monkeypatch.setattr(FeatureSet, "video_states", states)
        rewrite_video(home, "audio", "vid00000", 1.0)
        return out

    monkeypatch.setattr(FeatureSet, "video_states", writer_meanwhile)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tvr.featurecache"):
        open_rows(fs)
    assert "changed while its cache was built" in caplog.text
    assert not any(p.is_dir() for p in (fs.folder / CACHE_DIR).iterdir())
    assert_same_as_store(home, "audio")                    # the next reader builds and keeps it


def test_bench_train_memory_runs_tiny_and_prints_its_table(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bench.train_memory", "--scales", "0.0005", "--home", str(tmp_path),
                          "--threads", "1", "--set", "width=32"], cwd=PROJECT, capture_output=True, text=True,
                         timeout=600, check=True).stdout
    assert "RANDOM WEIGHTS / GENERATED features" in out
    for model in ("m2hf", "hcmi"):
        for loader in ("mapped", "in-memory"):
            assert f"| 0.0005 | {model} | {loader} | " in out
    assert "| 0.0005 | 5 | 100 |" in out and not list(tmp_path.iterdir())   # stores deleted after use
