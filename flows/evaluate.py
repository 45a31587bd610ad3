"""The ``evaluate`` flow: :func:`retrieval.evaluate.evaluate_run` as a Prefect flow run.

Deployments ``evaluate/<dataset>`` evaluate ``run`` (default: the zero-shot model) on the
dataset's test split and write ``evaluation.json`` / ``evaluation.md`` into the run folder (or
``runs/zero-shot-<dataset>/``); the result is the JSON path. The numbers are those of
``python -m retrieval.evaluate --run RUN --dataset DATASET``.
"""
from __future__ import annotations

from prefect import flow, get_run_logger

from retrieval.evaluate import evaluate_run


@flow(name="evaluate")
def evaluate_flow(dataset: str = "synthetic", run: str = "zero-shot", split: str = "test",
                  v2t_protocol: str = "group-best") -> str:
    """Evaluate ``run`` on ``dataset``/``split``; returns the path of the JSON result."""
    _, path, text = evaluate_run(run, dataset, split, v2t_protocol=v2t_protocol)
    get_run_logger().info("\n" + text)
    return str(path)
