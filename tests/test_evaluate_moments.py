"""python -m retrieval.evaluate --task moments: the baselines on hand-checked cases, a fake moment
head, three runs (mean and spread, the goal), the CLI's JSON on a tiny fake store with windows, and
the refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest

from data.manifest import VideoRecord, read_manifest
from data.moment_metrics import svmr_metrics
from data.settings import get_settings
from data.windows import CaptionWindow, windows_path, write_windows
from fake_features import write_fake_dataset
from retrieval.evaluation import evaluate, moments
from retrieval.evaluation.moments import (HEAD, HEURISTIC, PRIOR, RANDOM, SVMR_N, WHOLE, MomentQueries,
                                          baseline_metrics, baselines, head_metrics, prior_window,
                                          top_columns)
from retrieval.evaluation.moments_report import combine
from retrieval.index.segments import SegmentIndex
from retrieval.query.moments import corpus_moments
from retrieval.query.spans import FrameFeatures

SVMR_KEYS = ["R1@0.3", "R1@0.5", "R1@0.7", "R5@0.3", "R5@0.5", "R5@0.7", "mIoU"]
VCMR_KEYS = ["R1@0.5", "R1@0.7", "R10@0.5", "R10@0.7", "R100@0.5", "R100@0.7"]
E = np.eye(4, dtype=np.float32)


def _frames() -> FrameFeatures:
    """Video ``a``: 10 frames 1 s apart, direction 0 at 2-4 s (so the heuristic finds [2, 5] s);
    video ``b``: 20 frames, direction 1 throughout."""
    a = np.stack([E[0] if 2 <= t <= 4 else E[2] for t in range(10)])
    return FrameFeatures({"a": (a, np.arange(10.0)), "b": (np.tile(E[1], (20, 1)), np.arange(20.0))},
                         known_durations={"a": 10.0, "b": 20.0})


def _queries() -> MomentQueries:
    """Two queries: the first in ``a`` (truth [2, 5] s), the second in ``b`` (truth [0, 10] s)."""
    return MomentQueries(keys=[("a", 0), ("b", 0)], truth=[np.array([[2.0, 5.0]]), np.array([[0.0, 10.0]])],
                         clip=np.stack([E[0], E[1]]), video_ids=["a", "b"], own=np.array([0, 1]),
                         ranking=np.array([[0.9, 0.1], [0.2, 0.3]], np.float32), durations=np.array([10.0, 20.0]),
                         frames=_frames(), listed=2, text_source="hand-made")


def test_whole_video_prior_and_heuristic_propose_by_hand():
    found = baselines(_queries(), (0.1, 0.5), seed=0, draws=3)
    assert list(found) == [WHOLE, RANDOM, PRIOR, HEURISTIC]
    cols = np.array([0, 1])
    np.testing.assert_allclose(found[WHOLE].propose(0, cols, 0), [[0, 10], [0, 20]])
    np.testing.assert_allclose(found[PRIOR].propose(1, cols, 0), [[1, 5], [2, 10]])   # scaled by the duration
    np.testing.assert_allclose(found[HEURISTIC].propose(0, cols[:1], 0), [[2, 5]])     # frames 2-4, one step more
    windows, scores = found[HEURISTIC].own(0, 0)
    assert windows[0].tolist() == [2, 5] and scores[0] == pytest.approx(1.0) and len(windows) <= SVMR_N
    assert list(baselines(_queries(), None, 0, 3)) == [WHOLE, RANDOM, HEURISTIC]      # no training windows


def test_whole_video_metrics_by_hand():
    got = baseline_metrics(_queries(), baselines(_queries(), None, 0, 1)[WHOLE])
    # SVMR: [0, 10] vs [2, 5] has IoU 0.3; [0, 20] vs [0, 10] has IoU 0.5
    assert got["svmr"] == pytest.approx({"R1@0.3": 100, "R1@0.5": 50, "R1@0.7": 0, "R5@0.3": 100, "R5@0.5": 50,
                                         "R5@0.7": 0, "mIoU": 40})
    # VCMR: query a ranks a first (IoU 0.3: no hit at 0.5), b ranks b first (IoU 0.5: a hit at rank 1)
    assert got["vcmr"] == pytest.approx({"R1@0.5": 50, "R1@0.7": 0, "R10@0.5": 50, "R10@0.7": 0,
                                         "R100@0.5": 50, "R100@0.7": 0})


def test_random_span_is_seeded_inside_the_video_and_averaged_over_draws():
    queries = _queries()
    random = baselines(queries, None, seed=5, draws=4)[RANDOM]
    cols = np.array([0, 1])
    first = random.propose(0, cols, 0)
    np.testing.assert_array_equal(first, baselines(queries, None, seed=5, draws=4)[RANDOM].propose(0, cols, 0))
    assert not np.array_equal(first, random.propose(0, cols, 1))                          # another draw
    assert not np.array_equal(first, baselines(queries, None, seed=6, draws=4)[RANDOM].propose(0, cols, 0))
    np.testing.assert_array_equal(random.propose(0, cols[1:], 0), first[1:])              # same span per pair
    assert (first[:, 0] <= first[:, 1]).all() and (first >= 0).all() and (first[:, 1] <= [10, 20]).all()
    per_draw = [svmr_metrics([random.propose(q, queries.own[q:q + 1], d) for q in range(2)], [np.ones(1)] * 2,
                             queries.truth) for d in range(4)]
    got = baseline_metrics(queries, random)["svmr"]
    assert got == pytest.approx({k: np.mean([d[k] for d in per_draw]) for k in per_draw[0]})


def test_prior_window_is_the_mean_training_window_by_relative_position():
    records = {"t1": VideoRecord("t1", "t1.mp4", "train", ["x", "y"], 10.0),
               "t2": VideoRecord("t2", "t2.mp4", "train", ["z"], 20.0),
               "s": VideoRecord("s", "s.mp4", "test", ["w"], 10.0)}
    windows = [CaptionWindow("t1", 0, 0.0, 5.0), CaptionWindow("t1", 1, 5.0, 10.0), CaptionWindow("t2", 0, 2.0, 4.0),
               CaptionWindow("s", 0, 0.0, 1.0)]                                             # test: not counted
    assert prior_window(windows, records) == pytest.approx(((0 + 0.5 + 0.1) / 3, (0.5 + 1 + 0.2) / 3))
    assert prior_window(windows[-1:], records) is None


def test_top_columns_keep_ties_at_the_cut():
    assert sorted(top_columns(np.array([0.1, 0.5, 0.5, 0.9]), 2)) == [1, 2, 3]
    assert sorted(top_columns(np.array([0.1, 0.5]), 5)) == [0, 1]


class FakePredictor:
    """The MomentPredictor interface: the truth (score 1) in a query's own video, [0, 1] s (score
    0.5) elsewhere; query and segment vectors from the frames' CLIP space."""

    asked: list = []

    def __init__(self, loaded, dataset, video_ids, *, settings=None):
        self.ids, self.frames = list(video_ids), _frames()
        self.durations = {v: self.frames.durations[v] for v in self.ids}

    def moments_each(self, query_clip, video_ids, n):
        type(self).asked.append(([list(v) for v in video_ids], n))
        owner = {0: "a", 1: "b"}
        truth = {"a": (2.0, 5.0), "b": (0.0, 10.0)}
        return [[[(*truth[v], 1.0)] if owner[int(np.argmax(q))] == v else [(0.0, 1.0, 0.5)] for v in videos]
                for q, videos in zip(query_clip, video_ids)]

    def query_vectors(self, query_clip):
        return np.asarray(query_clip, np.float32)

    def segment_vectors(self, window_s, stride_s):
        keys = [(v, 0.0, min(window_s, self.durations[v])) for v in self.ids]
        return self.frames.means[[self.frames.ids.index(v) for v in self.ids]], keys


