"""Loader, training runs (run folder, determinism, kill-and-resume) and the model API (contract B)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from data.settings import get_settings
from fake_features import write_fake_dataset
from fusion import train as fusion_train
from fusion.api import encode_queries, encode_split, load_model
from fusion.features import load_features, pick_extractor
from fusion.sampling import segment_positions, uniform_positions
from fusion.train import train

PROJECT = Path(__file__).resolve().parents[1]
TINY = ["frame_layers=1", "text_layers=1", "train.batch_size=8", "train.checkpoint_every=2", "heads=4"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    root = tmp_path_factory.mktemp("tvr_home")
    settings = get_settings(root)
    write_fake_dataset(settings, "fake", 30, seed=0, dims={"clip_frames": 32, "clip_text": 32})
    return settings


def test_uniform_and_two_view_positions():
    pos, mask = uniform_positions(torch.tensor([30, 5, 12]), 12)
    assert pos[0].tolist() == np.round(np.linspace(0, 29, 12)).astype(int).tolist()
    assert pos[1, :5].tolist() == [0, 1, 2, 3, 4] and mask[1].sum() == 5 and mask[0].all()
    g = torch.Generator().manual_seed(0)
    pos, mask = segment_positions(torch.tensor([24, 5]), 12, g)
    assert mask[0].all() and mask[1].sum() == 5
    assert all(2 * k <= p < 2 * k + 2 for k, p in enumerate(pos[0].tolist()))  # one frame per segment
    assert pos[1, :5].tolist() == [0, 1, 2, 3, 4]


def test_loader_shapes_masks_and_missing_audio(home):
    feats = load_features("fake", ["audio", "motion"], settings=home)
    assert feats.random_weights and set(feats.splits) == {"train", "val", "test"}
    train_videos = feats.split_videos("train")
    batch = feats.video_batch(train_videos[:4], 12)
    assert batch.frames.shape[:2] == (4, 12) and batch.frames.shape[2] == 32
    assert batch.audio.shape[2] == 128 and batch.motion.shape[2] == 2304
    assert batch.has_audio.tolist() == [True, True, True, False]  # every 4th fake video has no audio
    assert batch.audio_mask[3].sum() == 0
    caps = feats.split_captions("train")
    assert len(caps) == 3 * len(train_videos)                      # every caption is a sample
    assert len(feats.split_captions("train", "first")) == len(train_videos)
    text = feats.text_batch(caps[:5], 6)                            # captions have 8-14 tokens
    assert text.tokens.shape[1] == 6 and (text.eot == 5).all()
    full = feats.text_batch(caps[:5], 32)
    torch.testing.assert_close(text.sentence(), full.sentence())   # truncation keeps the EOT token


def test_extractor_choice_is_explicit_when_ambiguous(home, tmp_path):
    settings = get_settings(tmp_path / "two")
    write_fake_dataset(settings, "d", 8, dims={"clip_frames": 16, "clip_text": 16})
    other = settings.features_dir / "d" / "clip_frames" / "zzzzzzzzzzzz"
    other.mkdir()
    info = pick_extractor(settings, "d", "clip_frames")
    (other / "_extractor.json").write_text(json.dumps({**info, "extractor_id": "zzzzzzzzzzzz"}))
    with pytest.raises(ValueError, match=info["extractor_id"]):
        pick_extractor(settings, "d", "clip_frames")
    assert pick_extractor(settings, "d", "clip_frames", info["extractor_id"]) == info
    with pytest.raises(FileNotFoundError, match="no 'motion' features"):
        pick_extractor(get_settings(tmp_path / "none"), "d", "motion")


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_run_folder_and_same_seed_same_checkpoint(home):
    a = train("fake", "m2hf", overrides=TINY, epochs=2, seed=3, run_id="m2hf-a", settings=home, quiet=True)
    b = train("fake", "m2hf", overrides=TINY, epochs=2, seed=3, run_id="m2hf-b", settings=home, quiet=True)
    sa, sb = _state(a / "best.pt"), _state(b / "best.pt")
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train("fake", "m2hf", overrides=TINY, epochs=2, seed=4, run_id="m2hf-c", settings=home, quiet=True)
    assert not all(torch.equal(sa[k], _state(c / "best.pt")[k]) for k in sa)
    meta = json.loads((a / "config.json").read_text())
    assert meta["random_weights"] and "RANDOM WEIGHTS" in meta["WARNING"]
    assert set(meta["extractor_ids"]) == {"clip_frames", "clip_text", "audio", "motion"}
    log = [json.loads(line) for line in (a / "log.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in log] == [0, 1]
    assert {"loss_V", "loss_AV", "loss_MV", "loss_fused", "val_t2v_R@1"} <= set(log[0])
    metrics = json.loads((a / "metrics.json").read_text())
    assert metrics["random_weights"] and {"R@1", "R@5", "R@10"} <= set(metrics["test"]["t2v"])
    assert metrics["selected_on"].startswith("validation")
    assert (a / "checkpoint-epoch-001.pt").is_file() and (a / "curves.png").stat().st_size > 1000
    assert "RANDOM WEIGHTS" in (a / "report.md").read_text()


def _train_cmd(run_id: str) -> list[str]:
    return [sys.executable, "-m", "fusion.train", "--dataset", "fake", "--model", "seqTransf", "--seed", "1",
            "--epochs", "3", "--run-id", run_id, "--threads", "1", "--set", "train.batch_size=4",
            "--set", "train.checkpoint_every=3", "--set", "frame_layers=2", "--set", "heads=4"]


@pytest.mark.slow
def test_killed_mid_epoch_and_resumed_equals_uninterrupted(home):
    env = {**os.environ, "TVR_HOME": str(home.root), "PYTHONPATH": str(PROJECT)}
    subprocess.run(_train_cmd("straight"), env=env, cwd=PROJECT, check=True, capture_output=True)
    proc = subprocess.Popen(_train_cmd("killed"), env=env, cwd=PROJECT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state_path = home.runs_dir / "killed" / "resume.pt"
    deadline = time.time() + 120
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if state_path.is_file():
            try:
                state = torch.load(state_path, weights_only=True)
            except (RuntimeError, EOFError, OSError):
                continue
            if state["step"] > 0 and state["epoch"] >= 1:   # mid-epoch, after one full epoch
                proc.send_signal(signal.SIGKILL)
                killed_at = (state["epoch"], state["step"])
                break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed mid-epoch"
    assert not (home.runs_dir / "killed" / "metrics.json").exists()
    resumed = subprocess.run(_train_cmd("killed"), env=env, cwd=PROJECT, check=True, capture_output=True, text=True)
    assert f"resuming killed at epoch {killed_at[0]}" in resumed.stderr
    m1 = json.loads((home.runs_dir / "straight" / "metrics.json").read_text())
    m2 = json.loads((home.runs_dir / "killed" / "metrics.json").read_text())
    assert m1["test"] == m2["test"] and m1["val"] == m2["val"] and m1["best_epoch"] == m2["best_epoch"]
    s1, s2 = _state(home.runs_dir / "straight" / "best.pt"), _state(home.runs_dir / "killed" / "best.pt")
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    log1 = (home.runs_dir / "straight" / "log.jsonl").read_text().splitlines()
    log2 = (home.runs_dir / "killed" / "log.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]  # noqa: E731
    assert strip(log1) == strip(log2)


class _Interrupt(Exception):
    """Stands for a run killed between two steps."""


def test_loss_scaler_state_survives_a_resume(home, monkeypatch):
    """fp16's loss-scaler state is saved in resume.pt and restored: a run interrupted mid-epoch and
    resumed ends with the scaler state (and weights) of an uninterrupted run. On CPU a GradScaler
    (enabled there in this torch) stands in for CUDA's, growing its scale at every step."""
    made: list[torch.amp.GradScaler] = []

    def cpu_scaler(precision, device):
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0 ** 4, growth_interval=1))
        return made[-1]

    monkeypatch.setattr(fusion_train, "make_scaler", cpu_scaler)
    args = dict(overrides=TINY, epochs=2, seed=5, settings=home, quiet=True)
    straight = train("fake", "seqTransf", run_id="scaler-straight", **args)
    final = made[-1].state_dict()

    def stop(event):     # after epoch 2's checkpoint at step 2 (train.checkpoint_every=2)
        if event.task.startswith("epoch 2/") and event.done == 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train("fake", "seqTransf", run_id="scaler-resumed", progress=stop, **args)
    saved = torch.load(home.runs_dir / "scaler-resumed" / "resume.pt", weights_only=True)
    assert (saved["epoch"], saved["step"]) == (1, 2) and saved["scaler"]["scale"] > 2.0 ** 4
    resumed = train("fake", "seqTransf", run_id="scaler-resumed", **args)
    assert made[-1].state_dict() == final
    a, b = _state(straight / "best.pt"), _state(resumed / "best.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", ["seqTransf", "m2hf", "hcmi"])
