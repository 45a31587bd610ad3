"""The pipeline's report: one Markdown and one HTML page from the runs the pipeline trained.

Content: the comparison table (test split, both directions, every metric, computed by
:func:`retrieval.evaluation.evaluate.evaluate_run` so it equals ``python -m retrieval.evaluate`` on
the same run), the per-attribute top-1 match (the modality ablation), the oracle ceilings of the synthetic
dataset, the moments table of the synthetic-events set (baselines, the trained head over several seeds and
the oracle, from :func:`retrieval.evaluation.moments_report.evaluate_runs`, so it equals ``python -m
retrieval.evaluate --task moments`` on the same runs), validation curves of every trained run, and a few
test captions with their top videos as thumbnails. Every page says RANDOM WEIGHTS when any feature came
from random weights.
"""
from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import av
from markdown_it import MarkdownIt
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from data.atomic import atomic_path, write_text_atomic  # noqa: E402
from data.metrics import METRIC_COLUMNS  # noqa: E402
from data.provenance import random_weights_label  # noqa: E402
from data.videofiles import FILE_ONLY, file_url  # noqa: E402
from fusion.ablation import ATTRIBUTES  # noqa: E402
from retrieval.evaluation import moments_report  # noqa: E402


@dataclass
class ReportRow:
    """One trained (or zero-shot) model in the report."""

    name: str
    run_dir: Path
    evaluation: dict                         # retrieval.evaluate result (t2v, v2t, protocol, ...)
    history: list[dict] = field(default_factory=list)
    attributes: dict[str, float] = field(default_factory=dict)


@dataclass
class QueryHit:
    """A test caption and its top videos: ``hits`` = [(video_id, path, score, correct)]."""

    caption: str
    true_video: str
    hits: list[tuple[str, Path, float, bool]]


