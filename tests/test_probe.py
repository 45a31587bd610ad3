"""bench.probe: the ridge probe reads a label that is in the vectors and not one that is not."""
from __future__ import annotations

import numpy as np
import pytest

from bench.probe import ridge_probe


def _videos(n, seed, informative):
    rng = np.random.default_rng(seed)
    labels = {f"v{i}": ("left", "right", "still")[i % 3] for i in range(n)}
    splits = {v: ("train", "train", "train", "val", "test")[i % 5] for i, v in enumerate(labels)}
    centres = {c: rng.normal(size=16) for c in ("left", "right", "still")}
    x = {}
    for v, c in labels.items():
        vec = rng.normal(size=16) * 0.3 + (centres[c] if informative else 0)
        x[v] = vec / np.linalg.norm(vec)
    return x, labels, splits


def test_probe_reads_an_encoded_label_and_not_noise():
    x, labels, splits = _videos(300, 0, informative=True)
    result = ridge_probe(x, labels, splits)
    assert result["test_accuracy"] > 95 and result["n"] == {"train": 180, "val": 60, "test": 60}
    x, labels, splits = _videos(300, 1, informative=False)
    result = ridge_probe(x, labels, splits)
    assert result["test_accuracy"] < 55 and result["chance"] == pytest.approx(100 / 3)