def test_api_encode_split_scores_match_vectors(home, name):
    run = train("fake", name, overrides=TINY, epochs=1, run_id=f"api-{name}", settings=home, quiet=True)
    loaded = load_model(run.name, settings=home)
    assert loaded.name == name and loaded.random_weights and loaded.dataset == "fake"
    enc = encode_split(loaded, "fake", "test", settings=home)
    feats = load_features("fake", [], settings=home)
    assert len(enc.video_ids) == len(feats.split_videos("test"))
    assert len(enc.captions) == len(enc.query_video_ids) == enc.text_vectors.shape[0]
    assert enc.text_vectors.dtype == np.float32 and enc.text_vectors.shape[1] == enc.video_vectors.shape[1]
    sim = enc.similarity(chunk=5)
    assert sim.shape == (len(enc.captions), len(enc.video_ids))
    if not enc.fine_grained:
        np.testing.assert_allclose(sim, enc.text_vectors @ enc.video_vectors.T, atol=1e-5)
    np.testing.assert_allclose(enc.score(np.array([1, 0]), np.array([2, 0])), sim[[1, 0]][:, [2, 0]], atol=1e-5)
    first = encode_split(loaded, "fake", "test", settings=home, captions="first")
    assert len(first.captions) == len(first.video_ids)


