"""Model-side checks: CLIP text on the real token length, rebuildable random weights, VGGish
log-mel and weights files, SlowFast features, and the base class's cross-video batching."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_extract_support import tiny_clip_dir

from data.manifest import VideoRecord
from data.store import FeatureRow
from extractors import audio, clip, motion
from extractors.base import Extractor, VideoItem
from extractors.decode import DecodedVideo
from extractors.registry import build_extractor, build_text_encoder
from extractors.weights import WeightsError

CAPTIONS = ["a red circle moves left", "a very long caption " + "with many many words " * 6,
            "hi", "a big blue striped square rises upwards while a low hum plays"]


@pytest.fixture
def tiny_clip(tmp_path):
    return tiny_clip_dir(tmp_path)


def _full_context_tokens(model, tokens):
    """open_clip's own full 77-token path: ``[B, 77, D]`` projected token embeddings."""
    x = model.token_embedding(tokens) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    return x @ model.text_projection


def test_text_tower_on_real_length_matches_full_context(tiny_clip):
    enc = build_extractor("clip_text", tiny_clip, "random", device="cpu")
    tokens = enc.tokenizer(CAPTIONS)
    with torch.inference_mode():
        short, eot = enc.token_embeddings(tokens)
        full = _full_context_tokens(enc.model, tokens)
        sentence = enc.model.encode_text(tokens)
    assert short.shape[1] == int(eot.max()) + 1 < 77
    for k in range(len(CAPTIONS)):
        n = int(eot[k]) + 1
        torch.testing.assert_close(short[k, :n], full[k, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(short[k, n - 1], sentence[k], atol=1e-5, rtol=1e-5)
    rows = enc.encode(CAPTIONS)
    assert [v.shape[0] for v, _ in rows] == [int(e) + 1 for e in eot]
    assert all(e == v.shape[0] - 1 for v, e in rows)


def test_random_weights_are_rebuilt_from_the_recorded_seed(tiny_clip):
    first = build_extractor("clip_text", tiny_clip, "random", seed=3, device="cpu")
    stored = first.encode(CAPTIONS)
    assert build_extractor("clip_frames", tiny_clip, "random", seed=3, device="cpu").model is first.model  # loaded once
    info = first.spec.describe()
    assert info["random_weights"] and info["params"]["seed"] == 3 and "WARNING" in info
    clip._CLIP_CACHE.clear()  # a fresh process: nothing cached
    rebuilt = build_text_encoder(info)
    assert rebuilt.model is not first.model
    for a, b in zip(first.model.state_dict().values(), rebuilt.model.state_dict().values()):
        assert torch.equal(a, b)
    for (v1, e1), (v2, e2) in zip(stored, rebuilt.encode(CAPTIONS)):
        assert e1 == e2 and np.array_equal(v1, v2)
    other = build_extractor("clip_text", tiny_clip, "random", seed=4, device="cpu")
    assert not torch.equal(other.model.text_projection, first.model.text_projection)


def test_query_tower_in_bf16_stays_within_a_small_angle_of_fp32(tiny_clip):
    """``precision="bf16"`` builds the tower with bf16 weights; its EOT embeddings stay close to the
    stored (fp32) ones; an unknown precision is refused by name."""
    info = build_extractor("clip_text", tiny_clip, "random", seed=5, device="cpu").spec.describe()
    exact, fast = build_text_encoder(info), build_text_encoder(info, precision="bf16")
    assert (exact.precision, fast.precision) == ("fp32", "bf16")
    assert fast.model.text_projection.dtype == torch.bfloat16 and exact.model.text_projection.dtype == torch.float32
    for (v32, e32), (v16, e16) in zip(exact.encode(CAPTIONS), fast.encode(CAPTIONS), strict=True):
        assert e16 == e32 and v16.dtype == np.float32 and not np.array_equal(v16, v32)
        a, b = v32[e32], v16[e16]
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.99
    with pytest.raises(ValueError, match="query precision 'int8'"):
        build_text_encoder(info, precision="int8")


def test_bf16_queries_on_a_cpu_without_bf16_support_are_warned_about(tiny_clip, monkeypatch, caplog):
    from extractors import registry

    info = build_extractor("clip_text", tiny_clip, "random", seed=5, device="cpu").spec.describe()
    monkeypatch.setattr(registry, "cpu_has_fast_bf16", lambda: False)
    with caplog.at_level("WARNING", logger=registry.log.name):
        build_text_encoder(info, device="cpu")
        assert not [r for r in caplog.records if r.name == registry.log.name]     # fp32: no warning
        build_text_encoder(info, device="cpu", precision="bf16")
    warned = [r.getMessage() for r in caplog.records if r.name == registry.log.name]
    assert len(warned) == 1 and "without bf16 support" in warned[0] and "may be slower than fp32" in warned[0]


def test_build_text_encoder_refuses_other_modalities_and_changed_files(tiny_clip, tmp_path):
    frames = build_extractor("clip_frames", tiny_clip, "random", device="cpu")
    with pytest.raises(ValueError, match="clip_text"):
        build_text_encoder(frames.spec.describe())
    weights = tmp_path / "clip.pt"
    torch.save(frames.model.state_dict(), weights)
    text = build_extractor("clip_text", tiny_clip, str(weights), device="cpu")
    info = text.spec.describe()
    assert not info["random_weights"] and info["params"]["weights_sha256"] and info["params"]["seed"] is None
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(ValueError, match="sha256"):
        build_text_encoder(info)


def test_clip_frames_are_the_image_embedding(tiny_clip):
    ext = build_extractor("clip_frames", tiny_clip, "random", device="cpu")
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        ours = ext.forward(torch.from_numpy(frames))
        x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
        mean = torch.tensor(ext.model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
        std = torch.tensor(ext.model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
        reference = ext.model.encode_image((x - mean) / std)
    assert ours.shape == (3, 32)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


# ---- VGGish ----------------------------------------------------------------------------------
def _numpy_vggish_log_mel(wave: np.ndarray) -> np.ndarray:
    """VGGish's mel_features.log_mel_spectrogram written out in NumPy (reference)."""
    n = 1 + (len(wave) - 400) // 160
    frames = np.stack([wave[i * 160: i * 160 + 400] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)
    spec = np.abs(np.fft.rfft(frames * window, 512))
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731
    bins = mel(np.linspace(0, 8000, 257))
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    weights = np.zeros((257, 64))
    for i in range(64):
        lo, c, hi = edges[i:i + 3]
        weights[:, i] = np.maximum(0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
    weights[0] = 0
    return np.log(spec @ weights + 0.01)


def test_log_mel_matches_the_vggish_definition():
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 2) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(len(t))).astype(np.float32)
    ours = audio.log_mel(torch.from_numpy(wave)).numpy()
    np.testing.assert_allclose(ours, _numpy_vggish_log_mel(wave.astype(np.float64)), atol=2e-3)
    ex = audio.examples(torch.from_numpy(wave))
    assert ex.shape == (2, 1, 96, 64)  # 198 frames -> 2 examples of 0.96 s
    assert audio.examples(torch.from_numpy(wave[:8000])).shape == (1, 1, 96, 64)  # short: padded to one
    assert audio.examples(torch.zeros(0)).shape == (0, 1, 96, 64)
    # a 44.1 kHz input is resampled to 16 kHz first (torchaudio)
    wave44 = np.sin(2 * np.pi * 440 * np.arange(44100 * 2) / 44100).astype(np.float32)
    assert audio.examples(torch.from_numpy(wave44), 44100).shape == (2, 1, 96, 64)


def test_a_local_dir_model_loads_exactly_the_weights_it_records(tiny_clip, tmp_path):
    """open_clip ignores a weights file beside a local-dir: folder and loads any checkpoint inside it;
    here the file given is what loads, and random weights beside a checkpoint are refused."""
    other = build_extractor("clip_text", tiny_clip, "random", device="cpu", seed=7).model
    path = tmp_path / "tiny.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    ext = build_extractor("clip_text", tiny_clip, str(path), device="cpu")
    assert not ext.spec.random_weights and ext.spec.params["weights_sha256"]
    for name, value in ext.model.state_dict().items():
        torch.testing.assert_close(value, other.state_dict()[name])
    seeded = build_extractor("clip_text", tiny_clip, "random", device="cpu").model
    assert not torch.equal(seeded.text_projection, other.text_projection)     # seed 0 vs seed 7: the file won
    with pytest.raises(WeightsError, match="a pretrained tag .'openai'. needs a built-in model name"):
        build_extractor("clip_text", tiny_clip, "openai", device="cpu")
    folder = tmp_path / "with-checkpoint"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text((tmp_path / "tiny-clip" / "open_clip_config.json").read_text())
    (folder / "open_clip_model.safetensors").write_bytes(path.read_bytes())
    with pytest.raises(WeightsError, match="holds weights .open_clip_model.safetensors. that open_clip would load"):
        build_extractor("clip_frames", f"local-dir:{folder}", "random", device="cpu")
    bad = tmp_path / "bad.safetensors"
    save_file({"text_projection": torch.zeros(3)}, str(bad))
    with pytest.raises(WeightsError, match="state dict does not fit"):
        build_extractor("clip_text", tiny_clip, str(bad), device="cpu")


def test_vggish_weights_file_round_trip_and_bad_files(tmp_path):
    src = audio.VGGish()
    path = tmp_path / "vggish.pth"
    torch.save(src.state_dict(), path)
    ext = build_extractor("audio", "vggish", str(path), device="cpu")
    assert not ext.spec.random_weights and ext.spec.params["weights_sha256"]
    x = audio.examples(torch.randn(16000 * 2) * 0.1)
    with torch.inference_mode():
        torch.testing.assert_close(ext.forward(x), src.eval()(x))
    assert ext.forward(x).shape == (2, 128)
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match=r"features.0.weight has shape \(3,\), expected \(64, 1, 3, 3\)"):
        build_extractor("audio", "vggish", str(bad), device="cpu")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": VideoRecord("a", "a.mp4", "train", ["x"])}, pickled)
    with pytest.raises(WeightsError, match="refused by weights-only loading"):
        build_extractor("audio", "vggish", str(pickled), device="cpu")


# ---- SlowFast ----------------------------------------------------------------------------------
def test_clip_spans():
    assert motion.clip_spans(1, 8) == [(0, 1)]
    assert motion.clip_spans(20, 8) == [(0, 8), (8, 16), (16, 20)]
    assert motion.clip_spans(19, 8) == [(0, 8), (8, 16)]  # a 3-frame tail is dropped


def test_slowfast_gives_2304_d_per_clip():
    ext = build_extractor("motion", "slowfast_r50", "random", device="cpu", size=64, fps=8.0, clip_frames=8)
    dense = np.random.default_rng(0).integers(0, 256, (20, 64, 64, 3), dtype=np.uint8)
    item = VideoItem(VideoRecord("v", "v.mp4", "train", ["x"]),
                     DecodedVideo(dense=dense, dense_times=np.arange(20) / 8, path="v.mp4", has_video=True))
    state: dict = {}
    units, times = ext.units(item, item.decoded.as_chunk(), state)
    last, last_times = ext.last_units(item, state)
    assert units.shape == (2, 8, 64, 64, 3) and last.shape == (1, 8, 64, 64, 3)
    np.testing.assert_array_equal(last[0, 4:], np.repeat(dense[19:], 4, axis=0))  # padded with the last frame
    with torch.inference_mode():
        out = ext.forward(torch.cat([units, last]))
    assert out.shape == (3, 2304) and torch.isfinite(out).all()
    np.testing.assert_allclose(np.concatenate([times, last_times]), [3.5 / 8, 11.5 / 8, 17.5 / 8])
    (row,) = ext.push(item) + ext.flush()
    np.testing.assert_allclose(row.values, out.numpy(), atol=1e-5)
    np.testing.assert_allclose(row.timestamps_s, [3.5 / 8, 11.5 / 8, 17.5 / 8])


def test_slowfast_weights_file_drops_the_classifier_and_loads_the_rest(tmp_path):
    """A pytorchvideo checkpoint (``model_state`` + a 400-class projection) loads into the feature model."""
    from pytorchvideo.models.slowfast import create_slowfast

    torch.manual_seed(5)
    source = create_slowfast(model_num_class=400, head_pool_kernel_sizes=((2, 2, 2), (8, 2, 2)))
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": source.state_dict(), "epoch": 196}, path)
    ext = build_extractor("motion", "slowfast_r50", str(path), device="cpu", size=64, fps=8.0, clip_frames=8)
    assert not ext.spec.random_weights
    loaded = ext.model.state_dict()
    assert "blocks.6.proj.weight" not in loaded
    for k, v in loaded.items():
        torch.testing.assert_close(v, source.state_dict()[k], msg=k)
    clips = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 8, 64, 64, 3), dtype=np.uint8))
    source.blocks[-1].proj = torch.nn.Identity()
    fast = clips.permute(0, 4, 1, 2, 3).float().div(255).sub(motion.MEAN).div(motion.STD)
    with torch.inference_mode():
        expected = source.eval()([fast.index_select(2, ext.slow_index), fast])
        torch.testing.assert_close(ext.forward(clips), expected)
    with pytest.raises(ValueError, match="no named pretrained weights here"):
        build_extractor("motion", "slowfast_r50", "kinetics400", device="cpu", size=64, clip_frames=8)


