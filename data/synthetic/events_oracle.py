"""The moment oracle ceilings of synthetic-events: what a model that knows the boundaries and exactly a
subset of each segment's attributes (:data:`~data.synthetic.oracle.ORACLE_SUBSETS`) scores on the
moment metrics of the test split, written as ``oracle.json`` / ``oracle.md``.

Every caption is a query whose ground truth is its segment's window. The oracle proposes the true
segments and scores each 1 when it matches the query's segment on the known attributes, else 0, and
:mod:`data.moment_metrics` scores that ranking with ties broken uniformly at random (in expectation).
SVMR ranks the segments of the query's own video (a repeated segment ties with the original), VCMR
all segments of the test videos. Segments are disjoint, so with ``m`` matching segments the
expectation is R@K = min(1, K / m) at every IoU threshold and mIoU = 1 / m. Percent, mean over captions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data.moment_metrics import svmr_metrics, vcmr_metrics
from data.synthetic.oracle import ORACLE_SUBSETS


@dataclass(frozen=True)
class Moment:
    """One test segment as the oracle sees it: its window in seconds, its attributes and the number
    of captions (queries) that describe it."""

    start_s: float
    end_s: float
    attributes: dict
    n_captions: int


def moment_ceilings(videos: list[list[Moment]]) -> dict[str, dict[str, dict[str, float]]]:
    """``{knowledge subset: {"svmr": {"R1@0.3", ..., "mIoU"}, "vcmr": {"R1@0.5", ..., "R100@0.7"}}}``
    in percent, for the test ``videos`` (each its segments in time order)."""
    owner = np.array([v for v, moments in enumerate(videos) for _ in moments])            # [S] video index
    windows = np.array([[m.start_s, m.end_s] for moments in videos for m in moments], float).reshape(-1, 2)
    segment_of = np.repeat(np.arange(len(owner)), [m.n_captions for moments in videos for m in moments])  # [Q]
    own = [owner == owner[q] for q in segment_of]           # per query: [S] the segments of its video
    truth = [windows[q:q + 1] for q in segment_of]          # per query: [1, 2]
    out = {}
    for name, keys in ORACLE_SUBSETS.items():
        sigs = [tuple(m.attributes[k] for k in keys) for moments in videos for m in moments]
        scores = [np.array([s == sigs[q] for s in sigs], float) for q in segment_of]   # per query: [S]
        svmr = svmr_metrics([windows[o] for o in own], [sc[o] for sc, o in zip(scores, own)], truth)
        vcmr = vcmr_metrics([windows] * len(segment_of), [owner] * len(segment_of), scores, truth,
                            owner[segment_of].tolist())
        out[name] = {"svmr": svmr, "vcmr": vcmr}
    return out


def moment_markdown(table: dict[str, dict[str, dict[str, float]]], videos: list[list[Moment]]) -> str:
    """``oracle.md``: one row per knowledge subset (the thresholds agree, see the module doc)."""
    n_seg = sum(map(len, videos))
    n_q = sum(m.n_captions for v in videos for m in v)
    lines = [f"# synthetic-events oracle ceilings (test split: {len(videos)} videos, {n_seg} segments, "
             f"{n_q} caption queries)", "",
             "Expected moment metrics (%) of a model that knows the true segment boundaries and the listed "
             "attributes perfectly and nothing else; ties broken uniformly at random. Other segments never "
             "overlap the ground truth, so every IoU threshold gives the same value.", "",
             "| knows | SVMR R1@0.5 | SVMR R5@0.5 | SVMR mIoU | VCMR R1@0.5 | VCMR R10@0.5 | VCMR R100@0.5 |",
             "|---|---|---|---|---|---|---|"]
    for name, row in table.items():
        s, c = row["svmr"], row["vcmr"]
        lines.append(f"| {name} | {s['R1@0.5']:.1f} | {s['R5@0.5']:.1f} | {s['mIoU']:.1f} | {c['R1@0.5']:.1f} "
                     f"| {c['R10@0.5']:.1f} | {c['R100@0.5']:.1f} |")
    return "\n".join(lines) + "\n"
