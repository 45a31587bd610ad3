"""CUDA smoke test (skipped without CUDA): two training steps under bf16 autocast on the GPU, then
a query and the test split encoded on the GPU through the model API."""
from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_two_autocast_steps_and_a_query_on_the_gpu(tmp_path):
    from data.settings import get_settings
    from fusion.api import encode_split, load_model
    from fusion.batches import TextBatch
    from fusion.encoding import model_device
    from fake_features import write_fake_dataset
    from fusion.train import train

    settings = get_settings(tmp_path / "home")
    write_fake_dataset(settings, "fake", 24, seed=0, dims={"clip_frames": 64, "clip_text": 64}, splits=(0.4, 0.2))
    over = ["frame_layers=1", "text_layers=1", "heads=4", "train.batch_size=16", "train.precision=bf16"]
    folder = train("fake", "hcmi", overrides=over, epochs=2, settings=settings, quiet=True, device="cuda")
    meta = json.loads((folder / "config.json").read_text())
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert meta["device"].startswith("cuda") and sum(h["steps"] for h in log) == 2
    loaded = load_model(folder, settings=settings, device="cuda")
    assert model_device(loaded.model).type == "cuda"
    query = TextBatch(torch.randn(1, 5, 64), torch.ones(1, 5, dtype=torch.bool), torch.tensor([4])).to("cuda")
    with torch.no_grad():
        vector = loaded.model.text_vectors(loaded.model.encode_text(query))
    assert vector.device.type == "cuda" and torch.isfinite(vector).all()
    split = encode_split(loaded, "fake", "test", settings=settings)
    assert split.similarity().shape == (len(split.captions), len(split.video_ids))
