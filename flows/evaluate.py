"""The ``evaluate`` flow: :func:`retrieval.evaluation.evaluate.evaluate_run` as a Prefect flow run.

Deployments ``evaluate/<dataset>`` evaluate ``run`` (default: the zero-shot model) on the
dataset's test split and write ``evaluation.json`` / ``evaluation.md`` into the run folder (or
``runs/zero-shot-<dataset>/``); the result is the JSON path. The numbers are those of
``python -m retrieval.evaluate --run RUN --dataset DATASET``. The R@K table (both directions,
the v2t protocol, the random-weights flag) is published as the table artifact
``evaluate-<dataset>-<run>``.
"""
from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from data.progress import Bars
from data.provenance import random_weights_label
from flows.common import TIMEOUTS, artifact_key, check_names, flow_logger
from retrieval.evaluation.evaluate import evaluate_run


def rk_rows(result: dict) -> list[dict]:
    """One row per direction (t2v, then v2t under each protocol evaluated) with every metric."""
    protocol = result["protocol"]
    by_protocol = result.get("v2t_by_protocol") or {protocol["v2t"]: result["v2t"]}
    flag = random_weights_label(detail=False) if result.get("random_weights") else "no"
    parts = [("t2v", "-", result["t2v"])] + [("v2t", p, m) for p, m in by_protocol.items()]
    return [{"direction": d, "v2t_protocol": p, **metrics, "ties": protocol.get("ties"),
             "random_weights": flag} for d, p, metrics in parts]


@flow(name="evaluate", timeout_seconds=TIMEOUTS["evaluate"])
def evaluate_flow(dataset: str = "synthetic", run: str = "zero-shot", split: str = "test",
                  v2t_protocol: str = "group-best") -> str:
    """Evaluate ``run`` on ``dataset``/``split``; returns the path of the JSON result."""
    check_names(dataset=dataset, run=run, split=split)
    logger = flow_logger("evaluate")
    with Bars(tty=False, log_fn=logger.info, interval_s=0) as bars:
        result, path, text = evaluate_run(run, dataset, split, v2t_protocol=v2t_protocol, progress=bars)
    logger.info("\n" + text)
    create_table_artifact(rk_rows(result), key=artifact_key("evaluate", dataset, run),
                          description=f"R@K of {run} on {dataset}/{split} ({result['protocol']['n_queries_t2v']} "
                                      f"text queries, {result['protocol']['n_videos']} videos); {path}")
    return str(path)