def read_history(run_dir: Path) -> list[dict]:
    """Per-epoch entries of a run's ``log.jsonl`` (empty for the zero-shot model)."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def thumbnail(video: Path, out: Path, width: int = 160) -> Path | None:
    """PNG of the video's middle frame (None when it cannot be decoded)."""
    try:
        with av.open(file_url(video), options=FILE_ONLY) as container:
            stream = container.streams.video[0]
            frames = [f for f in container.decode(stream)]
        frame = frames[len(frames) // 2].reformat(width=width, height=int(width * stream.height / stream.width))
    except (av.FFmpegError, IndexError, OSError):
        return None
    with atomic_path(out) as tmp:
        frame.to_image().save(tmp, format="PNG")
    return out


def plot_curves(rows: list[ReportRow], out: Path) -> Path:
    """Validation text-to-video R@1 and training loss per epoch, one line per trained run."""
    fig, (ax_val, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    for row in rows:
        if not row.history:
            continue
        epochs = [h["epoch"] for h in row.history]
        ax_val.plot(epochs, [h.get("val_t2v_R@1", np.nan) for h in row.history], marker="o", label=row.name)
        ax_loss.plot(epochs, [h.get("loss", np.nan) for h in row.history], marker=".", label=row.name)
    ax_val.set(xlabel="epoch", ylabel="validation t2v R@1 (%)", title="model selection (validation split)")
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", title="training loss")
    ax_val.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _md(text) -> str:
    """``text`` (a caption, an id, a name) as literal Markdown text: punctuation backslash-escaped,
    ``& < >`` as entities, line breaks as spaces; the HTML page then shows it verbatim, never as markup."""
    text = re.sub(r"([\\`*_\[\]{}()#+\-.!|~])", r"\\\1", " ".join(str(text).splitlines()))
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _thumb_name(video_id: str) -> str:
    """A thumbnail file name that is safe whatever the id holds (``/``, ``..``)."""
    return f"thumbs/{hashlib.sha256(video_id.encode()).hexdigest()[:16]}.png"


def markdown_report(dataset: str, rows: list[ReportRow], oracle: dict | None, queries: list[QueryHit],
                    query_model: str, curves: str, thumbs: dict[str, str], random_weights: bool,
                    seconds: dict[str, float], moments: dict | None = None) -> str:
    """The report's Markdown; ``moments``: a :func:`retrieval.evaluation.moments_report.combine` result."""
    first = rows[0].evaluation
    protocol = first.get("protocol", {})
    lines = [f"# tvr pipeline report: {_md(dataset)}", ""]
    if random_weights:
        lines += [f"**{random_weights_label()}**", ""]
    listed = (f" (of {protocol['n_queries_listed']} / {protocol['n_videos_listed']} the split lists)"
              if "n_videos_listed" in protocol else "")
    lines += [f"Test split: {protocol['n_queries_t2v']} caption queries over {protocol['n_videos']} videos{listed}; "
              f"ties: {protocol['ties']}; video-to-text protocol: {protocol['v2t']}. Numbers are those of "
              f"python -m retrieval.evaluate --run RUN --dataset {_md(dataset)}.", "",
              "## Models", "", "| model | run | t2v " + " | t2v ".join(METRIC_COLUMNS) + " | v2t "
              + " | v2t ".join(METRIC_COLUMNS) + " |", "|" + "---|" * (2 + 2 * len(METRIC_COLUMNS))]
    for row in rows:
        t2v, v2t = row.evaluation["t2v"], row.evaluation["v2t"]
        lines.append(f"| {_md(row.name)} | {_md(row.run_dir.name)} | "
                     + " | ".join(_fmt(t2v.get(m)) for m in METRIC_COLUMNS)
                     + " | " + " | ".join(_fmt(v2t.get(m)) for m in METRIC_COLUMNS) + " |")
    if any(row.attributes for row in rows):
        lines += ["", "## What each modality adds: top-1 attribute match (%)", "",
                  "How often the top-ranked test video has the queried video's attribute (ties at the top share "
                  "credit). Colour/size/shape/texture are visual, motion needs the motion modality or frame order, "
                  "sound needs audio.", "",
                  "| model | " + " | ".join(ATTRIBUTES) + " |", "|---|" + "---|" * len(ATTRIBUTES)]
        for row in rows:
            if row.attributes:
                lines.append(f"| {_md(row.name)} | " + " | ".join(_fmt(row.attributes.get(a)) for a in ATTRIBUTES) + " |")
    if oracle:
        lines += ["", f"## Oracle ceilings ({oracle.get('n_test', '?')} test videos)", "",
                  "Text-to-video R@K of a model that knows exactly these attributes and nothing else.", "",
                  "| knows | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
        lines += [f"| {_md(name)} | {r['R@1']:.1f} | {r['R@5']:.1f} | {r['R@10']:.1f} |" for name, r in oracle["t2v"].items()]
    if moments:
        p = moments["protocol"]
        lines += ["", f"## Moments: {_md(p['dataset'])}, {len(moments['runs'])} runs", "",
                  f"Moment retrieval on the {_md(p['dataset'])} test split: python -m retrieval.evaluate --task "
                  f"moments --dataset {_md(p['dataset'])} with one --run per seed.", "",
                  moments_report.render(moments, markdown=True)]
    lines += ["", "## Training curves", "", f"![training curves]({curves})", ""]
    if queries:
        lines += ["## Example queries", "", f"Top videos from the index of {_md(query_model)}; "
                  "a check mark is the video the caption was written for.", ""]
        for q in queries:
            lines += [f"**\u201c{_md(q.caption)}\u201d** (for {_md(q.true_video)})", ""]
            cells = []
            for vid, _path, score, correct in q.hits:
                img = f"![{_md(vid)}]({thumbs[vid]})" if vid in thumbs else "(no thumbnail)"
                mark = " \u2714" if correct else ""
                cells.append(f"{img}<br>{_md(vid)} {score:.2f}{mark}")
            lines += ["| " + " | ".join(f"#{i + 1}" for i in range(len(cells))) + " |",
                      "|" + "---|" * len(cells), "| " + " | ".join(cells) + " |", ""]
    if seconds:
        lines += ["## Time per stage", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {_md(k)} | {v:.0f} |" for k, v in seconds.items()]
    return "\n".join(lines) + "\n"


def html_page(dataset: str, markdown: str) -> str:
    """The report's Markdown as one HTML page (the Markdown's own ``<br>`` kept; every caption, id
    and name in it was escaped by :func:`_md`)."""
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(dataset)} report</title>"
            "<style>body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head>"
            f"<body>{body}</body></html>")


def _inline_images(page: str, folder: Path) -> str:
    """Replace ``src="file.png"`` by data URIs so the HTML page is one self-contained file."""
    for png in sorted(folder.rglob("*.png")):
        rel = png.relative_to(folder).as_posix()
        data = base64.b64encode(png.read_bytes()).decode()
        page = page.replace(f'src="{rel}"', f'src="data:image/png;base64,{data}"')
    return page


def write_report(out_dir: Path, dataset: str, rows: list[ReportRow], *, oracle: dict | None,
                 queries: list[QueryHit], query_model: str, random_weights: bool,
                 seconds: dict[str, float], moments: dict | None = None) -> tuple[Path, Path]:
    """Write ``report.md``, ``report.html`` (self-contained), ``report.json`` and the PNGs; ``moments``:
    the moments result of the synthetic-events runs (its table, and ``moments`` in report.json)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    curves = plot_curves(rows, out_dir / "curves.png").name
    thumbs = {}
    for q in queries:
        for vid, path, _score, _ok in q.hits:
            if vid not in thumbs and thumbnail(path, out_dir / _thumb_name(vid)):
                thumbs[vid] = _thumb_name(vid)
    text = markdown_report(dataset, rows, oracle, queries, query_model, curves, thumbs, random_weights, seconds,
                           moments)
    md_path = out_dir / "report.md"
    write_text_atomic(md_path, text)
    html_path = out_dir / "report.html"
    write_text_atomic(html_path, _inline_images(html_page(dataset, text), out_dir))
    summary = {"dataset": dataset, "random_weights": random_weights, "seconds": seconds,
               "rows": [{"name": r.name, "run": r.run_dir.name, "t2v": r.evaluation["t2v"], "v2t": r.evaluation["v2t"],
                         "attributes": r.attributes} for r in rows]}
    if moments:
        summary["moments"] = {key: moments[key] for key in ("methods", "oracle", "goal", "protocol", "runs")
                              if key in moments}
    write_text_atomic(out_dir / "report.json", json.dumps(summary, indent=2) + "\n")
    return md_path, html_path
