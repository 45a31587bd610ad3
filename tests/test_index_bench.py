"""bench/index.py and bench/metrics.py run end to end on tiny sizes and label their data."""
from __future__ import annotations

import re

import numpy as np

from bench import index as bench_index
from bench import metrics as bench_metrics

ROW = re.compile(r"^\s*([\d,]+)\s+(flat|ivf|hnsw)\s.*\s([01]\.\d{3})$")


def _rows(text: str) -> list[tuple[str, str, float]]:
    return [(m.group(1), m.group(2), float(m.group(3))) for line in text.splitlines() if (m := ROW.match(line))]


def test_index_bench_generated_base_is_labelled(capsys):
    assert bench_index.main(["--sizes", "1500", "--queries", "40", "--bases", "60", "--dim", "32"]) == 0
    out = capsys.readouterr().out
    assert "GENERATED base vectors (NOT model embeddings)" in out
    rows = _rows(out)
    assert [r[1] for r in rows] == ["flat", "ivf", "hnsw"] and rows[0][2] == 1.0
    assert all(0.0 <= r[2] <= 1.0 for r in rows)


def test_index_bench_from_embeddings_file(tmp_path, capsys):
    base = np.random.default_rng(0).normal(size=(30, 24)).astype(np.float32)
    np.save(tmp_path / "base.npy", base)
    assert bench_index.main(["--sizes", "800", "--queries", "20", "--types", "flat,hnsw",
                             "--embeddings", str(tmp_path / "base.npy")]) == 0
    out = capsys.readouterr().out
    assert f"model embeddings from {tmp_path / 'base.npy'}; 30 x 24" in out
    assert [r[1] for r in _rows(out)] == ["flat", "hnsw"]


def test_metrics_bench_runs(capsys):
    assert bench_metrics.main(["--n", "300", "--dim", "16"]) == 0
    out = capsys.readouterr().out
    assert "300 x 300 (vectors" in out and "ties: averaged" in out


def test_index_bench_budget_mode_streams_and_reports(tmp_path, capsys):
    assert bench_index.main(["--sizes", "3000", "--queries", "30", "--held-out", "20", "--bases", "40",
                             "--dim", "32", "--memory-gb", "0.0002", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"IVF\d+,PQ\d+ \(ivfpq: estimated", out)            # the budget rules out flat / hnsw / ivf
    assert re.search(r"build [\d.]+ s wall .* peak RSS [\d.]+ GB; index\.faiss [\d.]+ GB", out)
    found = [float(r) for r in re.findall(r"recall@10 ([01]\.\d{3}) vs exact", out)]
    assert len(found) == 2 and all(r >= 0.9 for r in found)                 # 1 and 2 threads, tuned + re-ranked
    assert "tuned on 20 held-out queries" in out and list(tmp_path.iterdir()) == []


def test_perturber_stream_equals_its_batches():
    perturb = bench_index.Perturber(np.random.default_rng(0).normal(size=(10, 16)), 4, 0.25, 0.05, 0)
    blocks = list(perturb.stream(250, seed=3, batch=100))
    assert [len(b) for b in blocks] == [100, 100, 50]
    again = np.concatenate(list(perturb.stream(250, seed=3, batch=100)))
    assert np.array_equal(np.concatenate(blocks), again)
    assert np.allclose(np.linalg.norm(again, axis=1), 1.0, atol=1e-5)