def test_trained_head_through_a_fake_predictor(monkeypatch):
    import fusion.api

    monkeypatch.setattr(fusion.api, "MomentPredictor", FakePredictor)
    FakePredictor.asked = []
    got = head_metrics(None, "toy", _queries(), get_settings())
    assert got["svmr"]["R1@0.7"] == 100 and got["svmr"]["mIoU"] == pytest.approx(100)
    assert got["vcmr"]["R1@0.7"] == 100                       # the own video's moment scores above [0, 1] s
    svmr, vcmr = FakePredictor.asked                           # one call for SVMR, one for VCMR: all queries
    assert svmr == ([["a"], ["b"]], SVMR_N) and sorted(vcmr[0][0]) == sorted(vcmr[0][1]) == ["a", "b"]
    queries, plain = _queries(), FakePredictor(None, "toy", ["a", "b"])
    segments = SegmentIndex.exact(*plain.segment_vectors(4.0, 2.0))
    found = corpus_moments(plain, segments, queries.clip, 10)
    assert [[(p["video_id"], p["start_s"]) for p in row] for row in found] == [[("a", 2.0), ("b", 0.0)],
                                                                             [("b", 0.0), ("a", 0.0)]]


def _run(svmr_r1: float, vcmr_r10: float, head: bool = True) -> dict:
    methods = {name: {"svmr": {"R1@0.5": 10.0 + i, "mIoU": 5.0}, "vcmr": {"R10@0.5": 20.0 + i}}
               for i, name in enumerate((WHOLE, RANDOM, PRIOR, HEURISTIC))}
    if head:
        methods[HEAD] = {"svmr": {"R1@0.5": svmr_r1, "mIoU": 9.0}, "vcmr": {"R10@0.5": vcmr_r10}}
    return {"methods": methods, "protocol": {"dataset": "toy", "split": "test"}, "model": {}, "random_weights": True}


