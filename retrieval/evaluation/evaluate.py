"""``python -m retrieval.evaluate``: Rank@K tables, both directions, every metric.

``--task moments`` evaluates moment retrieval instead (SVMR / VCMR, baselines, the trained head,
the oracle beside them): :mod:`.moments_report`. The ranking task (the default) has two modes:

- a model: ``--run R`` (repeatable: mean and spread over runs / seeds; ``zero-shot`` allowed)
  ``--dataset D --split test``: encodes the split with ``fusion.api`` and ranks exactly (chunked),
  or through a FAISS index with ``--index-type flat|ivf|hnsw`` (text-to-video R@K from the top of
  the index; fine-grained models re-rank the first stage exactly, first-stage recall reported);
- a precomputed matrix (stable interface for scripts)::

      python -m retrieval.evaluate --similarity S.npy --query-videos Q.txt --video-ids V.txt --json OUT.json

  S is ``[queries x videos]`` (``.npy``, memory-mapped), Q.txt the video id of each query row,
  V.txt the id of each column (one per line). ``--similarity`` is repeatable (mean and spread).

OUT.json holds ``{"t2v": {"R@1","R@5","R@10","R@50","RSum","MdR","MnR"}, "v2t": {...}, "RSum",
"protocol": {...}}`` (``--ks`` chooses the R@K; the protocol counts evaluated and listed videos / queries)
with R@K in percent and ranks 1-based (ties averaged, see :mod:`data.metrics`), plus
``dual_softmax`` (a separate, labelled row; never the headline) when asked, the published
reference rows for MSR-VTT, and ``random_weights`` / ``WARNING`` for models with random weights.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from data.atomic import write_json_atomic, write_text_atomic
from data.cli import add_version, guarded
from data.metrics import (KS, RANK_COLUMNS, RSUM_KS, V2T_PROTOCOLS, DualSoftmaxScores, FunctionScores, GroundTruth,
                          ScoreError, VectorScores, as_source, evaluate_scores)
from data.progress import Bars, ProgressEvent, ProgressFn
from data.provenance import random_weights_banner, random_weights_label
from data.settings import Settings, get_settings
from retrieval.evaluation import moments_report, report
from retrieval.evaluation.ranked import counts_from_index, counts_with_rerank
from retrieval.index.faiss_index import INDEX_TYPES, IndexFolderError, apply_search_params, build_faiss
from retrieval.runs import ZERO_SHOT, RunNotFound, fusion_api, load, run_name

DSL_TEMPERATURE = 100.0   # CLIP's logit scale: model scores are cosines, so softmax(S) alone is nearly flat
DSL_LABEL = "dual softmax (transductive post-processing; not a headline result)"


def _with_dual_softmax(result: dict, source, ids: tuple, temperature: float | None, **kwargs) -> dict:
    """Add the dual-softmax row under ``result["dual_softmax"]`` when ``temperature`` is given."""
    if temperature is not None:
        label = f"{DSL_LABEL}: S * softmax({temperature:g} * S, axis=queries)"
        result["dual_softmax"] = evaluate_scores(DualSoftmaxScores(as_source(source), temperature), *ids,
                                                 post_processing=label, **kwargs)
    return result


def evaluate_matrix(similarity: str | Path, query_videos: str | Path, video_ids: str | Path, *,
                    v2t_protocols: Sequence[str] = ("group-best",), dual_softmax: float | None = None,
                    ks: Sequence[int] = KS) -> dict:
    """Metrics of a precomputed ``[Q, V]`` ``.npy`` matrix with its two id files."""
    path = Path(similarity)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such similarity file")
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ScoreError(f"{path}: not a plain .npy array ({err})") from err
    ids = (read_ids(query_videos), read_ids(video_ids))
    if matrix.ndim != 2 or matrix.shape != (len(ids[0]), len(ids[1])):
        raise ScoreError(f"{path}: shape {matrix.shape}, but {query_videos} has {len(ids[0])} query ids "
                         f"and {video_ids} has {len(ids[1])} video ids (expected [queries x videos])")
    kwargs = dict(v2t_protocols=v2t_protocols, ks=ks)
    result = evaluate_scores(matrix, *ids, **kwargs)
    result["protocol"]["source"] = str(path)
    return _with_dual_softmax(result, matrix, ids, dual_softmax, **kwargs)


def read_ids(path: str | Path) -> list[str]:
    """One id per line; blank lines are an error (they would shift every row)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such id file")
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            raise ScoreError(f"{path}, line {number}: empty id")
    return [line.strip() for line in lines]