# ---- base class batching ---------------------------------------------------------------------------
class _Sum(Extractor):
    """Toy extractor: a unit is a number, its feature is [x, 2x]; a unit of -1 makes the model fail."""

    modality = "toy"
    code_version = "toy/1"

    def __init__(self, batch_size):
        super().__init__("toy", None, torch.device("cpu"), "fp32", batch_size)
        self.batches = []

    dim = 2

    def extra_params(self):
        return {}

    def units(self, item, chunk, state):
        return [], None

    def last_units(self, item, state):
        return torch.tensor(item.record.captions, dtype=torch.float32), np.arange(len(item.record.captions))

    def forward(self, batch):
        self.batches.append(len(batch))
        if (batch == -1).any():
            raise RuntimeError("bad unit")
        return torch.stack([batch, 2 * batch], 1)

    def to_rows(self, item, outputs, times):
        return [FeatureRow(item.video_id, torch.stack(outputs).numpy(), times)]


def _run(ext, videos):
    rows = []
    for vid, units in videos:
        rows += ext.push(VideoItem(VideoRecord(vid, vid, "train", units)))
    return {r.video_id: r for r in rows + ext.flush()}


def test_batches_span_videos_and_a_bad_video_fails_alone():
    videos = [("a", [1, 2, 3, 4, 5]), ("b", [6]), ("c", [7, -1]), ("d", []), ("e", [8, 9, 10])]
    small = _Sum(batch_size=3)
    rows = _run(small, videos)
    assert rows["a"].status == rows["b"].status == rows["e"].status == "ok"
    np.testing.assert_array_equal(rows["a"].values, [[1, 2], [2, 4], [3, 6], [4, 8], [5, 10]])
    np.testing.assert_array_equal(rows["e"].values[:, 0], [8, 9, 10])
    assert rows["c"].status == "failed" and "bad unit" in rows["c"].error
    assert rows["d"].status == "empty"
    assert small.batches[:2] == [3, 3]  # "a" is split across batches, "b" shares one with "a"
    big = _run(_Sum(batch_size=100), [v for v in videos if v[0] != "c"])
    for vid in "abe":
        np.testing.assert_array_equal(big[vid].values, rows[vid].values)


def test_half_precision_code_path(tiny_clip):
    """fp16 (the CUDA default) runs and stays close to fp32; recorded in the extractor-id."""
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    full = build_extractor("clip_frames", tiny_clip, "random", device=device, precision="fp32")
    half = build_extractor("clip_frames", tiny_clip, "random", device=device, precision="fp16")
    assert half.extractor_id != full.extractor_id and half.spec.params["precision"] == "fp16"
    with torch.inference_mode():
        a, b = full.forward(frames), half.forward(frames)
    assert b.dtype == torch.float32
    torch.testing.assert_close(a, b, atol=0.02, rtol=0.02)
    text = build_extractor("clip_text", tiny_clip, "random", device=device, precision="fp16").encode(CAPTIONS[:2])
    ref = build_extractor("clip_text", tiny_clip, "random", device=device, precision="fp32").encode(CAPTIONS[:2])
    for (v16, e16), (v32, e32) in zip(text, ref):
        assert e16 == e32 and np.allclose(v16, v32, atol=0.02)
    if device == "cpu":
        with pytest.raises(ValueError, match="fp16 needs CUDA"):
            build_extractor("motion", "slowfast_r50", "random", device="cpu", precision="fp16", size=32)
