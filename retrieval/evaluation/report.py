"""Tables for evaluation results: console text and Markdown from the same rows (:func:`layout`,
shared with the moments tables of :mod:`.moments_report`), published reference rows
(docs/methods.md §6), and mean / spread over several runs."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from data.metrics import RANK_COLUMNS

COLUMNS_AFTER_RECALLS = RANK_COLUMNS + ("RSum",)   # table order: R@K ascending, then MdR, MnR, RSum


def columns(rows) -> list[str]:
    """The metric columns present in ``rows`` (metric dicts): R@K ascending, then MdR, MnR, RSum."""
    keys = {k for metrics in rows for k in metrics}
    recalls = sorted((k for k in keys if k.startswith("R@")), key=lambda k: int(k[2:]))
    return recalls + [k for k in COLUMNS_AFTER_RECALLS if k in keys]

# docs/methods.md §6: published text-to-video R@1 on MSR-VTT 1k-A (not measured here).
REFERENCE_ROWS = (
    ("CLIP4Clip seqTransf, ViT-B/32, fine-tuned", 44.5),
    ("CLIP4Clip seqTransf on frozen CLIP ViT-B/16", 42.1),
    ("HCMI on frozen CLIP ViT-B/16 (re-implementation)", 43.8),
    ("HCMI headline (with dual softmax)", 55.0),
    ("M2HF headline (backbone and tricks not stated)", 64.9),
)


def has_references(dataset: str | None) -> bool:
    """The §6 rows are MSR-VTT 1k-A numbers: shown for datasets named msrvtt*."""
    return bool(dataset) and dataset.lower().replace("-", "").replace("_", "").startswith("msrvtt")


def reference_rows() -> list[tuple[str, str, dict]]:
    return [(f"published: {name}", "t2v", {"R@1": r1}) for name, r1 in REFERENCE_ROWS]


def aggregate(results: Sequence[dict]) -> dict:
    """Mean and sample standard deviation of every metric over several results (runs / seeds)."""
    out = {"n": len(results)}
    for direction in ("t2v", "v2t"):
        names = columns([r[direction] for r in results])
        values = {m: [r[direction][m] for r in results if r[direction].get(m) is not None] for m in names}
        out[direction] = {m: float(np.mean(v)) if v else None for m, v in values.items()}
        out[direction + "_std"] = {m: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 if v else None
                                   for m, v in values.items()}
    return out


def cell(value, spread=None, digits: int = 1) -> str:
    """A table cell: ``value`` with ``digits`` decimals, ``± spread`` when given, ``-`` for None."""
    if value is None:
        return "-"
    text = f"{value:.{digits}f}"
    return f"{text} ± {spread:.{digits}f}" if spread is not None else text


def layout(header: Sequence[str], body: Sequence[Sequence[str]], *, markdown: bool, labels: int = 2) -> str:
    """``header`` and ``body`` (rows of cell strings) as a Markdown table, or as aligned console
    text with the first ``labels`` columns left-aligned and the rest right-aligned."""
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines) + "\n"
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i < labels else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in body]) + "\n"


def render(rows: Sequence[tuple[str, str, dict]], *, markdown: bool, spreads: dict | None = None) -> str:
    """``rows``: (label, direction label, metrics). ``spreads[(label, direction)]`` adds ± std."""
    names = columns([metrics for _, _, metrics in rows])
    body = []
    for label, direction, metrics in rows:
        spread = (spreads or {}).get((label, direction), {})
        body.append([label, direction] + [cell(metrics.get(m), spread.get(m), 2 if m in RANK_COLUMNS else 1)
                                          for m in names])
    return layout(["row", "direction", *names], body, markdown=markdown)