def evaluate_model(loaded, dataset: str, split: str, *, captions: str = "all",
                   v2t_protocols: Sequence[str] = ("group-best",), index_type: str = "exact",
                   rerank_depth: int = 100, dual_softmax: float | None = None, ks: Sequence[int] = KS,
                   settings: Settings | None = None, index_options: dict | None = None) -> dict:
    """Encode ``dataset/split`` with a :class:`fusion.api.LoadedModel` and compute the metrics.
    ``index_options``: ``factory`` / ``memory_gb`` (the index built) and ``nprobe`` / ``efSearch``
    (its search parameters) for ``index_type`` other than exact."""
    split_data = fusion_api().encode_split(loaded, dataset, split, settings=settings, captions=captions)
    text, video = split_data.text_vectors, split_data.video_vectors
    if text.shape[1] != video.shape[1]:
        raise ScoreError(f"dimension mismatch: text vectors have {text.shape[1]} dimensions, "
                         f"video vectors {video.shape[1]}")
    ids = (list(split_data.query_video_ids), list(split_data.video_ids))
    source = (FunctionScores(split_data.score, len(text), len(video)) if split_data.fine_grained
              else VectorScores(text, video))
    kwargs = dict(v2t_protocols=v2t_protocols, ks=ks)
    result = evaluate_scores(source, *ids, text_to_video=index_type == "exact", **kwargs)
    listed = getattr(split_data, "listed", None) or (len(ids[1]), len(ids[0]))
    result["protocol"]["n_videos_listed"], result["protocol"]["n_queries_listed"] = map(int, listed)
    if index_type != "exact":
        result["t2v"], result["protocol"]["t2v_search"] = _t2v_through_index(
            split_data, ids, index_type, rerank_depth, ks, index_options or {})
    result["model"] = {"name": loaded.name, "run": run_name(loaded.run_dir), "dataset": dataset,
                       "split": split, "captions": captions, "fine_grained": bool(loaded.fine_grained),
                       "extractor_ids": dict(loaded.extractor_ids)}
    result["random_weights"] = bool(loaded.random_weights)
    if loaded.random_weights:
        result["WARNING"] = random_weights_label()
    return _with_dual_softmax(result, source, ids, dual_softmax, **kwargs)


def _t2v_through_index(split_data, ids, index_type: str, rerank_depth: int, ks, options: dict) -> tuple[dict, dict]:
    """Text-to-video R@K searched through a FAISS index of the split's video vectors."""
    index, chosen, params = build_faiss(split_data.video_vectors, index_type, factory=options.get("factory"),
                                        memory_gb=options.get("memory_gb"))
    params.update({key: options[key] for key in ("nprobe", "efSearch") if options.get(key) is not None})
    apply_search_params(index, params)
    true_rows = GroundTruth.from_ids(*ids).query_col
    note = {"index_type": chosen, "params": params,
            "note": "R@K from the top of the FAISS ranking (null for K above a re-rank depth); "
                    "MdR/MnR need the full ranking (null)"}
    if split_data.fine_grained:
        counts, recall = counts_with_rerank(index, split_data.text_vectors, true_rows, split_data.score,
                                            rerank_depth)
        note.update(rerank_depth=rerank_depth, first_stage_recall=recall,
                    stages="coarse vectors in FAISS, exact re-ranking of the candidates with score()")
    else:
        counts = counts_from_index(index, split_data.text_vectors, true_rows, max(ks))
    n_videos = len(split_data.video_ids)
    depth = min(rerank_depth, n_videos) if split_data.fine_grained else n_videos
    # the full gallery re-ranked exactly (or K >= the gallery) leaves no K unknown
    depth = n_videos if depth >= n_videos else depth
    metrics = {f"R@{k}": (100.0 if k >= n_videos and depth == n_videos else
                          float(100 * counts.hit_rate(k).mean()) if k <= depth else None) for k in ks}
    rsum = (float(sum(100 * counts.hit_rate(min(k, depth)).mean() for k in RSUM_KS))
            if max(RSUM_KS) <= depth or depth == n_videos else None)
    return {**metrics, "RSum": rsum, **dict.fromkeys(RANK_COLUMNS)}, note


