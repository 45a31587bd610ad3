"""python -m retrieval.evaluate: the precomputed-matrix interface, model mode via a fake fusion.api,
FAISS vs exact, several runs, refusals."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from fake_fusion_api import FakeFusion, write_dataset
from retrieval.evaluation import evaluate
from data.metrics import KS

S = np.array([[0.9, 0.1, 0.2, 0.0], [0.5, 0.4, 0.2, 0.1], [0.2, 0.2, 0.2, 0.2],
              [0.5, 0.6, 0.7, 0.8], [0.1, 0.8, 0.6, 0.0], [0.6, 0.9, 0.5, 0.1]], np.float32)


@pytest.fixture
def matrix_files(tmp_path):
    np.save(tmp_path / "S.npy", S)
    (tmp_path / "Q.txt").write_text("A\nA\nA\nB\nC\nC\n")
    (tmp_path / "V.txt").write_text("A\nB\nC\nD\n")
    return tmp_path


def _args(folder, *extra):
    return ["--similarity", str(folder / "S.npy"), "--query-videos", str(folder / "Q.txt"),
            "--video-ids", str(folder / "V.txt"), *extra]


def test_help(capsys):
    with pytest.raises(SystemExit) as done:
        evaluate.main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    for option in ("--similarity", "--query-videos", "--video-ids", "--json", "--run", "--v2t-protocol",
                   "--dual-softmax", "--index-type", "ties averaged"):
        assert option in text.replace("\n", " ").replace("  ", " ")


def test_precomputed_matrix_stable_json(matrix_files, capsys):
    out = matrix_files / "OUT.json"
    assert evaluate.main(_args(matrix_files, "--json", str(out))) == 0
    result = json.loads(out.read_text())
    for direction in ("t2v", "v2t"):
        assert set(result[direction]) == {"R@1", "R@5", "R@10", "R@50", "RSum", "MdR", "MnR"}
    assert result["t2v"]["R@1"] == pytest.approx(37.5)          # hand-computed in test_metrics
    assert result["t2v"]["MdR"] == pytest.approx(2.25)
    assert result["v2t"]["MnR"] == pytest.approx(5 / 3)
    assert result["protocol"]["ties"] == "averaged" and result["protocol"]["v2t"] == "group-best"
    assert "reference" not in result and "dual_softmax" not in result
    printed = capsys.readouterr().out
    assert "ties: averaged" in printed and "v2t (group-best)" in printed and "published" not in printed
    assert "| t2v | 37.5 |" in (matrix_files / "OUT.md").read_text()


def test_protocol_dual_softmax_and_references(matrix_files, capsys):
    out = matrix_files / "OUT.json"
    assert evaluate.main(_args(matrix_files, "--json", str(out), "--dataset", "msrvtt-1k-a",
                               "--v2t-protocol", "all-captions", "--dual-softmax", "10")) == 0
    result = json.loads(out.read_text())
    assert result["protocol"]["v2t"] == "all-captions"
    assert result["v2t"]["MnR"] == pytest.approx(2.0)
    assert "dual softmax" in result["dual_softmax"]["protocol"]["post_processing"]
    assert result["protocol"]["post_processing"] == "none"          # the headline is untouched
    assert result["t2v"]["R@1"] == pytest.approx(37.5)
    assert [r["t2v"]["R@1"] for r in result["reference"]] == [44.5, 42.1, 43.8, 55.0, 64.9]
    printed = capsys.readouterr().out
    assert "dual softmax (transductive, not headline)" in printed
    assert "published: CLIP4Clip seqTransf, ViT-B/32, fine-tuned" in printed


def test_matrix_refusals(matrix_files, capsys):
    bad = S.copy()
    bad[3, 2] = np.nan
    np.save(matrix_files / "S.npy", bad)
    assert evaluate.main(_args(matrix_files)) == 2
    assert "row 3 (query), column 2 (video)" in capsys.readouterr().err
    (matrix_files / "Q.txt").write_text("A\nA\n\nB\nC\nC\n")
    assert evaluate.main(_args(matrix_files)) == 2
    assert "Q.txt, line 3: empty id" in capsys.readouterr().err
    (matrix_files / "Q.txt").write_text("A\nB\n")
    assert evaluate.main(_args(matrix_files)) == 2
    assert "shape (6, 4), but" in capsys.readouterr().err


def test_zero_shot_run_exact_and_through_faiss(tvr_home, monkeypatch, capsys):
    FakeFusion().install(monkeypatch)
    write_dataset("toy", 40)
    exact = tvr_home / "exact.json"
    assert evaluate.main(["--run", "zero-shot", "--dataset", "toy", "--json", str(exact),
                          "--v2t-protocol", "both"]) == 0
    printed = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in printed and "v2t (all-captions)" in printed
    result = json.loads(exact.read_text())
    assert result["random_weights"] is True and "RANDOM WEIGHTS" in result["WARNING"]
    assert result["protocol"]["n_queries_t2v"] == 79 and result["protocol"]["n_videos"] == 40
    assert 0 < result["t2v"]["R@1"] < 100                        # the noise makes it imperfect
    flat = tvr_home / "flat.json"
    assert evaluate.main(["--run", "zero-shot", "--dataset", "toy", "--json", str(flat),
                          "--index-type", "flat"]) == 0
    through = json.loads(flat.read_text())
    for k in KS:
        assert through["t2v"][f"R@{k}"] == pytest.approx(result["t2v"][f"R@{k}"])
    assert through["t2v"]["MdR"] is None and through["protocol"]["t2v_search"]["index_type"] == "flat"
    assert through["v2t"] == pytest.approx(result["v2t"])
    ivf = tvr_home / "ivf.json"                                  # a factory string, every list probed: exact
    assert evaluate.main(["--run", "zero-shot", "--dataset", "toy", "--json", str(ivf), "--index-type", "auto",
                          "--factory", "IVF2,Flat", "--nprobe", "2"]) == 0
    searched = json.loads(ivf.read_text())
    assert searched["protocol"]["t2v_search"]["params"]["nprobe"] == 2
    assert searched["protocol"]["t2v_search"]["params"]["factory"] == "IVF2,Flat"
    for k in KS:
        assert searched["t2v"][f"R@{k}"] == pytest.approx(result["t2v"][f"R@{k}"])
    capsys.readouterr()
    assert evaluate.main(["--run", "zero-shot", "--dataset", "toy", "--index-type", "auto", "--factory", "IVF,x"]) == 2
    assert "invalid FAISS index factory string 'IVF,x'" in capsys.readouterr().err


def test_fine_grained_reports_first_stage_recall(tvr_home, monkeypatch):
    fake = FakeFusion(fine_grained=True).install(monkeypatch)
    write_dataset("toy", 30)
    loaded = fake.load_model("zero-shot", dataset="toy")
    exact = evaluate.evaluate_model(loaded, "toy", "test")
    whole = evaluate.evaluate_model(loaded, "toy", "test", index_type="flat", rerank_depth=30)
    assert whole["protocol"]["t2v_search"]["first_stage_recall"] == pytest.approx(100.0)
    for k in KS:                          # every candidate re-ranked exactly = the exact ranking
        assert whole["t2v"][f"R@{k}"] == pytest.approx(exact["t2v"][f"R@{k}"])
    shallow = evaluate.evaluate_model(loaded, "toy", "test", index_type="flat", rerank_depth=2)
    split = fake.encode_split(loaded, "toy", "test")
    coarse = split.text_vectors @ split.video_vectors.T
    truth = np.array([split.video_ids.index(v) for v in split.query_video_ids])
    top2 = np.argsort(-coarse, axis=1)[:, :2]
    expected = 100 * np.mean([t in row for t, row in zip(truth, top2)])
    assert shallow["protocol"]["t2v_search"]["first_stage_recall"] == pytest.approx(expected)
    assert expected < 100
    assert shallow["t2v"]["R@5"] is None and shallow["t2v"]["R@10"] is None   # deeper than re-ranked
    assert shallow["t2v"]["R@1"] <= expected


def test_several_runs_mean_and_spread(tvr_home, monkeypatch, capsys):
    FakeFusion().install(monkeypatch)
    write_dataset("toy", 20)
    (tvr_home / "runs" / "run-a").mkdir(parents=True)
    out = tvr_home / "two.json"
    assert evaluate.main(["--run", "zero-shot", "--run", "run-a", "--dataset", "toy", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["per_run"]) == 2 and result["t2v_std"]["R@1"] == pytest.approx(0.0)
    assert result["t2v"]["R@1"] == pytest.approx(result["per_run"][0]["t2v"]["R@1"])
    assert "mean and sample std over 2 runs" in capsys.readouterr().out


def test_missing_run_refused(tvr_home, monkeypatch, capsys):
    FakeFusion().install(monkeypatch)
    write_dataset("toy", 5)
    assert evaluate.main(["--run", "no-such-run", "--dataset", "toy"]) == 2
    assert "no run 'no-such-run': not a folder, and not a run id under" in capsys.readouterr().err


def test_dimension_mismatch_refused(tvr_home, monkeypatch, capsys):
    fake = FakeFusion().install(monkeypatch)
    write_dataset("toy", 6)

    def mismatched(loaded, dataset, split, *, settings=None, captions="all"):
        split_data = fake.encode_split(loaded, dataset, split, settings=settings, captions=captions)
        split_data.video_vectors = split_data.video_vectors[:, :8]
        return split_data

    monkeypatch.setattr(sys.modules["fusion.api"], "encode_split", mismatched)
    assert evaluate.main(["--run", "zero-shot", "--dataset", "toy"]) == 2
    assert "dimension mismatch: text vectors have 16 dimensions, video vectors 8" in capsys.readouterr().err


def test_ks_choose_the_recall_columns_and_rsum_stays(matrix_files):
    out = matrix_files / "KS.json"
    assert evaluate.main(_args(matrix_files, "--ks", "2", "1", "--json", str(out))) == 0
    result = json.loads(out.read_text())
    assert set(result["t2v"]) == {"R@1", "R@2", "RSum", "MdR", "MnR"}
    assert "| R@1 | R@2 | MdR | MnR | RSum |" in (matrix_files / "KS.md").read_text()
    assert result["RSum"] == pytest.approx(result["t2v"]["RSum"] + result["v2t"]["RSum"])
