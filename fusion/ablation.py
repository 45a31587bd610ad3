"""The synthetic ablation: every model and ablation switch, several seeds, one table.

``python -m fusion.ablation --dataset synthetic --seeds 0 1 2 [--rows FILE] [--workers 2]``

Trains every row of ``fusion/configs/ablation/synthetic.yaml`` (or ``--rows``) for each seed,
then writes ``runs/ablation-<dataset>/ablation.md`` and ``ablation.json``: mean and spread (sample
standard deviation over seeds) of test R@1/5/10/50 in both directions and RSum, and the per-attribute top-1
match (how often the top-ranked video has the queried video's colour / size / motion / sound,
from the dataset's ``annotations.jsonl``), beside the dataset's oracle ceilings (``oracle.json``)
and chance. Runs already finished are reused (a killed ablation resumes).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from data.atomic import write_json_atomic, write_text_atomic
from data.cli import add_version, guarded
from data.metrics import RECALL_COLUMNS
from data.provenance import random_weights_label
from data.settings import Settings, get_settings
from data.synthetic import load_attributes
from fusion.config import CONFIG_DIR, merge
from fusion.registry import model_entry

ATTRIBUTES = ("colour", "size", "shape", "texture", "motion", "sound")
DEFAULT_ROWS = CONFIG_DIR / "ablation" / "synthetic.yaml"


def read_rows(path: Path) -> tuple[dict, list[dict]]:
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(spec, dict) or not isinstance(spec.get("rows"), list):
        raise ValueError(f"{path}: expected a mapping with a 'rows' list")
    for i, row in enumerate(spec["rows"]):
        if not isinstance(row, dict) or "name" not in row or "model" not in row:
            raise ValueError(f"{path}: row {i} needs 'name' and 'model'")
    return spec.get("common", {}), spec["rows"]


def run_id(dataset: str, index: int, seed: int) -> str:
    return f"ablation-{dataset}-row{index:02d}-s{seed}"


def _train_one(job: tuple) -> str:
    import torch

    from fusion.train import train

    dataset, model, overrides, seed, rid, root = job
    torch.set_num_threads(1)
    folder = train(dataset, model, overrides=[overrides], seed=seed, run_id=rid, settings=get_settings(root), quiet=True)
    return str(folder)


def attribute_match(run_dir: Path, dataset: str, settings: Settings, attrs: dict[str, dict]) -> dict[str, float]:
    """% of test queries whose top-ranked video shares the attribute (ties at the top share credit)."""
    from fusion.api import encode_split, load_model

    enc = encode_split(load_model(run_dir, settings=settings), dataset, "test", settings=settings)
    sim = enc.similarity()
    top = sim >= sim.max(1, keepdims=True)
    out = {}
    for a in ATTRIBUTES:
        video_vals = np.asarray([attrs[v][a] for v in enc.video_ids], object)
        query_vals = np.asarray([attrs[v][a] for v in enc.query_video_ids], object)
        same = video_vals[None, :] == query_vals[:, None]
        out[a] = float(100 * np.mean((top & same).sum(1) / top.sum(1)))
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    arr = np.asarray(values, float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarise(dataset: str, rows: list[tuple[int, dict]], seeds: list[int], settings: Settings) -> dict:
    """``rows`` are (index in the rows file, row): the index names the runs."""
    folder = settings.dataset_dir(dataset)
    attrs = load_attributes(folder / "annotations.jsonl")
    oracle = json.loads((folder / "oracle.json").read_text()) if (folder / "oracle.json").is_file() else None
    table = []
    random_weights = False
    n_test, counts = None, {}
    protocols: set[tuple[str, str]] = set()
    for i, row in rows:
        per_seed = []
        for seed in seeds:
            rdir = settings.runs_dir / run_id(dataset, i, seed)
            m = json.loads((rdir / "metrics.json").read_text())
            random_weights |= bool(m["random_weights"])
            n_test = m["test"]["n_videos"]
            counts = {k: m["test"].get(k) for k in ("n_videos", "n_videos_listed", "n_queries", "n_queries_listed")}
            protocols.add((m["test"]["ties"], m["test"]["v2t_protocol"]))
            per_seed.append({**{f"t2v {k}": m["test"]["t2v"][k] for k in RECALL_COLUMNS if k in m["test"]["t2v"]},
                             **{f"v2t {k}": m["test"]["v2t"][k] for k in RECALL_COLUMNS if k in m["test"]["v2t"]},
                             **({"RSum": m["test"]["RSum"]} if "RSum" in m["test"] else {}),
                             **{f"match {a}": v for a, v in attribute_match(rdir, dataset, settings, attrs).items()}})
        stats = {k: _mean_sd([s[k] for s in per_seed]) for k in per_seed[0]}
        table.append({"name": row["name"], "model": row["model"], "set": row.get("set", {}), "stats": stats,
                      "per_seed": per_seed})
    if len(protocols) > 1:
        raise ValueError(f"the runs of this ablation were scored under different protocols: {sorted(protocols)}")
    ties, v2t = protocols.pop() if protocols else ("", "")
    return {"dataset": dataset, "seeds": seeds, "rows": table, "oracle": oracle, "n_test_videos": n_test,
            "ties": ties, "v2t_protocol": v2t, "test_counts": counts,
            "chance_R@1": 100.0 / n_test if n_test else None, "random_weights": random_weights}


def markdown(summary: dict) -> str:
    rw = summary["random_weights"]
    lines = [f"# Ablation on {summary['dataset']} (seeds {summary['seeds']}; mean ± sd over seeds)", ""]
    if rw:
        lines += [f"**{random_weights_label()}**", ""]
    c = summary.get("test_counts") or {}
    listed = (f" ({c['n_queries']} of {c['n_queries_listed']} listed queries, {c['n_videos']} of "
              f"{c['n_videos_listed']} listed videos)" if c.get("n_videos_listed") is not None else "")
    lines += [f"Test split: {summary['n_test_videos']} videos, every caption a query{listed}; chance R@1 = "
              f"{summary['chance_R@1']:.1f}. {summary['ties']} (expected value under random tie-breaking). "
              f"{summary['v2t_protocol']} (the protocol the runs computed). Attribute match: % of "
              "queries whose top-ranked video has the queried attribute.", ""]
    keys = [k for k in (*(f"t2v {r}" for r in RECALL_COLUMNS), *(f"v2t {r}" for r in RECALL_COLUMNS), "RSum")
            if k in summary["rows"][0]["stats"]]
    match = [f"match {a}" for a in ("colour", "size", "motion", "sound")]
    lines += ["| row | " + " | ".join(keys + [m.replace("match ", "") for m in match]) + " |",
              "|---" * (1 + len(keys) + len(match)) + "|"]
    for row in summary["rows"]:
        cells = [f"{row['stats'][k][0]:.1f} ± {row['stats'][k][1]:.1f}" for k in keys + match]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    if summary["oracle"]:
        lines += ["", "Oracle ceilings (text-to-video, a model knowing exactly these attributes):", "",
                  "| knows | R@1 | R@5 | R@10 |", "|---|---|---|---|"]
        for name, r in summary["oracle"]["t2v"].items():
            lines.append(f"| {name} | {r['R@1']:.1f} | {r['R@5']:.1f} | {r['R@10']:.1f} |")
    return "\n".join(lines) + "\n"


def run_ablation(dataset: str, seeds: list[int], rows_file: Path = DEFAULT_ROWS, workers: int = 2,
                 settings: Settings | None = None, only: list[int] | None = None) -> Path:
    settings = settings or get_settings()
    common, rows = read_rows(rows_file)
    chosen = [(i, r) for i, r in enumerate(rows) if only is None or i in only]
    jobs = []
    for i, row in chosen:
        overrides = merge(common, row.get("set", {})) if model_entry(row["model"]).trained else {}
        for seed in seeds:
            rid = run_id(dataset, i, seed)
            if not (settings.runs_dir / rid / "metrics.json").is_file():
                jobs.append((dataset, row["model"], overrides, seed, rid, str(settings.root)))
    start = time.time()
    # spawn, not fork: forking a process that already runs torch's thread pools can deadlock the child
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, folder in enumerate(pool.map(_train_one, jobs), 1):
            print(f"  [{done}/{len(jobs)}] {Path(folder).name} ({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    summary = summarise(dataset, chosen, seeds, settings)
    summary["seconds_training"] = round(time.time() - start, 1)
    out = settings.runs_dir / f"ablation-{dataset}"
    write_json_atomic(out / "ablation.json", summary)
    write_text_atomic(out / "ablation.md", markdown(summary))
    return out


@guarded(FileNotFoundError, ValueError)
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fusion.ablation", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="synthetic", help="dataset with annotations.jsonl (default synthetic)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rows", type=Path, default=DEFAULT_ROWS, help="YAML list of rows (default: the synthetic ablation)")
    p.add_argument("--only", type=int, nargs="+", help="row indices to run (default: all)")
    p.add_argument("--workers", type=int, default=2, help="training processes in parallel, 1 thread each")
    add_version(p)
    args = p.parse_args(argv)
    out = run_ablation(args.dataset, args.seeds, args.rows, args.workers, only=args.only)
    print((out / "ablation.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