def combine(results: Sequence[dict], labels: Sequence[str]) -> dict:
    """One result as is; several: mean on top, ``t2v_std`` / ``v2t_std`` and ``per_run``."""
    if len(results) == 1:
        return results[0]
    summary = report.aggregate(results)
    out = {key: summary[key] for key in ("t2v", "v2t", "t2v_std", "v2t_std")}
    out["protocol"] = {**results[0]["protocol"], "aggregate": f"mean and sample std over {len(results)} runs"}
    out["per_run"] = [{"label": label, **r} for label, r in zip(labels, results)]
    if any(r.get("random_weights") for r in results):
        out["random_weights"], out["WARNING"] = True, random_weights_label()
    if all("dual_softmax" in r for r in results):
        dsl = report.aggregate([r["dual_softmax"] for r in results])
        out["dual_softmax"] = {**dsl, "protocol": results[0]["dual_softmax"]["protocol"]}
    return out


def table_rows(result: dict, label: str, dataset: str | None) -> tuple[list, dict]:
    """Rows for :func:`report.render` (ours, every v2t protocol, dual softmax, references)."""
    rows, spreads = [], {}
    protocol = result["protocol"]

    def add(row_label: str, part: dict, std_from: dict | None = None) -> None:
        by_protocol = part.get("v2t_by_protocol") or {protocol["v2t"]: part["v2t"]}
        entries = [("t2v", part["t2v"], "t2v")] + [(f"v2t ({p})", m, "v2t") for p, m in by_protocol.items()]
        for direction, metrics, key in entries:
            rows.append((row_label, direction, metrics))
            if std_from and f"{key}_std" in std_from and len(by_protocol) == 1:
                spreads[(row_label, direction)] = std_from[f"{key}_std"]

    add(label, result, result)
    if "dual_softmax" in result:
        add(f"{label} + dual softmax (transductive, not headline)", result["dual_softmax"], result["dual_softmax"])
    if report.has_references(dataset):
        rows += report.reference_rows()
    return rows, spreads


def describe(result: dict, dataset: str | None, what: str) -> list[str]:
    """Header lines naming the protocol (printed above the table and in the Markdown)."""
    p = result["protocol"]
    listed = (f" (of {p['n_queries_listed']} queries and {p['n_videos_listed']} videos the split lists; "
              "videos without usable features are left out)" if "n_videos_listed" in p else "")
    lines = [f"{what}: {p['n_queries_t2v']} text queries, {p['n_videos']} videos, "
             f"{p['n_queries_v2t']} video queries{listed}",
             f"ties: {p['ties']} ({p['tie_rule']}); ranks 1-based; R@K in %; "
             f"v2t protocol: {p['v2t']}"]
    if "t2v_search" in p:
        s = p["t2v_search"]
        extra = (f", re-rank depth {s['rerank_depth']}, first-stage recall {s['first_stage_recall']:.1f}%"
                 if "rerank_depth" in s else "")
        lines.append(f"t2v searched through FAISS {s['index_type']} {s['params']}{extra}; {s['note']}")
    if "aggregate" in p:
        lines.append(p["aggregate"] + " (shown as mean ± std)")
    if report.has_references(dataset):
        lines.append("published rows: text-to-video R@1 on MSR-VTT 1k-A from the papers (docs/methods.md §6), "
                     "not measured here; frozen-feature models should be compared with the frozen-CLIP rows")
    if result.get("random_weights"):
        lines.insert(0, random_weights_banner())
    return lines


def write_outputs(result: dict, label: str, dataset: str | None, what: str,
                  json_path: Path | None, markdown_path: Path | None) -> str:
    """Print-ready text; writes JSON and Markdown (atomically) where paths are given."""
    rows, spreads = table_rows(result, label, dataset)
    head = describe(result, dataset, what)
    text = "\n".join(head) + "\n\n" + report.render(rows, markdown=False, spreads=spreads)
    if json_path:
        if report.has_references(dataset):
            result = {**result, "reference": [{"row": n, "t2v": {"R@1": r1}} for n, r1 in report.REFERENCE_ROWS]}
        write_json_atomic(json_path, result)
    if markdown_path:
        md = f"# Retrieval evaluation: {what}\n\n" + "".join(f"- {line}\n" for line in head)
        write_text_atomic(markdown_path, md + "\n" + report.render(rows, markdown=True, spreads=spreads))
    return text


