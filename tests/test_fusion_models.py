"""Unit tests of the fusion models: padding, missing modalities, losses, clustering, FAISS vectors."""
from __future__ import annotations

import pytest
import torch

from fusion.clustering import Clustering, dpc_knn_assign
from fusion.config import load_config
from fusion.batches import TextBatch, VideoBatch
from fusion.factory import build_model
from fusion.hcmi import max_mean
from fusion.losses import hardest_negative_triplet, info_nce

D = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL = {"frame_layers": 1, "heads": 4, "text_layers": 1}


def make_model(name: str, **over):
    torch.manual_seed(0)
    config = load_config(name, overrides=[over])
    config.update({k: v for k, v in SMALL.items() if k in config})
    return build_model(config, D)


def video_batch(n_videos=3, n_frames=(8, 12, 5), width=12, seed=0, audio=True, has_audio=None, fill=0.0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(n_videos, width, D, generator=g)
    mask = torch.arange(width)[None] < torch.tensor(n_frames)[:, None]
    frames = torch.where(mask[..., None], frames, torch.full_like(frames, fill))
    t = torch.arange(width, dtype=torch.float32)[None].expand(n_videos, -1) + 0.5
    batch = VideoBatch(frames, mask, t * mask)
    if audio:
        batch.audio = torch.randn(n_videos, 10, 128, generator=g)
        batch.audio_mask = torch.ones(n_videos, 10, dtype=torch.bool)
        batch.audio_t = torch.arange(10, dtype=torch.float32)[None].expand(n_videos, -1) * 0.96
        batch.has_audio = torch.ones(n_videos, dtype=torch.bool) if has_audio is None else has_audio
        batch.motion = torch.randn(n_videos, 4, 2304, generator=g)
        batch.motion_mask = torch.ones(n_videos, 4, dtype=torch.bool)
        batch.motion_t = torch.arange(4, dtype=torch.float32)[None].expand(n_videos, -1) * 2 + 1
        batch.has_motion = torch.ones(n_videos, dtype=torch.bool)
    return batch


def text_batch(n=4, seed=1, lengths=(6, 9, 4, 7), width=9):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(n, width, D, generator=g)
    mask = torch.arange(width)[None] < torch.tensor(lengths)[:, None]
    return TextBatch(tokens * mask[..., None], mask, torch.tensor(lengths) - 1)


ALL = ["zero-shot", "meanP", "seqTransf", "m2hf", "hcmi"]
VARIANTS = [("meanP", {}), ("seqTransf", {}), ("m2hf", {}), ("m2hf", {"fusion": "ensemble"}),
            ("m2hf", {"balance": "loss-ratio"}), ("m2hf", {"balance": "contribution"}), ("m2hf", {"balance": "none"}),
            ("m2hf", {"branches": ["V", "AV"]}), ("hcmi", {}), ("hcmi", {"clustering": "learned-query"}),
            ("hcmi", {"clustering": "contiguous"}), ("hcmi", {"label_denoising": False, "hard_samples": False})]


def score(model, text, video):
    model.eval()
    with torch.no_grad():
        return model.score(model.encode_text(text), model.encode_video(video))


@pytest.mark.parametrize("name", ALL)
def test_padding_never_changes_a_score(name):
    model = make_model(name)
    narrow = video_batch(n_frames=(8, 8, 5), width=8)
    wide = video_batch(n_frames=(8, 8, 5), width=12, fill=7.0)          # 4 padded frames of garbage
    wide.frames[:, :8] = narrow.frames
    wide.audio, wide.motion = narrow.audio, narrow.motion
    text = text_batch()
    text_wide = TextBatch(torch.cat([text.tokens, torch.full((4, 5, D), 3.0)], 1),
                          torch.cat([text.token_mask, torch.zeros(4, 5, dtype=torch.bool)], 1), text.eot)
    s_narrow = score(model, text, narrow)
    torch.testing.assert_close(score(model, text, wide), s_narrow, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score(model, text_wide, narrow), s_narrow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fusion", ["end-to-end", "ensemble"])
def test_video_without_audio_has_its_av_branch_masked(fusion):
    model = make_model("m2hf", fusion=fusion)
    if fusion == "ensemble":
        model.ensemble_lambda.copy_(torch.tensor([0.5, 0.3, 0.2]))
    no_audio = torch.tensor([True, False, True])
    a = video_batch(has_audio=no_audio, seed=0)
    b = video_batch(has_audio=no_audio, seed=0)
    b.audio = torch.randn_like(b.audio) * 50                                # different dummy audio values
    text = text_batch()
    s_a, s_b = score(model, text, a), score(model, text, b)
    torch.testing.assert_close(s_a[:, 1], s_b[:, 1])
    assert not torch.allclose(s_a[:, 0], s_b[:, 0])                           # videos with audio do change
    # the fusion weight of AV is removed and the rest renormalised for that video
    with torch.no_grad():
        t, v = model.encode_text(text), model.encode_video(a)
        cos = model.branch_cosines(t, v)
        lam = t["lambda"]
        expected = (lam[:, 0] * cos[0, :, 1] + lam[:, 2] * cos[2, :, 1]) / (lam[:, 0] + lam[:, 2])
    torch.testing.assert_close(s_a[:, 1], expected)
    # and out of the AV loss rows: the AV loss ignores the dummy audio of video 1
    model.train()
    torch.manual_seed(0)
    pos = torch.eye(3, dtype=torch.bool)
    _, parts_a = model.loss(text_batch(n=3, lengths=(6, 9, 4)), a, pos, torch.arange(3), epoch=0)
    torch.manual_seed(0)
    _, parts_b = model.loss(text_batch(n=3, lengths=(6, 9, 4)), b, pos, torch.arange(3), epoch=0)
    model.eval()
    assert parts_a["loss_AV"] != parts_b["loss_AV"]  # video 0 and 2 have audio that changed
    c = video_batch(has_audio=torch.tensor([False, False, False]), seed=0)
    d = video_batch(has_audio=torch.tensor([False, False, False]), seed=0)
    d.audio = d.audio * 100
    torch.manual_seed(0)
    _, pc = model.loss(text_batch(n=3, lengths=(6, 9, 4)), c, pos, torch.arange(3), epoch=0)
    torch.manual_seed(0)
    _, pd = model.loss(text_batch(n=3, lengths=(6, 9, 4)), d, pos, torch.arange(3), epoch=0)
    assert pc["loss_AV"] == pd["loss_AV"] == 0.0                               # no rows at all: no AV loss


@pytest.mark.parametrize("fusion", ["end-to-end", "ensemble"])
@pytest.mark.parametrize("branches", [["V", "AV", "MV"], ["V", "AV"], ["V"]])
def test_m2hf_fused_score_is_the_inner_product_of_faiss_vectors(fusion, branches):
    model = make_model("m2hf", fusion=fusion, branches=branches)
    video = video_batch(n_videos=4, n_frames=(8, 12, 5, 9), has_audio=torch.tensor([True, False, True, False]))
    video.has_motion = torch.tensor([True, True, False, False])
    with torch.no_grad():
        model.eval()
        t, v = model.encode_text(text_batch()), model.encode_video(video)
        fused = model.score(t, v)
        inner = model.text_vectors(t) @ model.video_vectors(v).t()
    torch.testing.assert_close(inner, fused, atol=1e-5, rtol=1e-5)


def test_info_nce_is_lowest_for_aligned_pairs():
    emb = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    eye = torch.eye(6, dtype=torch.bool)
    aligned = info_nce(emb @ emb.t() * 20, eye)
    for k in range(1, 6):
        shuffled = torch.roll(emb, k, 0)
        assert info_nce(emb @ shuffled.t() * 20, eye) > aligned
    # multi-positive and masked rows also prefer alignment
    pos = eye.clone()
    pos[0, 1] = True
    assert info_nce(emb @ emb.t() * 20, pos, video_valid=torch.tensor([True] * 5 + [False])) < \
        info_nce(emb @ torch.roll(emb, 1, 0).t() * 20, pos, video_valid=torch.tensor([True] * 5 + [False]))


def test_triplet_and_max_mean_prefer_aligned_pairs():
    emb = torch.nn.functional.normalize(torch.randn(5, 16), dim=-1)
    eye = torch.eye(5, dtype=torch.bool)
    aligned = hardest_negative_triplet(emb @ emb.t(), eye, torch.arange(5), 0.2)
    shuffled = hardest_negative_triplet(emb @ torch.roll(emb, 1, 0).t(), eye, torch.arange(5), 0.2)
    assert aligned < shuffled
    tokens = torch.nn.functional.normalize(torch.randn(3, 4, 16), dim=-1)
    mask = torch.ones(3, 4, dtype=torch.bool)
    s = max_mean(tokens, mask, tokens, mask)
    assert torch.all(s.diagonal() >= s.max(1).values - 1e-6)
    torch.testing.assert_close(s.diagonal(), torch.ones(3))


@pytest.mark.parametrize("name,over", VARIANTS)
def test_every_loss_is_lowest_for_aligned_pairs_and_reaches_every_parameter(name, over):
    model = make_model(name, **over)
    video = video_batch(n_videos=4, n_frames=(8, 12, 5, 9), has_audio=torch.tensor([True, False, True, True]))
    text = text_batch()
    pos = torch.eye(4, dtype=torch.bool)
    second = video_batch(n_videos=4, n_frames=(8, 12, 5, 9), seed=3, has_audio=video.has_audio)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(3):  # zero-initialised output layers pass gradients on from the second step
        opt.zero_grad()
        loss, parts = model.loss(text, video, pos, torch.arange(4), epoch=1, second_view=second)
        loss.backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # after fitting this batch, the true pairing scores a lower loss than any shuffled pairing
    for _ in range(40):
        opt.zero_grad()
        model.loss(text, video, pos, torch.arange(4), epoch=1, second_view=second)[0].backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        aligned = model.loss(text, video, pos, torch.arange(4), epoch=1, second_view=second)[0]
        for k in (1, 2, 3):
            perm = torch.roll(torch.arange(4), k)
            shuffled_pos = pos[:, perm]
            torch.manual_seed(0)
            assert model.loss(text, video, shuffled_pos, perm, epoch=1, second_view=second)[0] > aligned


def test_dpc_knn_respects_masks():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 8)
    mask = torch.arange(10)[None] < torch.tensor([[6], [10]])
    counts = torch.tensor([4, 4])
    assign, centres = dpc_knn_assign(x, mask, counts, k=3)
    garbage = x.clone()
    garbage[0, 6:] = 100 * torch.randn(4, 8)
    assign_g, centres_g = dpc_knn_assign(garbage, mask, counts, k=3)
    assert torch.equal(assign, assign_g) and torch.equal(centres, centres_g)
    assert (assign[0, 6:] == -1).all() and (assign[0, :6] >= 0).all()
    few = torch.arange(10)[None] < torch.tensor([[2], [10]])
    a_few, c_few = dpc_knn_assign(x, few, counts, k=3)
    assert c_few[0].sum() == 2 and set(a_few[0, :2].tolist()) == {0, 1}
    clus = Clustering("dpc-knn", 8, 4)
    out, cmask = clus(x, mask, counts)
    out_g, _ = clus(garbage, mask, counts)
    torch.testing.assert_close(out, out_g)
    assert out.shape == (2, 4, 8) and cmask.sum(1).tolist() == [4, 4]


def test_config_rejects_unknown_keys_and_models():
    with pytest.raises(ValueError, match="unknown model"):
        load_config("clip5")
    with pytest.raises(ValueError, match="unknown option"):
        load_config("m2hf", overrides=["branchez=[V]"])
    assert load_config("m2hf", overrides=["train.epochs=2"])["train"]["epochs"] == 2


def test_projected_width_keeps_the_model_contract():
    model = make_model("m2hf", width=16)
    video = video_batch(n_videos=3, has_audio=torch.tensor([True, False, True]))
    with torch.no_grad():
        model.eval()
        t, v = model.encode_text(text_batch()), model.encode_video(video)
        torch.testing.assert_close(model.text_vectors(t) @ model.video_vectors(v).t(), model.score(t, v),
                                   atol=1e-5, rtol=1e-5)
    assert model.text_vectors(t).shape[1] == 3 * 16 + 2 * 16 + 2 * 16 + 16   # 8 pattern blocks of width 16
    model.train()
    loss, _ = model.loss(text_batch(n=3, lengths=(6, 9, 4)), video, torch.eye(3, dtype=torch.bool), torch.arange(3), epoch=0)
    loss.backward()
    assert "projection" not in dict(model.named_parameters())          # a fixed buffer, not trained


@pytest.mark.parametrize("width", [None, 16])
def test_m2hf_source_statistics_remove_a_common_offset(width):
    """Standardised with its own statistics, a source shifted by a constant gives the same scores."""
    over = {} if width is None else {"width": width}
    model, text = make_model("m2hf", **over), text_batch()
    video = video_batch(n_videos=3)
    shifted = video_batch(n_videos=3)
    shifted.audio, shifted.motion = video.audio + 5.0, video.motion - 3.0

    def stats(v):
        return {name: (x.reshape(-1, x.shape[-1]).mean(0), x.reshape(-1, x.shape[-1]).std(0, correction=0))
                for name, x in (("audio", v.audio), ("motion", v.motion))}

    model.fit_input_statistics(stats(video))
    plain = score(model, text, video)
    model.fit_input_statistics(stats(shifted))
    torch.testing.assert_close(score(model, text, shifted), plain, atol=1e-4, rtol=1e-4)
    early = (model.inner if width else model).early
    assert float(early["MV"].source_mean.mean()) == pytest.approx(float(video.motion.mean()) - 3.0, abs=1e-4)

    untouched = make_model("m2hf", source_norm="none", **over)
    untouched.fit_input_statistics(stats(shifted))
    early = (untouched.inner if width else untouched).early
    assert (early["AV"].source_mean == 0).all() and (early["AV"].source_std == 1).all()
