"""The ``train`` flow: one training run (:func:`fusion.train.train`) as a Prefect flow run.

Deployments ``train/<model>`` (prefect.yaml) call it with ``dataset`` and ``model``; the result
is the run folder's path (never an in-memory model).
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from fusion.train import train


@flow(name="train")
def train_flow(dataset: str = "synthetic", model: str = "meanP", seed: int = 0, epochs: int | None = None,
               config_file: str | None = None, overrides: list[str] | None = None,
               run_id: str | None = None) -> str:
    """Train ``model`` on ``dataset``'s stored features; returns the run folder."""
    folder = train(dataset, model, config_file=config_file, overrides=overrides or (), seed=seed,
                   epochs=epochs, run_id=run_id, quiet=True)
    get_run_logger().info(f"run folder: {folder}")
    return str(folder)