def evaluate_run(run: str, dataset: str, split: str = "test", *, v2t_protocol: str = "group-best",
                 settings: Settings | None = None, progress: ProgressFn | None = None) -> tuple[dict, Path, str]:
    """Evaluate ``run`` (a run folder / id, or ``zero-shot``) with the CLI's defaults and write
    ``evaluation.json`` / ``evaluation.md`` into the run folder (``runs/zero-shot-<dataset>/`` for
    the zero-shot model). Returns (result, JSON path, printable table). ``progress``: one event
    per stage (model loaded, split encoded and scored, outputs written)."""
    settings = settings or get_settings()
    task = f"evaluate {run} on {dataset}/{split}"
    tick = progress or (lambda event: None)
    loaded = load(run, dataset, settings)
    tick(ProgressEvent(task, 1, 3, "stage", {"done": "model loaded"}))
    result = evaluate_model(loaded, dataset, split, v2t_protocols=(v2t_protocol,), settings=settings)
    tick(ProgressEvent(task, 2, 3, "stage", {"done": "encoded and scored"}))
    out = loaded.run_dir or settings.runs_dir / f"zero-shot-{dataset}"
    out.mkdir(parents=True, exist_ok=True)
    text = write_outputs(result, loaded.name, dataset, f"{loaded.name} on {dataset}/{split}",
                         out / "evaluation.json", out / "evaluation.md")
    tick(ProgressEvent(task, 3, 3, "stage", {"done": "written"}))
    return result, out / "evaluation.json", text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m retrieval.evaluate",
        description="Text-to-video and video-to-text R@1/5/10 (%), MdR and MnR (1-based; ties averaged: "
                    "a tie with the ground truth is never a full win) for a trained run, the zero-shot "
                    "model, or a precomputed similarity matrix.",
        epilog="Stable scripting interface: python -m retrieval.evaluate --similarity S.npy "
               "--query-videos Q.txt --video-ids V.txt --json OUT.json. Moment retrieval: --task moments "
               "--run R [--run R2 ...] --dataset D (a dataset with caption windows).")
    parser.add_argument("--task", default="ranking", choices=("ranking", "moments"),
                        help="ranking: text-video Rank@K (default); moments: SVMR and VCMR of the runs' moment "
                             "heads beside the baselines and the oracle (needs the dataset's caption windows)")
    src = parser.add_argument_group("a precomputed matrix")
    src.add_argument("--similarity", action="append", type=Path,
                     help="[queries x videos] .npy (repeatable: mean and spread)")
    src.add_argument("--query-videos", type=Path, help="video id of each query row, one per line")
    src.add_argument("--video-ids", type=Path, help="video id of each column, one per line")
    mod = parser.add_argument_group("a model")
    mod.add_argument("--run", action="append",
                     help=f"run folder, run id, or '{ZERO_SHOT}' (repeatable: several runs / seeds, "
                          "mean and spread)")
    mod.add_argument("--dataset", help="dataset name (required with --run; names the matrix otherwise, "
                                       "so MSR-VTT gets the published rows)")
    mod.add_argument("--split", default="test", help="split to evaluate (default: test)")
    mod.add_argument("--captions", default="all", choices=("all", "first"),
                     help="every caption a query (default) or the first caption of each video")
    mod.add_argument("--index-type", default="exact", choices=("exact", "auto") + INDEX_TYPES,
                     help="exact: full chunked ranking (default); flat/ivf/hnsw: text-to-video R@K "
                          "searched through a FAISS index")
    mod.add_argument("--factory", help="with --index-type: any FAISS index_factory string instead (e.g. IVF256,PQ32)")
    mod.add_argument("--memory-gb", type=float, help="with --index-type auto: the index this memory budget picks")
    mod.add_argument("--nprobe", type=int, help="with --index-type: IVF lists searched")
    mod.add_argument("--ef-search", type=int, dest="efSearch", help="with --index-type: HNSW efSearch")
    mod.add_argument("--rerank-depth", type=int, default=100,
                     help="fine-grained models with --index-type: candidates re-ranked exactly (default 100)")
    out = parser.add_argument_group("protocol and output")
    out.add_argument("--v2t-protocol", default="group-best", choices=V2T_PROTOCOLS + ("both",),
                     help="video-to-text: group-best (caption groups scored by their best caption) or "
                          "all-captions (rank of the best correct caption); both = both rows")
    out.add_argument("--dual-softmax", type=float, nargs="?", const=DSL_TEMPERATURE, default=None, metavar="TEMP",
                     help="add a labelled dual-softmax row, S * softmax(TEMP * S over queries) "
                          f"(default TEMP {DSL_TEMPERATURE:g}, CLIP's logit scale for cosine scores); never the headline")
    out.add_argument("--ks", type=int, nargs="+", default=list(KS), metavar="K",
                     help=f"R@K columns (default {' '.join(map(str, KS))}); RSum is always R@1+R@5+R@10")
    mom = parser.add_argument_group("--task moments")
    mom.add_argument("--random-draws", type=int, default=moments_report.RANDOM_DRAWS, metavar="N",
                     help=f"random-span baseline: draws averaged (default {moments_report.RANDOM_DRAWS})")
    mom.add_argument("--random-seed", type=int, default=0, metavar="S", help="random-span baseline: seed (default 0)")
    out.add_argument("--json", type=Path, help="write the result here")
    out.add_argument("--markdown", type=Path, help="write a Markdown table here (default: beside --json)")
    return parser