def test_api_zero_shot_and_queries(home, monkeypatch):
    with pytest.raises(ValueError, match="dataset"):
        load_model("zero-shot", settings=home)
    with pytest.raises(FileNotFoundError):
        load_model("no-such-run", settings=home)
    loaded = load_model("zero-shot", dataset="fake", settings=home)
    assert loaded.run_dir is None and loaded.random_weights and not loaded.fine_grained
    feats = load_features("fake", [], settings=home)
    caps = feats.split_captions("test")[:3]
    stored = [(feats.text.row(q).numpy(), int(feats.eot[q])) for q in caps]
    seen = {}

    class FakeEncoder:
        precision = "fp32"

        def encode(self, captions):
            seen["captions"] = captions
            return stored

    registry = types.ModuleType("extractors.registry")
    registry.build_text_encoder = lambda info, **kw: seen.setdefault("info", info) and FakeEncoder()
    monkeypatch.setitem(sys.modules, "extractors.registry", registry)
    vectors = encode_queries(loaded, [feats.captions[q] for q in caps], settings=home)
    assert seen["info"]["modality"] == "clip_text"
    enc = encode_split(loaded, "fake", "test", settings=home)
    np.testing.assert_allclose(vectors, enc.text_vectors[:3], atol=1e-6)


@pytest.mark.slow
def test_ablation_writes_the_table(tmp_path):
    from fusion.ablation import run_ablation
    from fake_features import write_structured_synthetic

    settings = get_settings(tmp_path / "abl")
    write_structured_synthetic(settings, "synthetic", n=40, seed=0)
    rows = tmp_path / "rows.yaml"
    rows.write_text("common: {width: 16, frame_layers: 1, heads: 2, train: {epochs: 1, batch_size: 16}}\n"
                    "rows:\n  - {name: zero-shot, model: zero-shot}\n"
                    "  - {name: M2HF V+AV, model: m2hf, set: {branches: [V, AV]}}\n")
    out = run_ablation("synthetic", [0, 1], rows, workers=1, settings=settings)
    summary = json.loads((out / "ablation.json").read_text())
    assert [r["name"] for r in summary["rows"]] == ["zero-shot", "M2HF V+AV"]
    assert summary["random_weights"] and summary["oracle"]["t2v"]
    stats = summary["rows"][1]["stats"]
    assert {"t2v R@1", "v2t R@10", "match colour", "match sound", "match motion"} <= set(stats)
    assert all(0 <= stats[k][0] <= 100 for k in stats if k != "RSum") and 0 <= stats["RSum"][0] <= 600
    text = (out / "ablation.md").read_text()
    assert "RANDOM WEIGHTS" in text and "Oracle ceilings" in text and "| M2HF V+AV |" in text
    run = json.loads((settings.runs_dir / "ablation-synthetic-row01-s0" / "metrics.json").read_text())
    assert run["test"]["v2t_protocol"] in text and summary["v2t_protocol"] == run["test"]["v2t_protocol"]


