"""``python -m retrieval.evaluate --task moments``: moment retrieval of one or several runs, their
mean and spread, the oracle ceilings beside them, the goal check, the tables and the outputs.

Several runs (``--run A --run B --run C``, e.g. three seeds): every metric is the mean over the runs
and ``<task>_spread`` the spread, max - min over the runs (the random span is first averaged over
its draws within each run). The JSON::

    {"task": "moments", "headline": NAME, "svmr": {...}, "vcmr": {...}, "runs": [LABEL, ...],
     "methods": {NAME: {"svmr": {"R1@0.3", ..., "mIoU"}, "vcmr": {"R1@0.5", ..., "R100@0.7"},
                        "svmr_spread"?, "vcmr_spread"?, "n_runs"?}},
     "oracle"?: {SUBSET: {"svmr", "vcmr"}}, "goal"?: {...}, "protocol": {...},
     "model" | "per_run": [...], "random_weights", "WARNING"?}

``svmr`` / ``vcmr`` at the top are the headline method's, the one the service answers with: the
trained head when the runs have one, else the heuristic. ``oracle`` is the dataset's
``oracle.json`` ``moments`` table (synthetic-events: :mod:`data.synthetic.events_oracle`).
``goal``: whether the head beats every baseline at :data:`GOAL_METRICS` by more than the spread
(the larger of the two methods' max - min over the runs).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from data.atomic import write_json_atomic, write_text_atomic
from data.progress import Bars, ProgressEvent, ProgressFn
from data.provenance import random_weights_banner, random_weights_label
from data.settings import Settings, get_settings
from retrieval.evaluation import report
from retrieval.evaluation.moments import HEAD, HEURISTIC, RANDOM_DRAWS, evaluate_moments, split_windows
from retrieval.runs import load, run_name

TASKS = {"svmr": "SVMR (the query's own video given)", "vcmr": "VCMR (the whole test corpus, TVR protocol)"}
GOAL_METRICS = (("svmr", "R1@0.5"), ("vcmr", "R10@0.5"))
ORACLE_NOTE = ("oracle rows: the expected metrics of an oracle that knows the true segments and exactly the "
               "listed attributes (the dataset's oracle.json); a ceiling, not a model")


def read_oracle(dataset: str, settings: Settings) -> dict | None:
    """The ``moments`` table of ``datasets/<dataset>/oracle.json``, or None when there is none."""
    path = settings.dataset_dir(dataset) / "oracle.json"
    return json.loads(path.read_text()).get("moments") if path.is_file() else None


def _aggregate(entries: list[dict], several: bool) -> dict:
    """Mean of each metric over ``entries`` (``{"svmr", "vcmr"}`` of one method in several runs);
    ``<task>_spread`` (max - min) and ``n_runs`` when the result combines ``several`` runs."""
    out: dict = {}
    for task in TASKS:
        values = {key: [e[task][key] for e in entries] for key in entries[0][task]}
        out[task] = {key: float(np.mean(v)) for key, v in values.items()}
        if several:
            out[f"{task}_spread"] = {key: float(np.max(v) - np.min(v)) for key, v in values.items()}
    if several:
        out["n_runs"] = len(entries)
    return out


def goal_check(methods: dict) -> dict | None:
    """Whether the trained head beats every baseline at :data:`GOAL_METRICS` by more than the spread
    (the larger of the two max - min, 0 for one run); None without a head."""
    if HEAD not in methods:
        return None
    head, comparisons = methods[HEAD], []
    for name, entry in ((n, e) for n, e in methods.items() if n != HEAD):
        for task, key in GOAL_METRICS:
            spread = max(m.get(f"{task}_spread", {}).get(key, 0.0) for m in (head, entry))
            difference = head[task][key] - entry[task][key]
            comparisons.append({"baseline": name, "metric": f"{task.upper()} {key}", "head": head[task][key],
                                "baseline_value": entry[task][key], "difference": difference, "spread": spread,
                                "beats": difference > spread})
    return {"rule": "head mean - baseline mean > the larger spread (max - min over runs) of the two, at "
                    + " and ".join(f"{t.upper()} {k}" for t, k in GOAL_METRICS),
            "met": all(c["beats"] for c in comparisons), "comparisons": comparisons}


def combine(results: Sequence[dict], labels: Sequence[str], oracle: dict | None = None) -> dict:
    """One or several runs' :func:`~retrieval.evaluation.moments.evaluate_moments` results as the
    JSON of the module docstring."""
    several = len(results) > 1
    names = list(dict.fromkeys(name for r in results for name in r["methods"]))
    methods = {name: _aggregate([r["methods"][name] for r in results if name in r["methods"]], several)
               for name in names}
    headline = HEAD if HEAD in methods else HEURISTIC
    out = {"task": "moments", "headline": headline, "svmr": methods[headline]["svmr"],
           "vcmr": methods[headline]["vcmr"], "methods": methods, "runs": list(labels),
           "protocol": dict(results[0]["protocol"])}
    if oracle:
        out["oracle"], out["protocol"]["oracle"] = oracle, ORACLE_NOTE
    if (goal := goal_check(methods)) is not None:
        out["goal"] = goal
    if several:
        out["protocol"]["aggregate"] = f"mean and spread (max - min) over {len(results)} runs"
        out["per_run"] = [{"label": label, **r} for label, r in zip(labels, results)]
    else:
        out["model"] = results[0]["model"]
    if any(r.get("random_weights") for r in results):
        out["random_weights"], out["WARNING"] = True, random_weights_label()
    else:
        out["random_weights"] = False
    return out


def describe(result: dict) -> list[str]:
    """Header lines: what was evaluated, how, and the RANDOM WEIGHTS banner first where it applies."""
    p = result["protocol"]
    left_out = p["n_queries_listed"] - p["n_queries"]
    lines = [f"moments on {p['dataset']}/{p['split']}: {p['n_queries']} caption queries with a window"
             + (f" ({left_out} more without usable features left out)" if left_out else "")
             + f", {p['n_videos']} videos",
             f"queries: {p['queries']}",
             "IoU of windows in seconds (several annotators: mean of the 3 best); R{k}@{IoU} and mIoU in %; "
             f"ties: {p['ties']}",
             f"SVMR: {p['svmr']}", f"VCMR: {p['vcmr']}", f"random span: {p['random_span']}",
             f"prior window: {p['prior_window'] or 'no training windows: row left out'}",
             f"runs: {', '.join(result['runs'])}"]
    if "aggregate" in p:
        lines.append(p["aggregate"] + " (shown as mean ± spread)")
    if HEAD not in result["methods"]:
        lines.append("trained head: " + p["head"])
    if "oracle" in p:
        lines.append(p["oracle"])
    if result.get("random_weights"):
        lines.insert(0, random_weights_banner())
    return lines


def tables(result: dict, *, markdown: bool) -> str:
    """The SVMR and the VCMR table: one row per method (mean ± spread over runs), then the oracle rows."""
    parts = []
    for task, title in TASKS.items():
        names = list(next(iter(result["methods"].values()))[task])
        body = [[name] + [report.cell(entry[task][k], entry.get(f"{task}_spread", {}).get(k)) for k in names]
                for name, entry in result["methods"].items()]
        body += [[f"oracle: knows {subset}"] + [report.cell(row[task][k]) for k in names]
                 for subset, row in (result.get("oracle") or {}).items()]
        heading = f"**{title}**" if markdown else title
        parts.append(heading + "\n\n" + report.layout(["method", *names], body, markdown=markdown, labels=1))
    return "\n".join(parts)


def goal_text(result: dict, *, markdown: bool) -> str:
    """The goal's verdict and every comparison that fails it, with the numbers ("" without a head)."""
    goal = result.get("goal")
    if goal is None:
        return ""
    verdict = f"goal ({goal['rule']}): {'met' if goal['met'] else 'NOT met'}"
    failed = [f"{c['metric']}: head {c['head']:.1f} vs {c['baseline']} {c['baseline_value']:.1f} "
              f"(difference {c['difference']:+.1f}, spread {c['spread']:.1f})"
              for c in goal["comparisons"] if not c["beats"]]
    bullet = "- " if markdown else "  "
    return "\n" + (f"**{verdict}**" if markdown else verdict) + "\n" + (
        ("\n" if markdown and failed else "") + "".join(f"{bullet}{line}\n" for line in failed))


