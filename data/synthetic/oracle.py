"""The oracle ceilings of synthetic-av: the R@K that perfect knowledge of a subset of the attributes
(and nothing else) would reach on the test split, written as ``oracle.json`` / ``oracle.md``."""
from __future__ import annotations

import numpy as np

from data.synthetic.scenes import GROUPS

ORACLE_SUBSETS = {
    "colour only": ("colour",),
    "visual (shape, colour, size, texture)": GROUPS["visual"],
    "visual + motion": GROUPS["visual"] + GROUPS["motion"],
    "visual + sound": GROUPS["visual"] + GROUPS["sound"],
    "visual - shape + motion + sound": ("colour", "size", "texture", "motion", "sound"),
    "visual + motion + sound (all)": GROUPS["visual"] + GROUPS["motion"] + GROUPS["sound"],
}


def oracle_ceilings(attributes: list[dict], ks=(1, 5, 10)) -> dict[str, dict[str, float]]:
    """Expected text-to-video R@K (%) of a model that knows exactly the attributes of a subset.

    Every caption names all attributes, so a query for video i ties with every gallery video that
    matches i on the known subset; with ties broken uniformly at random, P(rank < K) = min(1, K/m)
    for m tied videos. Every caption of a video gives the same value, so the per-video mean is the
    per-caption mean up to caption counts (reported per video).
    """
    out = {}
    for name, keys in ORACLE_SUBSETS.items():
        sigs = [tuple(a[k] for k in keys) for a in attributes]
        counts: dict[tuple, int] = {}
        for s in sigs:
            counts[s] = counts.get(s, 0) + 1
        out[name] = {f"R@{k}": float(100 * np.mean([min(1.0, k / counts[s]) for s in sigs])) for k in ks}
    return out


def oracle_markdown(table: dict[str, dict[str, float]], n_test: int) -> str:
    lines = [f"# synthetic-av oracle ceilings (test split, {n_test} videos, text-to-video)", "",
             "Expected R@K (%) of a model that knows the listed attributes perfectly and nothing else; "
             "ties broken uniformly at random.", "", "| knows | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
    for name, row in table.items():
        lines.append(f"| {name} | {row['R@1']:.1f} | {row['R@5']:.1f} | {row['R@10']:.1f} |")
    return "\n".join(lines) + "\n"
