"""The ``pipeline`` flow: generate -> extract -> train -> index -> evaluate -> report, on the
built-in synthetic dataset with random weights (the README's main command).

``python -m flows.pipeline [--n 300] [--seed 0] [--epochs N]`` runs it as a Prefect flow run (a
temporary local API starts when no server is configured) and prints where the report is:
``$TVR_HOME/runs/pipeline-synthetic/report.{md,html}``. A second run reuses the rendered videos,
the extracted features and finished training runs. The models trained are the rows of
``fusion/configs/ablation/pipeline.yaml`` (the five models plus the M2HF modality ablation).
The report is also published as the markdown artifact ``pipeline-synthetic`` of the flow run.

Moments: the flow then generates the synthetic-events set (``--events-n`` videos, default
:data:`EVENTS_N`, deterministic from the seed; 0 skips this stage), extracts it, trains M2HF with
its moment head (the rows' common settings) for :data:`MOMENT_SEEDS` seeds and puts their moments
table into the report: ``python -m retrieval.evaluate --task moments`` on those runs (baselines,
head, oracle ceilings), also written to ``evals/synthetic-events-test-moments-pipeline.{json,md}``.
A second run reuses these too.

Exit status: 0 when the report is written; its extraction step follows ``flows.extract``'s rule
(videos whose failure is already recorded are skipped, and only a systemic failure, every video
attempted failing in some modality with none of them a known failure, fails the run); 1 when the
flow run failed, the Prefect server of ``PREFECT_API_URL`` cannot be reached (checked before the
run starts) or ``TVR_HOME`` cannot be written (one line naming the path); 2 for bad input.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from data.cli import Exit, add_version, disk_fault, error, guarded
from data.prepare import prepare_synthetic
from data.synthetic.events import EVENTS_DATASET, prepare_events
from data.settings import get_settings
from data.synthetic import load_attributes
from flows.common import TIMEOUTS, artifact_key, unreachable_api
from flows.extract import extract
from fusion.ablation import attribute_match, read_rows
from fusion.config import CONFIG_DIR, merge
from fusion.train import train
from retrieval.evaluation.evaluate import evaluate_run
from retrieval.evaluation.moments_report import evaluate_runs, write_outputs
from retrieval.evaluation.pipeline_report import QueryHit, ReportRow, read_history, write_report
from retrieval.index.writer import build_from_model
from retrieval.query.search import search_text

DATASET = "synthetic"
ROWS_FILE = CONFIG_DIR / "ablation" / "pipeline.yaml"
N_QUERIES = 3
QUERY_MODEL = "M2HF full"  # the row whose index answers the example queries
EVENTS_N = 40              # synthetic-events videos of the moments stage (10 test videos)
MIN_EVENTS_N = 4           # the fewest with a train, a val and a test video
MOMENT_MODEL = "m2hf"      # the ranking model the moment head is trained with
MOMENT_SEEDS = 3           # moment runs (seeds seed, seed + 1, ...): the table's mean and spread


@task(name="prepare-synthetic")
def prepare_task(n: int, seed: int) -> str:
    path, report = prepare_synthetic(n=n, seed=seed)
    get_run_logger().info(f"manifest {path}: {report.summary()}")
    return str(path)


@task(name="prepare-synthetic-events")
def prepare_events_task(n: int, seed: int) -> str:
    path, report = prepare_events(n=n, seed=seed, progress=False)
    get_run_logger().info(f"manifest {path}: {report.summary()}")
    return str(path)


@task(name="train", retries=1)
def train_task(model: str, overrides: dict, seed: int, epochs: int | None, run_id: str,
               dataset: str = DATASET) -> str:
    return str(train(dataset, model, overrides=[overrides], seed=seed, epochs=epochs, run_id=run_id, quiet=True))


@task(name="index")
def index_task(run_dir: str) -> str:
    return str(build_from_model(DATASET, Path(run_dir).name))


@task(name="evaluate")
def evaluate_task(run_dir: str) -> dict:
    result, path, text = evaluate_run(Path(run_dir).name, DATASET)
    get_run_logger().info(f"{Path(run_dir).name}:\n{text}")
    return result


@task(name="evaluate-moments")
def moments_task(run_dirs: list[str]) -> dict:
    """``python -m retrieval.evaluate --task moments`` on the runs; also written to ``evals/``."""
    settings = get_settings()
    result = evaluate_runs([Path(r).name for r in run_dirs], EVENTS_DATASET, settings=settings)
    out = settings.root / "evals" / f"{EVENTS_DATASET}-test-moments-pipeline.json"
    get_run_logger().info(f"moments of {len(run_dirs)} runs:\n{write_outputs(result, out, out.with_suffix('.md'))}")
    return result


@task(name="report")
def report_task(rows: list[dict], seconds: dict[str, float], moments: dict | None) -> str:
    settings = get_settings()
    ann = settings.dataset_dir(DATASET) / "annotations.jsonl"
    attrs = load_attributes(ann)
    report_rows = [ReportRow(r["name"], Path(r["run_dir"]), r["evaluation"], read_history(Path(r["run_dir"])),
                             attribute_match(Path(r["run_dir"]), DATASET, settings, attrs)) for r in rows]
    shown = next(r for r in report_rows if r.name == QUERY_MODEL)
    queries = []
    for video_id, captions in _test_captions(settings)[:N_QUERIES]:
        found = search_text(captions[0], DATASET, shown.run_dir.name, k=4, settings=settings)
        queries.append(QueryHit(captions[0], video_id, [(h["video_id"], Path(h["abs_path"]), h["score"],
                                                         h["video_id"] == video_id) for h in found["results"]]))
    oracle_file = settings.dataset_dir(DATASET) / "oracle.json"
    oracle = json.loads(oracle_file.read_text()) if oracle_file.is_file() else None
    random_weights = any(r["evaluation"].get("random_weights") for r in rows)
    md, _html = write_report(settings.runs_dir / f"pipeline-{DATASET}", DATASET, report_rows, oracle=oracle,
                             queries=queries, query_model=QUERY_MODEL, random_weights=random_weights,
                             seconds=seconds, moments=moments)
    return str(md)


def run_id(index: int, model: str, overrides: dict, epochs: int | None, seed: int, dataset: str = DATASET) -> str:
    """Stable per configuration: a second run reuses the finished run, a changed row gets a new one."""
    digest = hashlib.sha256(json.dumps([model, overrides, epochs], sort_keys=True).encode()).hexdigest()[:6]
    return f"pipeline-{dataset}-row{index:02d}-{digest}-s{seed}"


def _test_captions(settings) -> list[tuple[str, list[str]]]:
    from data.manifest import read_manifest

    test = read_manifest(settings.manifest_path(DATASET)).split("test")
    return [(r.video_id, list(r.captions)) for r in test.records()]


@flow(name="pipeline", timeout_seconds=TIMEOUTS["pipeline"])
def pipeline_flow(n: int = 300, seed: int = 0, epochs: int | None = None, events_n: int = EVENTS_N) -> str:
    """Run every stage on the synthetic dataset; returns the path of ``report.md``."""
    logger = get_run_logger()
    seconds: dict[str, float] = {}
    t = time.time()
    prepare_task(n, seed)
    seconds["generate + manifest"] = time.time() - t
    t = time.time()
    extract(DATASET)
    seconds["extract (all modalities)"] = time.time() - t
    common, rows = read_rows(ROWS_FILE)
    done = []
    for i, row in enumerate(rows):
        t = time.time()
        overrides = merge(common, row.get("set", {})) if row["model"] != "zero-shot" else {}
        run_dir = train_task(row["model"], overrides, seed, epochs, run_id(i, row["model"], overrides, epochs, seed))
        seconds[f"train {row['name']}"] = time.time() - t
        t = time.time()
        index_task(run_dir)
        result = evaluate_task(run_dir)
        seconds[f"index + evaluate {row['name']}"] = time.time() - t
        logger.info(f"{row['name']}: test t2v R@1 {result['t2v']['R@1']:.1f}")
        done.append({"name": row["name"], "run_dir": run_dir, "evaluation": result})
    moments = _moments_stage(common, seed, epochs, events_n, seconds) if events_n else None
    t = time.time()
    report = report_task(done, seconds, moments)
    seconds["report"] = time.time() - t
    create_markdown_artifact(Path(report).read_text(), key=artifact_key("pipeline", DATASET),
                             description=f"pipeline report ({report})")
    logger.info(f"report: {report} (and report.html beside it)")
    return report


def _moments_stage(common: dict, seed: int, epochs: int | None, events_n: int, seconds: dict[str, float]) -> dict:
    """The synthetic-events set, its :data:`MOMENT_SEEDS` moment runs and their moments result."""
    t = time.time()
    prepare_events_task(events_n, seed)
    extract(EVENTS_DATASET)
    seconds[f"{EVENTS_DATASET}: generate + extract ({events_n} videos)"] = time.time() - t
    t = time.time()
    runs = [train_task(MOMENT_MODEL, common, s, epochs, run_id(0, MOMENT_MODEL, common, epochs, s, EVENTS_DATASET),
                       EVENTS_DATASET) for s in range(seed, seed + MOMENT_SEEDS)]
    seconds[f"{EVENTS_DATASET}: train {MOMENT_MODEL} + moment head, {MOMENT_SEEDS} seeds"] = time.time() - t
    t = time.time()
    moments = moments_task(runs)
    seconds[f"{EVENTS_DATASET}: evaluate moments"] = time.time() - t
    return moments


@guarded()
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.pipeline", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=300, help="synthetic videos (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the dataset and the training runs (default 0)")
    p.add_argument("--epochs", type=int, default=None, help="override the training epochs of every model")
    p.add_argument("--events-n", type=int, default=EVENTS_N,
                   help=f"synthetic-events videos of the moments stage (default {EVENTS_N}; 0: no moments stage)")
    add_version(p)
    args = p.parse_args(argv)
    get_settings()  # a bad TVR_* value: one line and exit 2 (guarded) before any flow run starts
    if args.events_n != 0 and args.events_n < MIN_EVENTS_N:
        return error(f"--events-n {args.events_n}: 0 (no moments step) or at least {MIN_EVENTS_N} videos "
                     f"(train, val and test splits)")
    unreachable = unreachable_api()
    if unreachable:
        return error(unreachable, Exit.FAILED)
    start = time.time()
    try:
        report = pipeline_flow(n=args.n, seed=args.seed, epochs=args.epochs, events_n=args.events_n)
    except Exception as err:  # noqa: BLE001 - the flow run's log (and Prefect) hold the traceback
        return error(disk_fault(err) or f"the pipeline flow run did not finish: {err.__class__.__name__}: {err}",
                     Exit.FAILED)
    print(f"\nreport: {report}\n        {Path(report).with_suffix('.html')}\n"
          f"pipeline finished in {time.time() - start:.0f} s")
    print(Path(report).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