def render(result: dict, *, markdown: bool) -> str:
    """Header, tables and goal as console text or as Markdown (the header as a bulleted list)."""
    head = describe(result)
    top = "".join(f"- {line}\n" for line in head) if markdown else "\n".join(head) + "\n"
    return top + "\n" + tables(result, markdown=markdown) + goal_text(result, markdown=markdown)


def evaluate_runs(runs: Sequence[str], dataset: str, split: str = "test", *, settings: Settings | None = None,
                  draws: int = RANDOM_DRAWS, seed: int = 0, progress: ProgressFn | None = None) -> dict:
    """Evaluate every run of ``runs`` (ids, folders or ``zero-shot``) and :func:`combine` them with the
    dataset's oracle. ``progress``: one event per run."""
    settings = settings or get_settings()
    split_windows(dataset, split, settings)     # no windows: refused before any run is loaded
    tick = progress or (lambda event: None)
    results, labels = [], []
    for k, run in enumerate(runs):
        tick(ProgressEvent(f"moments {dataset}/{split}", k, len(runs), "run"))
        loaded = load(run, dataset, settings)
        labels.append(f"{loaded.name} ({run_name(loaded.run_dir)})")
        results.append(evaluate_moments(loaded, dataset, split, settings=settings, draws=draws, seed=seed))
    tick(ProgressEvent(f"moments {dataset}/{split}", len(runs), len(runs), "run"))
    return combine(results, labels, read_oracle(dataset, settings))


