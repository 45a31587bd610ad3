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
