"""Hand-computed cases for data.metrics, plus independent brute-force and CE-style checks."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from data.metrics import (DualSoftmaxScores, MatrixScores, RankCounts, ScoreError,
                               VectorScores, evaluate_scores)

# Videos A, B, C have 3, 1 and 2 captions (uneven); D has none (a distractor).
VIDEOS = ["A", "B", "C", "D"]
QUERIES = ["A", "A", "A", "B", "C", "C"]
S = np.array([
    #  A    B    C    D
    [0.9, 0.1, 0.2, 0.0],   # q0 (A) rank 1
    [0.5, 0.4, 0.2, 0.1],   # q1 (A) rank 1
    [0.2, 0.2, 0.2, 0.2],   # q2 (A) tied with 3 others: rank 1 + 3/2 = 2.5
    [0.5, 0.6, 0.7, 0.8],   # q3 (B) two better: rank 3
    [0.1, 0.8, 0.6, 0.0],   # q4 (C) one better: rank 2
    [0.6, 0.9, 0.5, 0.1],   # q5 (C) two better: rank 3
], dtype=np.float32)


def test_text_to_video_hand_computed_uneven_captions_and_ties():
    out = evaluate_scores(S, QUERIES, VIDEOS, ks=(1, 2, 3, 5))["t2v"]
    # ranks [1, 1, 2.5, 3, 2, 3]; even count: median of sorted [1,1,2,2.5,3,3] = (2 + 2.5) / 2
    assert out["MdR"] == pytest.approx(2.25)
    assert out["MnR"] == pytest.approx(12.5 / 6)
    # q2 ties with 3 wrong videos: P(hit@1) = 1/4, P(hit@2) = 2/4, P(hit@3) = 3/4
    assert out["R@1"] == pytest.approx(100 * (1 + 1 + 0.25) / 6)
    assert out["R@2"] == pytest.approx(100 * (1 + 1 + 0.5 + 0 + 1 + 0) / 6)
    assert out["R@3"] == pytest.approx(100 * (1 + 1 + 0.75 + 1 + 1 + 1) / 6)
    assert out["R@5"] == pytest.approx(100.0)


def test_video_to_text_both_protocols_hand_computed():
    out = evaluate_scores(S, QUERIES, VIDEOS, ks=(1, 2, 3),
                          v2t_protocols=("group-best", "all-captions"))
    # group-best: column A groups (0.9, 0.5, 0.6) -> 1; B groups (0.4, 0.6, 0.9) -> 2;
    # C groups (0.2, 0.7, 0.6) -> 2.  D has no captions: not a query.
    best = out["v2t_by_protocol"]["group-best"]
    assert best == pytest.approx({"R@1": 100 / 3, "R@2": 100.0, "R@3": 100.0, "MdR": 2.0, "MnR": 5 / 3,
                                  "RSum": 100 / 3 + 200})       # RSum = R@1 + R@5 + R@10 whatever ks are
    # all-captions: column B has two captions of C (0.8, 0.9) above its own (0.6) -> 3.
    every = out["v2t_by_protocol"]["all-captions"]
    assert every == pytest.approx({"R@1": 100 / 3, "R@2": 200 / 3, "R@3": 100.0, "MdR": 2.0, "MnR": 2.0,
                                   "RSum": 100 / 3 + 200})
    assert out["v2t"] == best
    assert out["protocol"]["v2t"] == "group-best"
    assert out["protocol"]["ties"] == "averaged"
    assert out["protocol"]["n_queries_v2t"] == 3 and out["protocol"]["n_queries_t2v"] == 6


def test_tie_with_ground_truth_after_strictly_better():
    # g = 1 strictly better, w = 3 tied wrong: rank 1 + 1 + 3/2; R@K = (K - 1) / 4
    row = np.array([[0.9, 0.5, 0.5, 0.5, 0.5, 0.1]])
    out = evaluate_scores(row, ["v1"], [f"v{i}" for i in range(6)], ks=(1, 2, 3, 5))["t2v"]
    assert out == pytest.approx({"R@1": 0.0, "R@2": 25.0, "R@3": 50.0, "R@5": 100.0, "MdR": 3.5, "MnR": 3.5,
                                 "RSum": 200.0})


def test_constant_scores_give_exactly_chance():
    n = 20
    out = evaluate_scores(np.zeros((n, n)), [str(i) for i in range(n)], [str(i) for i in range(n)],
                          v2t_protocols=("group-best", "all-captions"))
    chance = {"R@1": 5.0, "R@5": 25.0, "R@10": 50.0, "R@50": 100.0, "MdR": 10.5, "MnR": 10.5, "RSum": 80.0}
    assert out["t2v"] == pytest.approx(chance)
    for protocol in ("group-best", "all-captions"):
        assert out["v2t_by_protocol"][protocol] == pytest.approx(chance)


def test_tied_correct_captions_all_captions_protocol():
    # c = 2 correct and w = 2 wrong captions all tied at the top.
    counts = RankCounts(np.array([0]), np.array([2]), np.array([2]))
    assert counts.ranks()[0] == pytest.approx(1 + 2 / 3)
    assert counts.hit_rate(1)[0] == pytest.approx(1 - 2 / 4)      # 1 - C(2,1)/C(4,1)
    assert counts.hit_rate(2)[0] == pytest.approx(1 - 1 / 6)      # 1 - C(2,2)/C(4,2)
    assert counts.hit_rate(3)[0] == pytest.approx(1.0)


def _brute_force(scores: np.ndarray, correct: list[set[int]], ks) -> dict:
    """Expected first-correct position over every tie-breaking order (exact enumeration)."""
    ranks, hits = [], {k: [] for k in set(ks) | {1, 5, 10}}
    for row, good in zip(scores, correct):
        positions = []
        for perm in itertools.permutations(range(len(row))):
            order = np.lexsort((np.array(perm), -row))
            positions.append(1 + min(int(np.flatnonzero(order == g)[0]) for g in good))
        positions = np.array(positions)
        ranks.append(positions.mean())
        for k in hits:
            hits[k].append((positions <= k).mean())
    out = {f"R@{k}": 100 * float(np.mean(hits[k])) for k in ks}
    out.update(MdR=float(np.median(ranks)), MnR=float(np.mean(ranks)),
               RSum=sum(100 * float(np.mean(hits[k])) for k in (1, 5, 10)))
    return out


def test_matches_brute_force_tie_enumeration():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(6, 4)).astype(np.float32)  # many ties
    ks = (1, 2, 3)
    out = evaluate_scores(scores, QUERIES, VIDEOS, ks=ks, v2t_protocols=("group-best", "all-captions"))
    cols = [VIDEOS.index(v) for v in QUERIES]
    assert out["t2v"] == pytest.approx(_brute_force(scores, [{c} for c in cols], ks))
    captioned = sorted(set(cols))
    caps = [{q for q, c in enumerate(cols) if c == v} for v in captioned]
    assert out["v2t_by_protocol"]["all-captions"] == pytest.approx(_brute_force(scores.T[captioned], caps, ks))
    groups = np.stack([scores[sorted(g)].max(axis=0) for g in caps])           # [G, V]
    assert out["v2t_by_protocol"]["group-best"] == pytest.approx(
        _brute_force(groups.T[captioned], [{i} for i in range(len(captioned))], ks))


def test_agrees_with_collaborative_experts_convention_without_ties():
    rng = np.random.default_rng(1)
    videos = [f"v{i}" for i in range(30)]
    queries = [videos[i] for i in rng.integers(0, 25, size=70)]   # uneven counts, 5+ distractors
    scores = rng.normal(size=(70, 30)).astype(np.float32)
    out = evaluate_scores(scores, queries, videos, v2t_protocols=("all-captions",))
    cols = np.array([videos.index(v) for v in queries])
    t2v_ranks = np.array([int(np.flatnonzero(np.argsort(-r) == c)[0]) for r, c in zip(scores, cols)])
    v2t_ranks = np.array([min(int(np.flatnonzero(np.argsort(-scores[:, v]) == q)[0])
                              for q in np.flatnonzero(cols == v)) for v in sorted(set(cols))])
    for got, ranks in ((out["t2v"], t2v_ranks), (out["v2t"], v2t_ranks)):   # CE: 0-based ranks
        assert got["MdR"] == pytest.approx(np.median(ranks) + 1)
        assert got["MnR"] == pytest.approx(ranks.mean() + 1)
        for k in (1, 5, 10):
            assert got[f"R@{k}"] == pytest.approx(100 * np.mean(ranks < k))


def test_chunking_and_vector_source_give_identical_results():
    rng = np.random.default_rng(2)
    text = rng.normal(size=(40, 8)).astype(np.float32)
    video = rng.normal(size=(25, 8)).astype(np.float32)
    queries = [f"v{i % 20}" for i in range(40)]
    videos = [f"v{i}" for i in range(25)]
    kwargs = dict(v2t_protocols=("group-best", "all-captions"))
    full = evaluate_scores(text @ video.T, queries, videos, **kwargs)
    tiny = evaluate_scores(VectorScores(text, video), queries, videos, chunk_bytes=1, **kwargs)
    assert tiny["t2v"] == pytest.approx(full["t2v"])
    for protocol in ("group-best", "all-captions"):
        assert tiny["v2t_by_protocol"][protocol] == pytest.approx(full["v2t_by_protocol"][protocol])
    assert tiny["protocol"] == full["protocol"]


def test_nan_and_inf_rejected_with_location():
    bad = S.copy()
    bad[2, 1] = np.nan
    with pytest.raises(ScoreError, match=r"row 2 .*column 1"):
        evaluate_scores(bad, QUERIES, VIDEOS)
    bad = S.copy()
    bad[4, 3] = np.inf
    with pytest.raises(ScoreError, match=r"row 4 .*column 3"):
        evaluate_scores(bad, QUERIES, VIDEOS, chunk_bytes=1)


def test_bad_ids_and_shapes_rejected():
    with pytest.raises(ScoreError, match=r"query row 1 describes video 'Z'"):
        evaluate_scores(S[:2], ["A", "Z"], VIDEOS)
    with pytest.raises(ScoreError, match=r"'A' appears twice"):
        evaluate_scores(S, QUERIES, ["A", "B", "C", "A"])
    with pytest.raises(ScoreError, match=r"\[6 x 4\].*5 query ids"):
        evaluate_scores(S, QUERIES[:5], VIDEOS)
    with pytest.raises(ScoreError, match="unknown video-to-text protocol"):
        evaluate_scores(S, QUERIES, VIDEOS, v2t_protocols=("best",))


def test_dual_softmax_hand_computed():
    base = np.array([[1.0, 0.0], [0.0, 1.0]])
    e = np.e / (np.e + 1)
    dual = DualSoftmaxScores(MatrixScores(base), temperature=1.0)
    assert dual.rows(0, 2) == pytest.approx(np.array([[e, 0.0], [0.0, e]]))
    assert dual.cols(np.array([1])) == pytest.approx(np.array([[0.0, e]]))  # transposed chunk