def test_three_runs_mean_spread_and_the_goal():
    result = combine([_run(30, 40), _run(34, 44), _run(32, 42)], ["r0", "r1", "r2"])
    head = result["methods"][HEAD]
    assert head["svmr"]["R1@0.5"] == pytest.approx(32) and head["svmr_spread"]["R1@0.5"] == pytest.approx(4)
    assert head["n_runs"] == 3 and result["methods"][WHOLE]["vcmr_spread"]["R10@0.5"] == 0
    assert result["headline"] == HEAD and result["svmr"] == head["svmr"] and result["vcmr"] == head["vcmr"]
    assert [r["label"] for r in result["per_run"]] == ["r0", "r1", "r2"]
    assert "(max - min) over 3 runs" in result["protocol"]["aggregate"] and result["random_weights"] is True
    assert result["goal"]["met"] is True and len(result["goal"]["comparisons"]) == 8
    close = combine([_run(12.5, 40), _run(14.5, 44), _run(13.5, 42)], ["r0", "r1", "r2"])   # mean 13.5, spread 2
    assert close["goal"]["met"] is False
    failed = [c for c in close["goal"]["comparisons"] if not c["beats"]]      # prior 12 and heuristic 13
    assert [c["baseline"] for c in failed] == [PRIOR, HEURISTIC] and failed[0]["spread"] == pytest.approx(2)
    assert failed[0]["metric"] == "SVMR R1@0.5" and failed[0]["difference"] == pytest.approx(1.5)
    plain = combine([_run(0, 0, head=False)], ["zs"])
    assert plain["headline"] == HEURISTIC and "goal" not in plain and "per_run" not in plain


