"""Moment retrieval metrics (data/moment_metrics.py) on hand-worked cases, a brute-force check of the
tie rule, and DiDeMo's published mIoU recomputed from the real excerpts (``conftest.FIXTURES``)."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from conftest import FIXTURES, requires_fixtures
from data import didemo
from data.moment_metrics import MomentError, consensus_iou, svmr_metrics, temporal_iou, vcmr_metrics
from data.windows import group_windows

A = np.array


def one(pred, gt, scores=None, **kw):
    """svmr_metrics for a single query."""
    pred = A(pred, dtype=float)
    return svmr_metrics([pred], [A(scores, dtype=float) if scores is not None else -np.arange(len(pred), dtype=float)],
                        [A(gt, dtype=float)], **kw)


def test_temporal_iou_hand_cases():
    pred = A([[0, 10], [0, 5], [0, 10], [10, 20], [12, 20], [3, 3], [8, 14]])
    gt = A([[0, 10], [0, 10], [5, 15], [0, 10], [0, 10], [0, 10], [5, 10]])
    assert temporal_iou(pred, gt) == pytest.approx([1, 0.5, 5 / 15, 0, 0, 0, 2 / 9])
    many = temporal_iou(A([[0, 10], [5, 15]]), A([[[0, 10], [0, 20]], [[0, 10], [0, 20]]]))
    assert many.shape == (2, 2) and many.ravel() == pytest.approx([1, 0.5, 1 / 3, 0.5])


def test_perfect_predictions_score_100_and_disjoint_ones_0():
    gts = [A([[0.0, 4.0]]), A([[2.5, 7.5]]), A([[10.0, 30.0]])]
    perfect = svmr_metrics([g.copy() for g in gts], [A([1.0])] * 3, gts)
    assert set(perfect) == {"R1@0.3", "R1@0.5", "R1@0.7", "R5@0.3", "R5@0.5", "R5@0.7", "mIoU"}
    assert all(v == 100.0 for v in perfect.values())
    disjoint = svmr_metrics([g + 100 for g in gts], [A([1.0])] * 3, gts)
    assert all(v == 0.0 for v in disjoint.values())
    vcmr = vcmr_metrics([g.copy() for g in gts], [["a"], ["b"], ["c"]], [A([1.0])] * 3, gts, ["a", "b", "c"])
    assert set(vcmr) == {f"R{k}@{t}" for k in (1, 10, 100) for t in (0.5, 0.7)} and set(vcmr.values()) == {100.0}


def test_iou_exactly_at_the_thresholds_counts():
    for end, hits in [(3, (1, 0, 0)), (5, (1, 1, 0)), (7, (1, 1, 1)), (2.99, (0, 0, 0)), (6.99, (1, 1, 0))]:
        got = one([[0, end]], [[0, 10]])
        assert (got["R1@0.3"], got["R1@0.5"], got["R1@0.7"]) == tuple(100.0 * h for h in hits), end
    # rounding in seconds arithmetic: these IoUs are 0.3, 0.5, 0.7 on paper, a hair below in floats
    for pred, gt, t in [([1.1, 1.4], [1.1, 2.1], 0.3), ([0.0, 0.1], [0.0, 0.2], 0.5), ([0.2, 2.3], [0.2, 3.2], 0.7)]:
        assert temporal_iou(A([pred]), A([gt]))[0] < t
        assert one([pred], [gt])[f"R1@{t}"] == 100.0


def test_a_window_past_the_video_end_is_counted_as_is():
    """Video of 10 s, truth [5, 10]: [8, 14] overlaps 2 s of a 9-s union (2/9), not the 2/5 of [8, 10]."""
    got = one([[8, 14]], [[5, 10]])
    assert got["mIoU"] == pytest.approx(100 * 2 / 9) and got["R1@0.3"] == 0.0
    assert one([[8, 10]], [[5, 10]])["R1@0.3"] == 100.0


def test_ranking_follows_scores_not_rows():
    got = one([[50, 60], [0, 10]], [[0, 10]], scores=[0.1, 0.9], ks=(1,))
    assert got == {"R1@0.3": 100.0, "R1@0.5": 100.0, "R1@0.7": 100.0, "mIoU": 100.0}
    got = one([[50, 60], [0, 10]], [[0, 10]], scores=[0.9, 0.1], ks=(1, 2))
    assert got["R1@0.5"] == 0.0 and got["R2@0.5"] == 100.0 and got["mIoU"] == 0.0


def test_ties_are_averaged():
    hit, miss = [0, 10], [50, 60]
    got = one([miss, hit], [[0, 10]], scores=[1, 1], ks=(1, 2))
    assert got["R1@0.5"] == 50.0 and got["R2@0.5"] == 100.0 and got["mIoU"] == 50.0
    got = one([miss, hit, miss], [[0, 10]], scores=[1, 1, 1], ks=(1, 2, 3))
    assert got["R1@0.5"] == pytest.approx(100 / 3) and got["R2@0.5"] == pytest.approx(200 / 3)
    assert got["R3@0.5"] == 100.0
    got = one([hit, miss, hit], [[0, 10]], scores=[1, 1, 1], ks=(1,))
    assert got["R1@0.5"] == pytest.approx(200 / 3)
    got = one([[0, 5], miss], [[0, 10]], scores=[2, 2], ks=(1,))          # IoU 0.5 and 0 tied at the top
    assert got["mIoU"] == pytest.approx(25.0)


def test_tie_rule_equals_enumerating_every_order():
    """R@k is the mean hit over all orders of the tied windows (uniform tie-breaking)."""
    rng = np.random.default_rng(0)
    for _ in range(40):
        n = int(rng.integers(1, 6))
        scores = rng.integers(0, 3, size=n).astype(float)
        hits = rng.random(n) < 0.4
        pred = np.where(hits[:, None], [[0.0, 10.0]], [[50.0, 60.0]])
        got = one(pred, [[0, 10]], scores=scores, ks=(1, 2, 3), ious=(0.5,))
        orders = [p for p in itertools.permutations(range(n))
                  if all(scores[a] >= scores[b] for a, b in zip(p, p[1:]))]
        for k in (1, 2, 3):
            expected = 100 * np.mean([hits[list(p[:k])].any() for p in orders])
            assert got[f"R{k}@0.5"] == pytest.approx(expected), (scores, hits, k)


def test_didemo_consensus_drops_the_annotator_who_disagrees_most():
    four = A([[0, 5], [0, 5], [0, 5], [20, 25]])
    assert one([[0, 5]], four)["mIoU"] == 100.0
    split = A([[0, 5], [0, 5], [20, 25], [20, 25]])
    got = one([[0, 5]], split)                                             # mean of (1, 1, 0)
    assert got["mIoU"] == pytest.approx(200 / 3) and got["R1@0.5"] == 100.0 and got["R1@0.7"] == 0.0
    assert consensus_iou(A([[0.2, 0.9]])) == pytest.approx([0.55])        # fewer than 3: all of them


def test_vcmr_needs_the_right_video_and_the_window():
    gt = [A([[0, 10]])]
    pred = [A([[0, 10], [0, 10], [40, 50], [0, 10]])]
    got = vcmr_metrics(pred, [["other", "v", "v", "v"]], [A([4.0, 3, 2, 1])], gt, ["v"], ks=(1, 2, 10))
    assert got["R1@0.5"] == 0.0 and got["R2@0.5"] == 100.0 and got["R10@0.7"] == 100.0
    tied = vcmr_metrics(pred, [["other", "v", "x", "y"]], [A([1.0, 1, 1, 1])], gt, ["v"], ks=(1, 4))
    assert tied["R1@0.5"] == 25.0 and tied["R4@0.5"] == 100.0
    none = vcmr_metrics(pred, [["a", "b", "c", "d"]], [A([1.0, 1, 1, 1])], gt, ["v"], ks=(100,))
    assert none == {"R100@0.5": 0.0, "R100@0.7": 0.0}


def test_queries_without_candidates_and_bad_input():
    assert one(np.zeros((0, 2)), [[0, 10]], scores=[]) == {k: 0.0 for k in one([[50, 60]], [[0, 10]])}
    bad = [(dict(predictions=[A([[0, 1]])], scores=[A([np.nan])], ground_truth=[A([[0, 1]])]), "finite"),
           (dict(predictions=[A([[2, 1]])], scores=[A([1.0])], ground_truth=[A([[0, 1]])]), "ends before"),
           (dict(predictions=[A([[0, 1]])], scores=[A([1.0])], ground_truth=[A([[1, 1]])]), "no length"),
           (dict(predictions=[A([[0, 1]])], scores=[A([1.0, 2.0])], ground_truth=[A([[0, 1]])]), "scores of shape"),
           (dict(predictions=[A([[0, 1]])], scores=[], ground_truth=[A([[0, 1]])]), "different lengths"),
           (dict(predictions=[A([[0, 1]])], scores=[A([1.0])], ground_truth=[A([[0, 1]])], ious=(0,)), "thresholds")]
    for kwargs, message in bad:
        with pytest.raises(MomentError, match=message):
            svmr_metrics(**kwargs)


@requires_fixtures
def test_didemo_miou_is_the_published_measure(tmp_path):
    """DiDeMo's own mIoU (chunk indices, inclusive ends, mean of the three largest annotator IoUs)
    of the moment-frequency prior equals ours on the windows the reader keeps, in seconds."""
    def chunk_iou(p, g):
        return max(0, min(p[1], g[1]) + 1 - max(p[0], g[0])) / (max(p[1], g[1]) + 1 - min(p[0], g[0]))

    moments = json.loads((FIXTURES / "annotations" / "didemo" / "test_data.json").read_text())
    counts = {}
    for m in json.loads((FIXTURES / "annotations" / "didemo" / "val_data.json").read_text()):
        for t in m["times"]:
            counts[tuple(t)] = counts.get(tuple(t), 0) + 1
    prior = max(counts, key=counts.get)
    official = np.mean([np.mean(np.sort([chunk_iou(prior, t) for t in m["times"]])[-3:]) for m in moments])
    truth = group_windows(w for w in didemo.read(FIXTURES / "annotations" / "didemo", tmp_path).windows
                          if w.video_id in {m["video"] for m in moments})
    guess = A([[5.0 * prior[0], 5.0 * (prior[1] + 1)]])
    ours = svmr_metrics([guess] * len(truth), [A([1.0])] * len(truth), list(truth.values()))
    assert len(truth) == len(moments) and ours["mIoU"] == pytest.approx(100 * official)
