"""The moment head (fusion.moments): it learns on a toy set whose windows are separable, is saved
with the run and loaded by load_model, is deterministic per seed, and MomentPredictor keeps its
contract (moments invariants, NMS, segment vectors); a dataset without windows gets no head."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from data.manifest import VideoRecord, build_manifest, write_manifest
from data.moment_metrics import svmr_metrics, temporal_iou
from data.settings import get_settings
from data.store import FeatureRow, FeatureSet
from data.windows import CaptionWindow, read_windows, windows_path, write_windows
from fake_features import _spec, write_fake_dataset
from fusion.api import MomentPredictor, load_model
from fusion.config import load_config
from fusion.features import load_features
from fusion.moments.grid import grid_steps, segment_windows, window_steps
from fusion.moments.plan import plan_head
from fusion.moments.predict import nms
from fusion.train import train

DIMS = {"clip_frames": 32, "clip_text": 32, "audio": 16, "motion": 24}
COLOURS = 6
# a tiny, fast profile: the ranking model trains one epoch, the head a few
TINY = ["width=16", "frame_layers=1", "text_layers=0", "train.batch_size=16", "moments.width=64",
        "moments.channels=16", "moments.layers=2", "moments.batch_size=8", "moments.lr=5e-3", "moments.step_s=0.5"]


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def write_toy_events(settings, dataset: str, n_videos: int, seed: int = 0, noise: float = 0.3) -> None:
    """Videos of 8-12 s (frames at 1 fps) made of 2-3 segments of one "colour" each (whole seconds,
    neighbours differ): frames and audio carry the colour, each segment has two captions whose EOT
    embedding carries it in an unrelated text space, and each caption's window is its segment."""
    rng = np.random.default_rng(seed)
    look, sound, word = (_unit(rng, COLOURS, DIMS[m]) for m in ("clip_frames", "audio", "clip_text"))
    records, rows, truth = [], {m: [] for m in DIMS}, []
    for i in range(n_videos):
        vid, duration = f"toy{i:03d}", int(rng.integers(8, 13))
        cuts = np.sort(rng.choice(np.arange(3, duration - 2), size=int(rng.integers(1, 3)), replace=False))
        edges = [0, *[int(c) for c in cuts], duration]
        colours = [int(rng.integers(COLOURS))]
        while len(colours) < len(edges) - 1:
            colours.append(int((colours[-1] + rng.integers(1, COLOURS)) % COLOURS))
        t_frames = np.arange(duration, dtype=np.float64)

        def seg_of(t: np.ndarray) -> np.ndarray:
            return np.searchsorted(edges, t, side="right") - 1
        frames = 3 * look[[colours[s] for s in seg_of(t_frames)]]
        frames += noise * rng.normal(size=frames.shape)
        t_audio = np.arange(int(duration / 0.96)) * 0.96
        audio = 3 * sound[[colours[s] for s in seg_of(t_audio + 0.48)]]
        audio += noise * rng.normal(size=audio.shape)
        t_motion = np.arange(duration // 2) * 2.0 + 1.0
        rows["clip_frames"].append(FeatureRow(vid, frames.astype(np.float32), t_frames))
        rows["audio"].append(FeatureRow(vid, audio.astype(np.float32), t_audio, extra={"has_audio": True}))
        rows["motion"].append(FeatureRow(vid, rng.normal(size=(len(t_motion), DIMS["motion"])).astype(np.float32),
                                         t_motion))
        captions = []
        for s, colour in enumerate(colours):
            for _ in range(2):
                tokens = rng.normal(size=(6, DIMS["clip_text"])).astype(np.float32) * 0.3
                tokens[-1] += 3 * word[colour]
                rows["clip_text"].append(FeatureRow(vid, tokens, np.zeros(0), extra={
                    "caption_index": len(captions), "eot_index": 5, "caption": f"colour {colour} in {vid}"}))
                truth.append(CaptionWindow(vid, len(captions), float(edges[s]), float(edges[s + 1])))
                captions.append(f"colour {colour} in {vid}")
        split = "train" if i < 0.6 * n_videos else "val" if i < 0.8 * n_videos else "test"
        records.append(VideoRecord(vid, f"videos/{vid}.mp4", split, captions, float(duration)))
    table, _ = build_manifest(records, settings.dataset_dir(dataset) / "videos", dataset=dataset)
    write_manifest(table, settings.manifest_path(dataset))
    for modality, dim in DIMS.items():
        spec = _spec(modality, dim, "toy-1")
        store = FeatureSet(settings.feature_dir(dataset, modality, spec.extractor_id), spec)
        store.prepare()
        store.write_shard(rows[modality])
    write_windows(windows_path(dataset, settings), truth)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    settings = get_settings(tmp_path_factory.mktemp("moments"))
    write_toy_events(settings, "toy", 40)
    return settings


@pytest.fixture(scope="module")
def run(home):
    return train("toy", "meanP", overrides=TINY, epochs=1, seed=0, run_id="toy-a", settings=home, quiet=True)


@pytest.fixture(scope="module")
def predictor(run, home):
    return MomentPredictor(load_model(run, settings=home), "toy", [f"toy{i:03d}" for i in range(40)] + ["missing"],
                           settings=home)


@pytest.fixture(scope="module")
def test_queries(home) -> tuple[np.ndarray, list[CaptionWindow]]:
    """The toy set's test captions: unit clip_text EOT embeddings ``[Q, D]`` and their windows."""
    feats = load_features("toy", [], settings=home)
    videos = [feats.video_ids[v] for v in feats.caption_video.tolist()]
    row = {(v, c): q for q, (v, c) in enumerate(zip(videos, feats.caption_index))}
    test = {feats.video_ids[v] for v in feats.split_videos("test")}
    windows = [w for w in read_windows(windows_path("toy", home)) if w.video_id in test]
    eot = feats.text_batch(torch.as_tensor([row[(w.video_id, w.caption_index)] for w in windows]), 8, eot_only=True)
    return torch.nn.functional.normalize(eot.tokens[:, 0], dim=-1).numpy(), windows


def test_the_head_is_trained_saved_and_reported(run, home):
    meta = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert (run / "moment_head.pt").is_file() and (run / "moment_log.jsonl").is_file()
    train_windows = sum(w.video_id < "toy024" for w in read_windows(windows_path("toy", home)))  # 24 train videos
    assert meta["moment_head"]["windows"] == metrics["moments"]["windows"] == train_windows
    assert metrics["moments"]["trained"] and "RANDOM WEIGHTS" in metrics["moments"]["WARNING"]
    assert "RANDOM WEIGHTS" in meta["moment_head"]["WARNING"]
    log = [json.loads(line) for line in (run / "moment_log.jsonl").read_text().splitlines()]
    assert len(log) == meta["config"]["moments"]["epochs"] and all(e["WARNING"] == "RANDOM WEIGHTS" for e in log)
    assert log[-1]["loss"] < log[0]["loss"]
    report = (run / "report.md").read_text()
    assert "## Moment head" in report and f"trained on {train_windows} windows" in report
    test = metrics["moments"]["test"]
    assert test["head"]["R1@0.5"] > test["whole_video"]["R1@0.5"] + 30, test


def test_the_head_learns_separable_windows(predictor, test_queries):
    clip, windows = test_queries
    preds, scores, truth, whole = [], [], [], []
    for found, w in zip(predictor.moments(clip, predictor.ids, 5), windows):
        moments = found[predictor.ids.index(w.video_id)]
        preds.append(np.asarray([m[:2] for m in moments]))
        scores.append(np.asarray([m[2] for m in moments]))
        truth.append(np.asarray([[w.start_s, w.end_s]]))
        whole.append(np.asarray([[0.0, predictor.durations[w.video_id]]]))
    head = svmr_metrics(preds, scores, truth)
    baseline = svmr_metrics(whole, [np.zeros(1)] * len(whole), truth)
    assert head["R1@0.5"] > baseline["R1@0.5"] + 30 and head["mIoU"] > baseline["mIoU"] + 15, (head, baseline)


def test_moments_invariants(predictor, test_queries):
    clip, _ = test_queries
    assert predictor.ids == [f"toy{i:03d}" for i in range(40)]          # "missing" has no features
    assert all(8 <= predictor.durations[v] <= 12 for v in predictor.ids)
    found = predictor.moments(clip[:5], predictor.ids[:6], 3)
    assert len(found) == 5 and all(len(row) == 6 for row in found)
    for row in found:
        for vid, moments in zip(predictor.ids[:6], row):
            assert len(moments) == 3
            assert all(0 <= s < e <= predictor.durations[vid] for s, e, _ in moments)
            assert [m[2] for m in moments] == sorted((m[2] for m in moments), reverse=True)
            bounds = np.asarray([m[:2] for m in moments])
            for a, b in itertools.combinations(range(len(bounds)), 2):
                assert temporal_iou(bounds[[a]], bounds[[b]])[0] < 0.5
    assert [len(m) for m in predictor.moments(clip[:1], predictor.ids[:2], 1)[0]] == [1, 1]
    with pytest.raises(ValueError, match="missing"):
        predictor.moments(clip[:1], ["missing"], 1)
    with pytest.raises(ValueError, match="query_clip"):
        predictor.moments(clip[:1, :5], predictor.ids[:1], 1)


def test_moments_of_many_videos_at_once_equal_one_video_at_a_time(predictor, test_queries, monkeypatch):
    """Videos of 8-12 s share one padded detector pass (or the groups of a tight cell budget), and
    each query may ask its own videos (moments_each); padding and grouping change nothing: the
    windows are the same and the scores equal to float rounding."""
    import fusion.moments.predict as predict

    clip, _ = test_queries
    together = predictor.moments(clip[:4], predictor.ids, 3)
    assert len({len(predictor._steps[predictor.row[v]]) for v in predictor.ids}) > 1    # uneven lengths
    alone = [[predictor.moments(clip[q:q + 1], [v], 3)[0][0] for v in predictor.ids] for q in range(4)]
    with monkeypatch.context() as patch:
        patch.setattr(predict, "PAIR_CELLS", 3 * 60 * 60)                              # about 3 pairs a pass
        grouped = predictor.moments(clip[:4], predictor.ids, 3)
    own = [predictor.ids[q::4] for q in range(4)]                                       # each query its videos
    each = predictor.moments_each(clip[:4], own, 3)
    assert [len(row) for row in each] == [len(v) for v in own]
    mine = [[together[q][predictor.row[v]] for v in own[q]] for q in range(4)]
    for got, reference in ((together, alone), (grouped, alone), (each, mine)):
        for q in range(4):
            for found, expected in zip(got[q], reference[q], strict=True):
                assert [m[:2] for m in found] == [m[:2] for m in expected]
                assert np.allclose([m[2] for m in found], [m[2] for m in expected], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="one list per query"):
        predictor.moments_each(clip[:2], [predictor.ids], 3)


def test_a_one_step_video(run, home, test_queries):
    head = load_model(run, settings=home).moments
    feats = load_features("toy", list(head.modalities), extractors=head.meta["extractor_ids"], settings=home)
    short = MomentPredictor.from_features(head, feats, np.asarray([0]), np.asarray([0.3]))   # 0.5 s steps: one
    clip, _ = test_queries
    (moments,) = short.moments(clip[:1], short.ids, 4)[0]
    assert [m[:2] for m in moments] == [(0.0, 0.3)]
    vectors, where = short.segment_vectors(2.0, 1.0)
    assert vectors.shape == (1, head.meta["config"]["width"]) and where == [(short.ids[0], 0.0, 0.3)]


def test_segment_vectors_rank_the_moment_first(predictor, test_queries):
    clip, windows = test_queries
    vectors, where = predictor.segment_vectors(2.0, 1.0)
    queries = predictor.query_vectors(clip)
    assert vectors.dtype == queries.dtype == np.float32 and vectors.shape == (len(where), queries.shape[1])
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    for vid in predictor.ids:
        assert [(s, e) for v, s, e in where if v == vid] == segment_windows(predictor.durations[vid], 2.0, 1.0)
    scores = queries @ vectors.T
    videos = np.asarray([v for v, _, _ in where])
    inside = []
    for row, w in zip(scores, windows):
        mine = np.flatnonzero(videos == w.video_id)
        _, s, e = where[mine[np.argmax(row[mine])]]
        inside.append(w.start_s <= (s + e) / 2 <= w.end_s)
    assert np.mean(inside) > 0.8, np.mean(inside)


def test_same_seed_same_head(run, home):
    again = train("toy", "meanP", overrides=TINY, epochs=1, seed=0, run_id="toy-b", settings=home, quiet=True)
    a = torch.load(run / "moment_head.pt", weights_only=True)["model"]
    b = torch.load(again / "moment_head.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_no_windows_no_head(tmp_path):
    settings = get_settings(tmp_path)
    write_fake_dataset(settings, "plain", 8, dims={"clip_frames": 16, "clip_text": 16})
    run = train("plain", "meanP", overrides=["train.batch_size=4"], epochs=1, settings=settings, quiet=True)
    assert not (run / "moment_head.pt").exists()
    assert "moments" not in json.loads((run / "metrics.json").read_text())
    loaded = load_model(run, settings=settings)
    assert loaded.moments is None
    with pytest.raises(ValueError, match="no moment head"):
        MomentPredictor(loaded, "plain", ["vid00000"], settings=settings)
    with pytest.raises(ValueError, match="moments.enabled"):
        train("plain", "meanP", overrides=["moments.enabled=true"], epochs=1, settings=settings, quiet=True)


def test_paragraph_sentence_windows_are_skipped_with_one_note(tmp_path):
    settings = get_settings(tmp_path)
    write_fake_dataset(settings, "paragraphs", 8, dims={"clip_frames": 16, "clip_text": 16})
    write_windows(windows_path("paragraphs", settings),
                  [CaptionWindow(f"vid{i:05d}", s, s * 1.0, s + 1.0, 0, f"sentence {s}")
                   for i in range(8) for s in range(3)])
    said = []
    config = load_config("meanP")
    assert plan_head(config, "paragraphs", settings, said.append) is None
    assert len(said) == 1 and "24 windows" in said[0] and "paragraph" in said[0], said
    with pytest.raises(ValueError, match="paragraph"):
        plan_head(load_config("meanP", overrides=["moments.enabled=true"]), "paragraphs", settings, said.append)


def test_grid_helpers():
    step, n = grid_steps(np.asarray([9.4, 0.3, 1000.0]), 0.2, 256)
    assert n.tolist() == [47, 2, 256] and step[2] == pytest.approx(1000 / 256)
    first, last = window_steps(np.asarray([[1.2, 3.0], [0.0, 9.4]]), step[:1].repeat(2), n[:1].repeat(2))
    assert first.tolist() == [6, 0] and last.tolist() == [14, 46]
    assert segment_windows(9.0, 4.0, 2.0) == [(0.0, 4.0), (2.0, 6.0), (4.0, 8.0), (6.0, 9.0)]
    assert segment_windows(3.0, 4.0, 2.0) == [(0.0, 3.0)]
    assert segment_windows(10.0, 1.0, 6.0) == [(0.0, 1.0), (6.0, 7.0)]
    keep = nms(torch.tensor([[0.0, 0.5, 4.0]], dtype=torch.float64),
               torch.tensor([[2.0, 2.0, 5.0]], dtype=torch.float64))
    assert keep.tolist() == [[True, False, True]]