def _windowed_store(settings, dataset: str = "toy") -> None:
    """A fake store of 20 videos, 3 captions each; caption c happens in the c-th third of its video."""
    write_fake_dataset(settings, dataset, 20, frames=(8, 16))
    records = read_manifest(settings.manifest_path(dataset)).records()
    write_windows(windows_path(dataset, settings),
                  [CaptionWindow(r.video_id, c, c * r.duration_s / 3, (c + 1) * r.duration_s / 3)
                   for r in records for c in range(3)])


def test_cli_json_on_a_fake_store_with_windows(tvr_home, monkeypatch, capsys):
    settings = get_settings()
    _windowed_store(settings)
    oracle = {"all": {"svmr": dict.fromkeys(SVMR_KEYS, 90.0), "vcmr": dict.fromkeys(VCMR_KEYS, 80.0)}}
    (settings.dataset_dir("toy") / "oracle.json").write_text(json.dumps({"moments": oracle}))
    out = tvr_home / "moments.json"
    assert evaluate.main(["--task", "moments", "--run", "zero-shot", "--dataset", "toy", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "oracle: knows all" in printed and "VCMR" in printed
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {WHOLE, RANDOM, PRIOR, HEURISTIC}           # zero-shot: no head
    for entry in [result, *result["methods"].values()]:                           # (the JSON's keys are sorted)
        assert set(entry["svmr"]) == set(SVMR_KEYS) and set(entry["vcmr"]) == set(VCMR_KEYS)
    assert result["headline"] == HEURISTIC and result["oracle"] == oracle
    assert result["protocol"]["n_queries"] == 12 and result["protocol"]["n_videos"] == 4   # 4 test videos x 3
    assert result["random_weights"] is True and "RANDOM WEIGHTS" in result["WARNING"]
    whole = result["methods"][WHOLE]["svmr"]                 # a third of the video: IoU 1/3 for every query
    assert whole["R1@0.3"] == 100 and whole["R1@0.5"] == 0 and whole["mIoU"] == pytest.approx(100 / 3)
    markdown = out.with_suffix(".md").read_text()
    assert "RANDOM WEIGHTS" in markdown and "| method | R1@0.3 |" in markdown


def test_cli_three_runs_with_a_head(tvr_home, monkeypatch, capsys):
    import fusion.api

    _windowed_store(get_settings())
    real = fusion.api.load_model

    def with_head(run, **kwargs):
        loaded = real(run, **kwargs)
        loaded.moments = object()
        return loaded

    class Whole(FakePredictor):
        """Every video's whole length, scored by the query's cosine with the video's mean frame."""

        def __init__(self, loaded, dataset, video_ids, *, settings=None):
            known = {r.video_id: r.duration_s for r in read_manifest(settings.manifest_path(dataset)).records()}
            self.frames = FrameFeatures.load(settings.feature_dir(dataset, "clip_frames", loaded.extractor_ids[
                "clip_frames"]), video_ids, known)
            self.ids, self.durations = list(self.frames.ids), self.frames.durations

        def moments_each(self, query_clip, video_ids, n):
            return [[[(0.0, self.durations[v], float(self.frames.means[self.frames.ids.index(v)] @ q))]
                     for v in videos] for q, videos in zip(query_clip, video_ids)]

    monkeypatch.setattr(fusion.api, "load_model", with_head)
    monkeypatch.setattr(fusion.api, "MomentPredictor", Whole)
    out = tvr_home / "three.json"
    assert evaluate.main(["--task", "moments", "--run", "zero-shot", "--run", "zero-shot", "--run", "zero-shot",
                          "--dataset", "toy", "--json", str(out), "--random-draws", "2"]) == 0
    result = json.loads(out.read_text())
    head = result["methods"][HEAD]
    assert head["svmr"] == pytest.approx(result["methods"][WHOLE]["svmr"])      # the same moments in SVMR
    assert head["svmr_spread"]["R1@0.3"] == 0 and len(result["per_run"]) == 3
    assert "goal" in result and "goal (" in capsys.readouterr().out
    assert "2 draws" in result["protocol"]["random_span"]


def test_refusals(tvr_home, capsys):
    settings = get_settings()
    write_fake_dataset(settings, "plain", 10)
    assert evaluate.main(["--task", "moments", "--run", "zero-shot", "--dataset", "plain"]) == 2
    err = capsys.readouterr().err
    assert "has no caption windows" in err and err.count("\n") == 1
    for argv in (["--task", "moments", "--dataset", "plain"],
                 ["--task", "moments", "--run", "zero-shot", "--dataset", "plain", "--index-type", "flat"]):
        with pytest.raises(SystemExit) as done:
            evaluate.main(argv)
        assert done.value.code == 2
    assert "--index-type" in capsys.readouterr().err
    with pytest.raises(moments.MomentEvalError, match="no caption window in split 'nope'"):
        _windowed_store(settings, "win")
        moments.split_windows("win", "nope", settings)


def test_pipeline_report_has_the_moments_table(tmp_path):
    from pathlib import Path

    from retrieval.evaluation.pipeline_report import ReportRow, html_page, markdown_report

    result = combine([_run(30, 40), _run(34, 44), _run(32, 42)], ["r0", "r1", "r2"],
                     oracle={"all": {"svmr": {"R1@0.5": 92.5, "mIoU": 92.5}, "vcmr": {"R10@0.5": 100.0}}})
    result["protocol"].update(n_queries=4, n_queries_listed=4, n_videos=2, queries="q", ties="averaged", svmr="s",
                              vcmr="v", random_span="r", prior_window="p")
    row = ReportRow("M2HF", Path("run"), {"t2v": {}, "v2t": {}, "protocol": {
        "n_queries_t2v": 1, "n_videos": 1, "ties": "averaged", "v2t": "group-best"}})
    text = markdown_report("synthetic", [row], None, [], "M2HF", "curves.png", {}, True, {}, result)
    section = text[text.index("## Moments: toy, 3 runs"):]
    assert "RANDOM WEIGHTS" in section and "| trained head | 32.0 ± 4.0 | 9.0 ± 0.0 |" in section
    assert "| oracle: knows all | 92.5 | 92.5 |" in section and "goal (" in section
    assert html_page("synthetic", text).count("<table>") == 3                # the models, SVMR and VCMR


def test_paragraph_windows_are_encoded_by_the_text_tower(tvr_home, monkeypatch):
    """Windows that carry their own sentence (DiDeMo, ActivityNet): the run's text tower encodes it."""
    import fusion.api

    settings = get_settings()
    write_fake_dataset(settings, "para", 10, frames=(8, 16), captions_per_video=1)
    records = read_manifest(settings.manifest_path("para")).records()
    write_windows(windows_path("para", settings),
                  [CaptionWindow(r.video_id, s, s * r.duration_s / 2, (s + 1) * r.duration_s / 2,
                                 text=f"part {s} of {r.video_id}") for r in records for s in range(2)])
    seen = []

    class Encoder:
        def __init__(self, loaded, *, settings=None):
            pass

        def encode(self, texts):
            seen.extend(texts)
            clip = np.random.default_rng(len(seen)).normal(size=(len(texts), 512)).astype(np.float32)
            clip /= np.linalg.norm(clip, axis=1, keepdims=True)
            return fusion.api.EncodedQueries(clip, {}, clip)

    monkeypatch.setattr(fusion.api, "QueryEncoder", Encoder)
    loaded = fusion.api.load_model("zero-shot", dataset="para", settings=settings)
    result = moments.evaluate_moments(loaded, "para", settings=settings, draws=1)
    test_ids = [r.video_id for r in records if r.split == "test"]
    assert sorted(seen) == sorted(f"part {s} of {v}" for v in test_ids for s in range(2))
    assert result["protocol"]["n_queries"] == 2 * len(test_ids) and "text tower" in result["protocol"]["queries"]
    assert result["methods"][WHOLE]["svmr"]["R1@0.5"] == 100                 # half the video: IoU 0.5
