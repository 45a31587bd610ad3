"""Each method component does what it says (issue 13): label denoising acts, every video is scored
by the branches it has, the temperature learns, the protocol printed is the one computed, HCMI's
exact scoring is chunked, the balance loss and clustering respect availability and duplicates."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusion.clustering import dpc_knn_assign
from fusion.config import load_config
from fusion.batches import Ragged, TextBatch, VideoBatch
from fusion.features import DatasetFeatures
from fusion.factory import build_model
from fusion.layers import Scale
from fusion.train import assemble_batch, make_optimizer, train_step

D = 16
SMALL = {"frame_layers": 1, "heads": 2, "text_layers": 1, "dropout": 0.0}
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_model(name: str, **over):
    torch.manual_seed(0)
    return build_model(load_config(name, overrides=[{**SMALL, **over}]), D)


def features(frame_rows: list[np.ndarray]) -> DatasetFeatures:
    """One caption per video; frame times are the frame positions (seconds at 1 fps)."""
    rng = np.random.default_rng(1)
    n = len(frame_rows)
    text = Ragged.from_arrays([rng.normal(size=(4, D)).astype(np.float32) for _ in range(n)])
    return DatasetFeatures("t", {}, {}, [f"v{i}" for i in range(n)], {"train": np.arange(n)},
                           Ragged.from_arrays(frame_rows), text, torch.full((n,), 3), torch.arange(n),
                           ["caption"] * n, [0] * n)


def views(feats: DatasetFeatures, model, seed: int) -> dict:
    config = load_config("hcmi", overrides=[SMALL])
    gen = torch.Generator().manual_seed(seed)
    return assemble_batch(feats, np.arange(len(feats.video_ids)), config, model, 1, gen, torch.device("cpu"))


# ---- 1. label denoising -----------------------------------------------------------------------
def test_the_two_views_differ_for_every_video_of_two_or_more_frames():
    lengths = [1, 2, 3, 5, 12, 13, 24, 30]
    rng = np.random.default_rng(0)
    feats = features([rng.normal(size=(n, D)).astype(np.float32) for n in lengths])
    model = make_model("hcmi", warmup_epochs=0)
    for seed in range(20):
        inputs = views(feats, model, seed)
        a, b = inputs["video"], inputs["second_view"]
        differ = (a.frame_mask != b.frame_mask).any(1) | ((a.frame_t != b.frame_t) & a.frame_mask & b.frame_mask).any(1)
        assert differ.tolist() == [n >= 2 for n in lengths], seed
        assert (b.frame_mask.sum(1) >= torch.tensor(lengths).clamp(max=12) - 1).all()


def test_label_denoising_finds_a_near_duplicate_video():
    rng = np.random.default_rng(0)
    twin = rng.normal(size=(4, D)).astype(np.float32)
    feats = features([twin, twin.copy()] + [rng.normal(size=(n, D)).astype(np.float32) for n in (4, 6)])
    model = make_model("hcmi", warmup_epochs=0)
    inputs = views(feats, model, 0)
    vectors = model.encode_video(inputs["video"])["vector"]
    extra = model.mine_positives(vectors, inputs["second_view"])
    assert extra[0, 1] and extra[1, 0]
    _, parts = model.loss(inputs["text"], inputs["video"], inputs["positives"], inputs["pair_video"],
                          epoch=1, second_view=inputs["second_view"])
    assert parts["extra_positives"] > 0


def test_an_epoch_without_extra_positives_warns(tmp_path, monkeypatch):
    from data.settings import get_settings
    from fake_features import write_fake_dataset
    from fusion.hcmi import HCMI
    from fusion.train import train

    settings = get_settings(tmp_path / "home")
    write_fake_dataset(settings, "fake", 16, seed=0, dims={"clip_frames": D, "clip_text": D})
    monkeypatch.setattr(HCMI, "mine_positives", lambda self, v, second: torch.zeros(len(v), len(v), dtype=torch.bool))
    over = [f"{k}={v}" for k, v in SMALL.items()] + ["warmup_epochs=0", "train.batch_size=8"]
    with pytest.warns(RuntimeWarning, match="label denoising mined no extra positive"):
        folder = train("fake", "hcmi", overrides=over, epochs=1, settings=settings, quiet=True)
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert "extra_positives = 0" in log[0]["denoising_warning"]


# ---- 2. the M2HF ensemble never scores a video as a constant 0 ---------------------------------
def video_batch(has_audio, has_motion, n_frames=6, seed=0) -> VideoBatch:
    g = torch.Generator().manual_seed(seed)
    n = len(has_audio)
    t = torch.arange(n_frames, dtype=torch.float32)[None].expand(n, -1) + 0.5
    return VideoBatch(torch.randn(n, n_frames, D, generator=g), torch.ones(n, n_frames, dtype=torch.bool), t,
                      torch.randn(n, 5, 128, generator=g), torch.ones(n, 5, dtype=torch.bool),
                      torch.arange(5.0)[None].expand(n, -1), torch.tensor(has_audio),
                      torch.randn(n, 3, 2304, generator=g), torch.ones(n, 3, dtype=torch.bool),
                      torch.arange(3.0)[None].expand(n, -1) * 2, torch.tensor(has_motion))


def text_batch(n=5, seed=1) -> TextBatch:
    g = torch.Generator().manual_seed(seed)
    return TextBatch(torch.randn(n, 6, D, generator=g), torch.ones(n, 6, dtype=torch.bool), torch.full((n,), 5))


@pytest.mark.parametrize("lam", [[0.0, 1.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.0, 1.0]])
def test_ensemble_weights_on_missing_branches_fall_back_to_the_branches_a_video_has(lam):
    model = make_model("m2hf", fusion="ensemble").eval()
    model.ensemble_lambda.copy_(torch.tensor(lam))
    video = video_batch(has_audio=[True, False, False, True], has_motion=[True, True, False, False])
    with torch.no_grad():
        t, v = model.encode_text(text_batch()), model.encode_video(video)
        scores = model.score(t, v)
        cos = model.branch_cosines(t, v)                                   # [3, Q, V]
        torch.testing.assert_close(model.text_vectors(t) @ model.video_vectors(v).t(), scores, atol=1e-5, rtol=1e-5)
    for col in range(4):
        assert scores[:, col].std() > 1e-4, f"video {col} scored as a constant"
    avail = model.availability(v)
    for col in range(4):
        weights = torch.tensor(lam) * avail[:, col]
        if weights.sum() == 0:                      # nothing on its branches: its branches count equally
            expected = (cos[:, :, col] * avail[:, col, None]).sum(0) / avail[:, col].sum()
            torch.testing.assert_close(scores[:, col], expected)


# ---- 3. a learnable temperature learns ----------------------------------------------------------
@pytest.mark.parametrize("name", ["meanP", "m2hf", "hcmi"])
def test_learned_temperature_gets_a_gradient_and_moves(name):
    model = make_model(name, learn_temperature=True).train()
    train_cfg = load_config(name)["train"]
    optimizer = make_optimizer(model, {**train_cfg, "lr": 1e-2})
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    before = float(model.scale.log_scale.detach())
    inputs = {"text": text_batch(4), "video": video_batch([True] * 4, [True] * 4), "second_view": None,
              "positives": torch.eye(4, dtype=torch.bool), "pair_video": torch.arange(4)}
    train_step(model, optimizer, scheduler, inputs, 0, 1.0)
    assert model.scale.log_scale.grad is not None and float(model.scale.log_scale.grad) != 0.0
    assert float(model.scale.log_scale.detach()) != before


def test_temperature_is_clamped_in_place_after_the_step():
    scale = Scale(0.01, learnable=True)
    with torch.no_grad():
        scale.log_scale.fill_(9.0)
    scale.clamp_()
    assert float(scale()) == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        scale.log_scale.fill_(-1.0)
    scale.clamp_()
    assert float(scale()) == 1.0


# ---- 4. the protocol printed is the one computed ----------------------------------------------
def test_ablation_table_names_the_protocol_of_its_runs():
    from fusion.ablation import markdown

    stats = {k: (1.0, 0.0) for k in ("t2v R@1", "t2v R@5", "t2v R@10", "v2t R@1", "v2t R@5", "v2t R@10",
                                      "match colour", "match size", "match motion", "match sound")}
    text = markdown({"dataset": "s", "seeds": [0], "rows": [{"name": "r", "stats": stats}], "oracle": None,
                     "n_test_videos": 10, "chance_R@1": 10.0, "random_weights": False,
                     "ties": "ties: averaged", "v2t_protocol": "video-to-text protocol: group-best"})
    assert "video-to-text protocol: group-best" in text and "all captions ranked" not in text


# ---- 5. HCMI exact scoring is chunked over videos ---------------------------------------------
def test_hcmi_max_mean_is_chunked_over_videos_with_the_same_scores(monkeypatch):
    import fusion.hcmi as hcmi

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(3, 7, D, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(10, 5, D, generator=g), dim=-1)
    am, bm = torch.rand(3, 7, generator=g) > 0.3, torch.rand(10, 5, generator=g) > 0.3
    am[:, 0], bm[:, 0] = True, True
    whole = hcmi.max_mean(a, am, b, bm)
    seen = []
    inner = hcmi._max_mean
    monkeypatch.setattr(hcmi, "_max_mean", lambda *t: seen.append(len(t[2])) or inner(*t))
    budget = 3 * 7 * 5 * 4 * 3                                            # three videos' block
    torch.testing.assert_close(hcmi.max_mean(a, am, b, bm, chunk_bytes=budget), whole)
    assert seen == [3, 3, 3, 1]


def test_hcmi_score_never_builds_more_than_the_block_budget(monkeypatch):
    import fusion.hcmi as hcmi

    model = make_model("hcmi").eval()
    monkeypatch.setattr(hcmi, "MAX_MEAN_BYTES", 64 * 1024)
    blocks = []
    real_einsum = torch.einsum

    def einsum(eq, *ops):
        out = real_einsum(eq, *ops)
        if eq == "qad,vbd->qvab":
            blocks.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(hcmi.torch, "einsum", einsum)
    with torch.no_grad():
        t = model.encode_text(text_batch(8))
        v = model.encode_video(video_batch([True] * 40, [True] * 40, n_frames=12))
        model.score(t, v)
    assert blocks and max(blocks) <= 64 * 1024


# ---- 6. balance loss, clustering ----------------------------------------------------------------
def test_contribution_balance_targets_only_the_branches_a_video_has():
    model = make_model("m2hf", balance="contribution")
    n = 4
    cos = torch.full((3, n, n), 0.5)
    lam = torch.full((n, 3), 1 / 3)
    avail = torch.tensor([[1.0, 1, 1, 1], [1, 0, 1, 0], [1, 1, 1, 1]])     # videos 1 and 3 have no audio
    losses = torch.tensor([1.0, 1.0, 1.0])
    total = model.balance(losses, cos, lam, avail, torch.arange(n))
    assert float(total) == pytest.approx(3.0)                              # equal shares: no penalty


def test_dpc_knn_never_marks_an_empty_cluster_valid():
    g = torch.Generator().manual_seed(0)
    same = torch.randn(1, 1, 8, generator=g).expand(1, 6, 8)
    x = torch.cat([same, torch.randn(1, 2, 8, generator=g)], 1)           # six duplicated tokens
    mask = torch.ones(1, 8, dtype=torch.bool)
    assign, valid = dpc_knn_assign(x, mask, torch.tensor([4]), k=3)
    for c in torch.nonzero(valid[0]).flatten().tolist():
        assert (assign[0] == c).any(), f"cluster {c} is valid but has no member"


# ---- 7. the ensemble fit chooses the best lambda on validation ------------------------------------
def test_ensemble_fit_picks_the_lambda_with_the_best_validation_r1():
    from fusion.m2hf import _top1_hit_rate

    model = make_model("m2hf", fusion="ensemble", ensemble_grid=0.25)
    n = 12
    g = torch.Generator().manual_seed(0)
    cos = torch.randn(3, n, n, generator=g) * 0.1
    cos[1] += torch.eye(n) * 0.15                                          # AV knows the answer, mostly
    cos[2] += torch.eye(n) * 0.08
    positives = torch.eye(n, dtype=torch.bool)
    avail = torch.ones(3, n)
    model.branch_cosines = lambda t, v: cos
    model.availability = lambda v: avail
    fitted = model.fit_on_validation({}, {}, positives)
    grid = [torch.tensor([a, b, 4 - a - b], dtype=torch.float32) / 4 for a in range(5) for b in range(5 - a)]
    rates = [_top1_hit_rate(model.fuse(cos, lam.expand(n, -1), avail), positives) for lam in grid]
    chosen = torch.tensor(list(fitted["ensemble_lambda"].values()))
    assert fitted["val_t2v_R@1"] == pytest.approx(100 * max(rates))
    assert max(rates) > min(rates)                                         # the choice matters here
    assert _top1_hit_rate(model.fuse(cos, chosen.expand(n, -1), avail), positives) == max(rates)
    assert torch.equal(model.ensemble_lambda, chosen)


# ---- 8. protocol: val_holdout 0, listed counts, R@50 / RSum ------------------------------------
def test_val_holdout_zero_trains_on_every_training_video_and_selects_the_last_epoch(tmp_path):
    from data.settings import get_settings
    from fusion.features import load_features
    from fake_features import write_fake_dataset
    from fusion.train import train

    settings = get_settings(tmp_path / "home")
    names = ["train"] * 12 + ["test"] * 4                                # no val split in the manifest
    write_fake_dataset(settings, "fake", 16, seed=0, dims={"clip_frames": D, "clip_text": D}, split_names=names)
    feats = load_features("fake", [], settings=settings, val_holdout=0)
    assert len(feats.split_videos("train")) == 12 and "val" not in feats.splits
    over = [f"{k}={v}" for k, v in SMALL.items()] + ["val_holdout=0", "train.batch_size=8"]
    folder = train("fake", "meanP", overrides=over, epochs=2, settings=settings, quiet=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["best_epoch"] == 1 and metrics["selected_on"].startswith("last epoch") and metrics["val"] is None
    test = metrics["test"]
    assert {"R@50", "RSum"} <= set(test["t2v"]) and test["RSum"] == pytest.approx(test["t2v"]["RSum"] + test["v2t"]["RSum"])
    assert (test["n_videos"], test["n_videos_listed"]) == (4, 4) and test["n_queries_listed"] == test["n_queries"]


def test_listed_counts_keep_the_videos_dropped_for_missing_features(tmp_path):
    from data.settings import get_settings
    from fusion.features import load_features
    from fake_features import write_fake_dataset

    settings = get_settings(tmp_path / "home")
    write_fake_dataset(settings, "fake", 20, seed=0, dims={"clip_frames": D, "clip_text": D})
    feats = load_features("fake", [], settings=settings)
    listed_videos, listed_queries = feats.listed_counts("test")
    test = feats.split_videos("test")
    feats.splits["test"] = test[1:]                                        # as if one had no usable frames
    assert feats.listed_counts("test") == (listed_videos, listed_queries) == (len(test), 3 * len(test))
    assert len(feats.split_videos("test")) == listed_videos - 1


def test_a_silent_track_is_audio_not_a_missing_modality():
    """Decision (docs/models.md): digital silence is an observed sound, scored through AV like any
    other track (tests/test_extract.py checks the extractor stores has_audio true for it)."""
    model = make_model("m2hf").eval()
    silent, absent = video_batch([True], [True]), video_batch([False], [True])
    silent.audio = torch.zeros_like(silent.audio)                        # the same (silence) window everywhere
    absent.audio = torch.zeros_like(absent.audio)
    with torch.no_grad():
        s, a = model.encode_video(silent), model.encode_video(absent)
    assert float(s["m_AV"]) == 1.0 and float(a["m_AV"]) == 0.0
    assert not torch.allclose(s["v_AV"], a["v_AV"])                       # silence reaches the AV branch


# ---- 10. device and mixed precision -----------------------------------------------------------
def test_bf16_autocast_trains_on_the_cpu_and_fp16_asks_for_cuda(tmp_path):
    from data.settings import get_settings
    from fake_features import write_fake_dataset
    from fusion.train import main, train

    settings = get_settings(tmp_path / "home")
    write_fake_dataset(settings, "fake", 16, seed=0, dims={"clip_frames": D, "clip_text": D})
    over = [f"{k}={v}" for k, v in SMALL.items()] + ["train.batch_size=8", "train.precision=bf16"]
    folder = train("fake", "hcmi", overrides=over, epochs=1, settings=settings, quiet=True, device="cpu")
    log = json.loads((folder / "log.jsonl").read_text().splitlines()[0])
    assert np.isfinite(log["loss"]) and json.loads((folder / "config.json").read_text())["device"] == "cpu"
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        train("fake", "meanP", overrides=over[:-1] + ["train.precision=fp16"], epochs=1, settings=settings,
              quiet=True, device="cpu", run_id="fp16")
    if not torch.cuda.is_available():
        assert main(["--dataset", "fake", "--model", "meanP", "--device", "cuda"]) == 2