def test_bench_runs_on_tiny_sizes(tmp_path, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_train", PROJECT / "bench" / "train.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--videos", "24", "--captions", "2", "--steps", "1", "--warmup", "0", "--batch", "8",
                       "--models", "meanP", "hcmi", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM features" in printed and "| hcmi |" in printed
    results = json.loads(out.read_text())["results"]
    assert [r["model"] for r in results] == ["meanP", "hcmi"]
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_share_pct"] <= 100 for r in results)


def test_input_statistics_cover_training_videos_with_the_modality(home):
    feats = load_features("fake", ["audio", "motion"], settings=home)
    stats = feats.input_statistics("train", chunk_rows=7)   # several chunks
    videos = [v for v in feats.split_videos("train").tolist() if feats.has_audio[v]]
    rows = torch.cat([feats.audio.row(v) for v in videos])
    torch.testing.assert_close(stats["audio"][0], rows.mean(0))
    torch.testing.assert_close(stats["audio"][1], rows.std(0, correction=0))
    assert stats["motion"][0].shape == (2304,)


def test_the_model_registry_is_the_one_list_of_model_names(capsys):
    """Every registered model has its defaults file and every defaults file is registered; the
    training CLI's choices and prefect.yaml's train/<model> deployments are the registry's names."""
    import yaml

    from fusion.config import CONFIG_DIR
    from fusion.registry import MODELS, model_names

    files = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml") if p.stem != "base")
    assert files == model_names() == sorted(MODELS)
    spec = yaml.safe_load((PROJECT / "prefect.yaml").read_text())
    trains = sorted(d["parameters"]["model"] for d in spec["deployments"]
                    if d["entrypoint"].startswith("flows/train.py"))
    assert trains == model_names()
    with pytest.raises(SystemExit):
        fusion_train.main(["--help"])
    assert "{" + ",".join(model_names()) + "}" in capsys.readouterr().out.replace("\n", "").replace(" ", "")


def _write_bundle(folder: Path) -> Path:
    """A minimal hand-made bundle of an untrained meanP model on 16-d features (no feature store)."""
    from safetensors.torch import save_model

    from data.fingerprint import sha256_file
    from fusion.bundle import BUNDLE_FILE, FORMAT, WEIGHTS_FILE
    from fusion.config import load_config
    from fusion.factory import build_model

    folder.mkdir(parents=True)
    config = load_config("meanP")
    save_model(build_model(config, 16), str(folder / WEIGHTS_FILE))
    (folder / BUNDLE_FILE).write_text(json.dumps({
        "format": FORMAT, "model": "meanP", "config": config, "width": 16, "dataset": "fake",
        "extractor_ids": {}, "random_weights": True, "fine_grained": False,
        "text_extractor": {"params": {"model": "ViT-B-32"}},
        "files": {WEIGHTS_FILE: sha256_file(folder / WEIGHTS_FILE)}}))
    return folder


def test_a_loaded_bundle_honours_tvr_device_and_an_explicit_device_overrides_it(tmp_path, monkeypatch):
    from fusion.bundle import load_bundle
    from fusion.encoding import model_device

    bundle = _write_bundle(tmp_path / "bundle")
    monkeypatch.setenv("TVR_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TVR_DEVICE", "cpu")
    assert model_device(load_model(bundle).model).type == "cpu"
    monkeypatch.setenv("TVR_DEVICE", "cuda")              # the default follows $TVR_DEVICE ...
    if torch.cuda.is_available():
        assert model_device(load_model(bundle).model).type == "cuda"
        assert model_device(load_bundle(bundle).model).type == "cuda"
    else:
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(bundle)
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_bundle(bundle)
    # ... and an explicit device wins over it
    assert model_device(load_model(bundle, device="cpu").model).type == "cpu"
    assert model_device(load_bundle(bundle, device="cpu").model).type == "cpu"


def test_a_train_split_of_one_video_is_refused_with_its_counts(tmp_path, monkeypatch, capsys):
    """One training video: every batch holds only it, the loss is exactly 0 and nothing is learned."""
    monkeypatch.setenv("TVR_HOME", str(tmp_path / "home"))
    settings = get_settings()
    write_fake_dataset(settings, "one", 4, split_names=["train", "val", "test", "test"],
                       dims={"clip_frames": 16, "clip_text": 16})
    assert fusion_train.main(["--dataset", "one", "--model", "meanP", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: ")
    assert "train split has 1 video(s) and 3 caption(s)" in err and "at least 2 videos" in err
    assert not settings.runs_dir.exists()                           # refused before the run folder
    folder = train("one", "zero-shot", settings=settings, quiet=True)   # nothing to train: still evaluates
    assert (folder / "metrics.json").is_file()
