"""Exports: a model bundle that works with no feature store, and index embeddings as Parquet.

Real extraction (tiny random CLIP, audio and motion on the 16 tiny synthetic videos), a real
1-epoch M2HF run, a real index build.
"""
from __future__ import annotations

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from test_extract_support import prepare_synthetic, tiny_config

pytestmark = pytest.mark.slow
TINY = ["frame_layers=1", "text_layers=1", "train.batch_size=8", "heads=4"]
QUERIES = ["a red ball moving left", "a small blue square with a beeping sound", "nothing at all"]


@pytest.fixture(scope="module")
def trained(tiny_synthetic, tmp_path_factory):
    """A TVR_HOME with the tiny synthetic set extracted and one M2HF run (``m2hf-x``) indexed."""
    from data.settings import get_settings
    from extractors.runner import extract_dataset
    from fusion.train import train
    from retrieval.index.writer import build_from_model

    root = tmp_path_factory.mktemp("export")
    patch = pytest.MonkeyPatch()
    patch.setenv("TVR_HOME", str(root / "home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    settings = get_settings()
    prepare_synthetic(tiny_synthetic)
    config = tiny_config(root)
    extract_dataset("synthetic", config, shard_size=16, settings=settings)
    run = train("synthetic", "m2hf", overrides=TINY, epochs=1, run_id="m2hf-x", settings=settings, quiet=True)
    build_from_model("synthetic", "m2hf-x", settings=settings, use_gpu=False)
    yield {"root": root, "run": run, "settings": settings, "clip_dir": root / "tiny-clip"}
    torch.set_num_threads(threads)
    patch.undo()


def test_bundle_copied_to_an_empty_folder_encodes_queries_identically(trained, tmp_path, monkeypatch):
    from fusion.api import encode_queries, load_model
    from fusion.bundle import BundleError, load_bundle
    from fusion.export import export_bundle

    from_run = encode_queries(load_model(trained["run"]), QUERIES)
    bundle = export_bundle(trained["run"], tmp_path / "out" / "bundle")
    moved = tmp_path / "elsewhere" / "m2hf-bundle"
    shutil.copytree(bundle, moved)
    shutil.rmtree(bundle)
    # no feature store, no run folder, and the tiny CLIP config the extractor was built from is gone
    monkeypatch.setenv("TVR_HOME", str(tmp_path / "empty-home"))
    hidden = trained["clip_dir"].with_name("tiny-clip-hidden")
    trained["clip_dir"].rename(hidden)
    try:
        loaded = load_model(moved)
        assert loaded.name == "m2hf" and loaded.random_weights and loaded.run_dir == moved.resolve()
        from_bundle = encode_queries(loaded, QUERIES)
    finally:
        hidden.rename(trained["clip_dir"])
    assert from_run.shape == (len(QUERIES), from_run.shape[1])
    np.testing.assert_array_equal(from_bundle, from_run)
    # a changed file is refused
    weights = moved / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="changed since export"):
        load_bundle(moved)


def test_export_cli_refuses_a_non_empty_out_folder(trained, tmp_path, capsys):
    from fusion import export

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert export.main(["--run", str(trained["run"]), "--out", str(tmp_path / "full")]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert export.main(["--run", "m2hf-x", "--out", str(tmp_path / "ok")]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out and (tmp_path / "ok" / "bundle.json").is_file()


def test_parquet_embeddings_equal_the_index_vectors(trained, tmp_path):
    from fusion.api import encode_split, encode_video_ids, load_model
    from retrieval.index import export
    from retrieval.index.reader import open_build

    out = tmp_path / "emb.parquet"
    assert export.main(["--dataset", "synthetic", "--run", "m2hf-x", "--out", str(out), "--captions"]) == 0
    table = pq.read_table(out)
    videos = table.filter(table.column("kind").to_numpy(zero_copy_only=False) == "video")
    build = open_build("synthetic", "m2hf-x")
    assert videos.column("video_id").to_pylist() == build.ids and len(build.ids) == 16
    got = np.stack(videos.column("embedding").to_numpy(zero_copy_only=False))
    # M2HF's build stores each availability pattern's own columns only (no stored zeros): read every part
    from retrieval.index.shards import PartitionedIndex

    assert isinstance(build.index, PartitionedIndex) and len(build.index.parts) > 1
    np.testing.assert_array_equal(got, build.index.reconstruct_all())
    loaded = load_model("m2hf-x")
    fresh, ids = encode_video_ids(loaded, "synthetic", build.ids)
    assert ids == build.ids
    np.testing.assert_allclose(got, fresh, rtol=1e-5, atol=1e-6)
    captions = table.filter(table.column("kind").to_numpy(zero_copy_only=False) == "caption")
    test = encode_split(loaded, "synthetic", "test")
    rows = [i for i, s in enumerate(captions.column("split").to_pylist()) if s == "test"]
    assert [captions.column("caption")[i].as_py() for i in rows] == test.captions
    np.testing.assert_allclose(np.stack([captions.column("embedding")[i].as_py() for i in rows]),
                               test.text_vectors, rtol=1e-5, atol=1e-6)
    import json
    meta = json.loads(pq.read_schema(out).metadata[b"tvr"])
    assert meta["random_weights"] and meta["run"] == "m2hf-x" and meta["dim"] == got.shape[1]