def write_outputs(result: dict, json_path: Path, markdown_path: Path) -> str:
    """Write the JSON and the Markdown (atomically); returns the console text."""
    write_json_atomic(json_path, result)
    title = f"# Moment retrieval: {result['protocol']['dataset']} / {result['protocol']['split']}\n\n"
    write_text_atomic(markdown_path, title + render(result, markdown=True))
    return render(result, markdown=False)


RANKING_ONLY = (("similarity", None), ("query_videos", None), ("video_ids", None), ("index_type", "exact"),
                ("factory", None), ("memory_gb", None), ("nprobe", None), ("efSearch", None),
                ("dual_softmax", None), ("captions", "all"), ("v2t_protocol", "group-best"))


def run_cli(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--task moments`` of ``python -m retrieval.evaluate`` (options already parsed)."""
    given = [name for name, default in RANKING_ONLY if getattr(args, name) != default]
    if given:
        parser.error("--task moments does not take " + ", ".join("--" + n.replace("_", "-") for n in given)
                     + " (ranking options)")
    if not (args.run and args.dataset):
        parser.error("--task moments needs --run (repeatable) and --dataset")
    settings = get_settings()
    with Bars.for_cli() as bars:
        result = evaluate_runs(args.run, args.dataset, args.split, settings=settings,
                                       draws=args.random_draws, seed=args.random_seed, progress=bars)
    runs = "+".join(Path(str(run)).name for run in args.run)
    json_path = args.json or settings.root / "evals" / f"{args.dataset}-{args.split}-moments-{runs}.json"
    markdown = args.markdown or json_path.with_suffix(".md")
    print(write_outputs(result, json_path, markdown), end="")
    print(f"\nwrote {json_path} and {markdown}")
    return 0
