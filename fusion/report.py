"""A run's plots (``curves.png``) and ``report.md``, from its log and metrics."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from data.atomic import atomic_path, write_text_atomic  # noqa: E402
from data.metrics import METRIC_COLUMNS  # noqa: E402
from data.provenance import random_weights_label  # noqa: E402


def plot_curves(path: Path, history: list[dict], title: str) -> None:
    """Loss parts per epoch (left) and validation R@1 per epoch (right)."""
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h if k.startswith("loss")}):
        ax_loss.plot(epochs, [h.get(key, float("nan")) for h in history], marker="o", label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("mean training loss")
    if history:
        ax_loss.legend(fontsize=7)
    for key, label in (("val_t2v_R@1", "text-to-video"), ("val_v2t_R@1", "video-to-text")):
        ax_val.plot(epochs, [_num(h.get(key)) for h in history], marker="o", label=label)
    ax_val.set_xlabel("epoch")
    ax_val.set_ylabel("validation R@1 (%)")
    ax_val.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _row(name: str, m: dict) -> str:
    return f"| {name} | " + " | ".join(f"{_num(m.get(k)):.1f}" for k in METRIC_COLUMNS) + " |"


def write_report(folder: Path, meta: dict, history: list[dict], metrics: dict) -> None:
    warning = meta.get("WARNING")
    title = f"{meta['run_id']}: {meta['model']} on {meta['dataset']}"
    if warning:
        title += f" — {random_weights_label(detail=False)}"
    plot_curves(folder / "curves.png", history, title)
    test = metrics["test"]
    lines = [f"# {title}", ""]
    if warning:
        lines += [f"**{warning}**", ""]
    lines += [f"- model `{meta['model']}`, seed {meta['seed']}, device {meta['device']}",
              "- extractor-ids: " + ", ".join(f"{k}={v}" for k, v in meta["extractor_ids"].items()),
              f"- best epoch {metrics['best_epoch']} (selected on {metrics['selected_on']})",
              f"- test: {test['n_queries']} of {test.get('n_queries_listed', '?')} listed queries over "
              f"{test['n_videos']} of {test.get('n_videos_listed', '?')} listed videos (videos without usable "
              f"features are left out); {test['ties']}; {test['v2t_protocol']}",
              "", "| test | " + " | ".join(METRIC_COLUMNS) + " |", "|---" * (len(METRIC_COLUMNS) + 1) + "|",
              _row("text-to-video", test["t2v"]), _row("video-to-text", test["v2t"]), "",
              "![curves](curves.png)", ""]
    if history:
        lines += ["| epoch | loss | val t2v R@1 |", "|---|---|---|"]
        lines += [f"| {h['epoch']} | {_num(h.get('loss')):.4f} | {_num(h['val_t2v_R@1']):.1f} |" for h in history]
    write_text_atomic(folder / "report.md", "\n".join(lines) + "\n")
