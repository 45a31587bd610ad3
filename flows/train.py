"""The ``train`` flow: one training run (:func:`fusion.train.train`) as a Prefect flow run.

Deployments ``train/<model>`` (prefect.yaml) call it with ``dataset`` and ``model``; the result
is the run folder's path (never an in-memory model). While it trains, the table artifact
``train-<run-id>`` gains a row per epoch (mean loss, validation R@1, seconds; RANDOM WEIGHTS
flagged) and progress lines go to the run's log; at the end a link artifact points at the run's
``curves.png`` and ``report.md``.
"""
from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow
from prefect.artifacts import create_link_artifact, create_table_artifact

from data.progress import Bars
from data.provenance import random_weights_label
from flows.common import TIMEOUTS, artifact_key, check_names, flow_logger
from fusion.train import train

EPOCH_COLUMNS = ("epoch", "loss", "val_t2v_R@1", "val_v2t_R@1", "lr", "seconds")


def epoch_rows(history: list[dict]) -> list[dict]:
    """The artifact's rows: the figures of each epoch entry (``fusion.train`` log entries)."""
    rows = []
    for entry in history:
        row = {k: entry.get(k) for k in EPOCH_COLUMNS}
        row["random_weights"] = random_weights_label(detail=False) if entry.get("WARNING") else "no"
        rows.append(row)
    return rows


@flow(name="train", timeout_seconds=TIMEOUTS["train"])
def train_flow(dataset: str = "synthetic", model: str = "meanP", seed: int = 0, epochs: int | None = None,
               config_file: str | None = None, overrides: list[str] | None = None,
               run_id: str | None = None) -> str:
    """Train ``model`` on ``dataset``'s stored features; returns the run folder."""
    run_id = run_id or f"{dataset}-{model}-s{seed}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    check_names(dataset=dataset, run_id=run_id)
    logger = flow_logger("train")
    key = artifact_key("train", run_id)
    history: list[dict] = []

    def publish_epoch(entry: dict) -> None:
        history.append(entry)
        create_table_artifact(epoch_rows(history), key=key,
                              description=f"{model} on {dataset} ({run_id}): one row per epoch")

    with Bars(tty=False, log_fn=logger.info, interval_s=30) as bars:
        folder = train(dataset, model, config_file=config_file, overrides=overrides or (), seed=seed,
                       epochs=epochs, run_id=run_id, quiet=True, progress=bars, on_epoch=publish_epoch)
    create_link_artifact((folder / "curves.png").as_uri(), link_text=f"training curves of {run_id}",
                         key=artifact_key("curves", run_id),
                         description=f"curves.png (report: {folder / 'report.md'})")
    logger.info(f"run folder: {folder}")
    return str(folder)