@guarded(RunNotFound, FileNotFoundError, ScoreError, IndexFolderError, ValueError)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    add_version(parser)
    args = parser.parse_args(argv)
    if args.task == "moments":
        return moments_report.run_cli(parser, args)
    protocols = V2T_PROTOCOLS if args.v2t_protocol == "both" else (args.v2t_protocol,)
    ks = tuple(sorted(set(args.ks)))
    if min(ks) < 1:
        parser.error(f"--ks {' '.join(map(str, args.ks))}: every K must be at least 1")
    if bool(args.similarity) == bool(args.run):
        parser.error("give either --similarity (with --query-videos and --video-ids) or --run")
    markdown = args.markdown or (args.json.with_suffix(".md") if args.json else None)
    if args.similarity:
        if not (args.query_videos and args.video_ids):
            parser.error("--similarity needs --query-videos and --video-ids")
        if args.index_type != "exact":
            parser.error("--index-type needs vectors (--run); a precomputed matrix is ranked exactly")
        labels = [p.name for p in args.similarity]
        results = [evaluate_matrix(p, args.query_videos, args.video_ids, v2t_protocols=protocols,
                                   dual_softmax=args.dual_softmax, ks=ks) for p in args.similarity]
        what = f"{args.dataset or 'similarity matrix'} ({', '.join(labels)})"
    else:
        if not args.dataset:
            parser.error("--run needs --dataset")
        settings = get_settings()
        results, labels, bars = [], [], Bars.for_cli()
        for k, run in enumerate(args.run):
            bars(ProgressEvent(f"evaluate {args.dataset}/{args.split}", k, len(args.run), "run"))
            loaded = load(run, args.dataset, settings)
            labels.append(f"{loaded.name} ({run_name(loaded.run_dir)})")
            results.append(evaluate_model(loaded, args.dataset, args.split, captions=args.captions,
                                          v2t_protocols=protocols, index_type=args.index_type,
                                          rerank_depth=args.rerank_depth, dual_softmax=args.dual_softmax,
                                          ks=ks, settings=settings, index_options={
                                              key: getattr(args, key) for key in
                                              ("factory", "memory_gb", "nprobe", "efSearch")}))
        bars(ProgressEvent(f"evaluate {args.dataset}/{args.split}", len(args.run), len(args.run), "run"))
        what = f"{args.dataset} / {args.split}"
        if args.json is None:
            runs = "+".join(Path(str(run)).name for run in args.run)
            args.json = settings.root / "evals" / f"{args.dataset}-{args.split}-{runs}.json"
            markdown = args.json.with_suffix(".md")
    label = labels[0] if len(labels) == 1 else f"mean of {len(labels)}: " + ", ".join(labels)
    text = write_outputs(combine(results, labels), label, args.dataset, what, args.json, markdown)
    print(text, end="")
    if args.json:
        print(f"\nwrote {args.json}" + (f" and {markdown}" if markdown else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
