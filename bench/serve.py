"""Search-service benchmark: p50 / p99 latency and queries per second at 1 and 16 concurrent clients.

    python -m bench.serve [--videos 10000] [--queries 400] [--clients 1,16] [--model ViT-B-32]
                          [--query-precision stored,bf16] [--moments]

Builds, in a temporary ``TVR_HOME`` (or ``--home``), a dataset of ``--videos`` manifest rows (no
video files: thumbnails are not exercised), the ``_extractor.json`` of a RANDOM-weights CLIP
(``--model``) for clip_frames and clip_text (no features: the zero-shot model only needs their
description), and an index build of GENERATED unit vectors (not model embeddings; the search cost
does not depend on what the vectors mean). Then the real service answers: the zero-shot model
with the real CLIP text tower encodes every query (micro-batched across concurrent requests) and
FAISS searches the build. The service runs as ``python -m retrieval.serve`` in its own process on
loopback; the clients are threads of this process (httpx), so they do not share its interpreter.
Each client sends ``--queries`` / clients distinct queries over HTTP, one after another; latency is
measured per request at the client, QPS = all requests / wall time; the service's own time per
batch (text tower + FAISS, from ``/api/info``) shows what the model costs. Device: ``$TVR_DEVICE``.

Each ``--query-precision`` (the text tower's weights: ``stored`` = the extraction's, fp32 on CPU;
``bf16``) gets its own service process and its own rows, one after the other in one run; the same
``AGREEMENT_QUERIES`` queries are then asked of each, and the table compares every precision's
top-10 with the first one's (mean overlap, largest score difference).

``--against DIR`` measures another checkout of this project beside this one (for example the
commit before a change: ``git worktree add /tmp/before <commit>``): for each precision both
services run at once (the other one as ``python -m retrieval.serve`` from ``DIR``, same
``TVR_HOME``, same flags), and each client setting is measured in ``--rounds`` alternating rounds
(this, other, this, other, ...), so both see the same machine; each tree's p50 / p99 are over all
its rounds' requests, and a last table gives this tree's p50 as a ratio of the other's.

``--moments`` measures what moments cost instead (:mod:`bench.serve_moments`).
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from data.provenance import RANDOM_WEIGHTS


def build_home(root: Path, dataset: str, n: int, model: str) -> None:
    """Manifest + extractor descriptions + an index of generated vectors under ``root``."""
    from data.manifest import VideoRecord, build_manifest, write_manifest
    from data.modalities import CLIP_FRAMES, CLIP_TEXT
    from data.settings import get_settings
    from data.store import FeatureSet
    from extractors.registry import build_extractor
    from retrieval.index.writer import write_build

    settings = get_settings(root)
    ids = [f"video{i:06d}" for i in range(n)]
    records = [VideoRecord(v, f"videos/{v}.mp4", "test", [f"generated caption {i}"]) for i, v in enumerate(ids)]
    table, _ = build_manifest(records, root / "media", dataset=dataset)
    write_manifest(table, settings.manifest_path(dataset))
    extractor_ids, dim = {}, None
    for modality in (CLIP_FRAMES, CLIP_TEXT):
        spec = build_extractor(modality, model, "random", device="cpu").spec
        FeatureSet(settings.feature_dir(dataset, modality, spec.extractor_id), spec).prepare()
        extractor_ids[modality], dim = spec.extractor_id, spec.dim
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_build(dataset, "zero-shot", vectors, ids, settings=settings, use_gpu=False,
                info={"extractor_ids": extractor_ids, "random_weights": True, "model": "zero-shot",
                      "fine_grained": False, "note": "GENERATED vectors (bench.serve)"})


def load(base: str, clients: int, total: int, params: dict | None = None) -> dict:
    """``total`` requests from ``clients`` threads (``params``: more query parameters); latency
    percentiles (ms), QPS and the latencies (s)."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        with httpx.Client(base_url=base, timeout=60) as http:
            for i in range(c, total, clients):
                start = time.perf_counter()
                try:
                    r = http.get("/api/search", params={"q": f"a person doing thing number {i} in a video", "k": 10,
                                                        **(params or {})})
                    problem = None if r.status_code == 200 else f"{r.status_code}: {r.text[:200]}"
                except httpx.HTTPError as err:
                    problem = repr(err)
                took = time.perf_counter() - start
                with lock:
                    (latencies.append(took) if problem is None else errors.append(problem))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return summarize(clients, latencies, len(errors), wall)


def summarize(clients: int, latencies: list[float], errors: int, wall: float) -> dict:
    """Percentiles (ms) and QPS of ``latencies`` (s) answered in ``wall`` seconds."""
    ms = np.asarray(latencies or [np.nan]) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": errors,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)),
            "qps": len(latencies) / wall, "latencies": latencies, "wall": wall}


def merged(rounds: list[dict]) -> dict:
    """One row from several rounds of the same setting: percentiles over all their requests."""
    return summarize(rounds[0]["clients"], [t for r in rounds for t in r["latencies"]],
                     sum(r["errors"] for r in rounds), sum(r["wall"] for r in rounds))


AGREEMENT_QUERIES = 50


def answers(base: str, n: int) -> list[list[tuple[str, float]]]:
    """The top-10 ``(video id, score)`` of ``n`` fixed queries, one request each."""
    import httpx

    with httpx.Client(base_url=base, timeout=60) as http:
        return [[(hit["video_id"], hit["score"]) for hit in
                 http.get("/api/search", params={"q": f"someone shows object {i} to the camera", "k": 10})
                 .raise_for_status().json()["results"]] for i in range(n)]


def agreement(reference: list, other: list) -> tuple[float, float]:
    """Mean share of the reference's top-10 ids also in ``other``'s, and the largest score difference
    of the ids both hold."""
    overlap, diff = [], 0.0
    for ref, oth in zip(reference, other, strict=True):
        mine = dict(oth)
        overlap.append(len(set(mine) & {v for v, _ in ref}) / max(len(ref), 1))
        diff = max([diff] + [abs(score - mine[v]) for v, score in ref if v in mine])
    return float(np.mean(overlap)), diff


@contextmanager
def served(home: Path, wait_ms: float, threads: int | None = None, precision: str | None = None,
           lone_threads: int | None = None, tree: Path | None = None, dataset: str = "bench") -> Iterator[str]:
    """``python -m retrieval.serve --dataset <dataset>`` on a free loopback port; yields its base URL.

    ``tree``: run the service of that checkout (its folder first on ``sys.path``) instead of this one."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TVR_HOME": str(home)}
    if tree is not None:
        env["PYTHONPATH"] = str(tree)
    proc = subprocess.Popen([sys.executable, "-m", "retrieval.serve", "--dataset", dataset, "--port", str(port),
                             "--poll", "0", "--wait-ms", str(wait_ms)]
                            + (["--threads", str(threads)] if threads else [])
                            + (["--query-precision", precision] if precision else [])
                            + (["--lone-threads", str(lone_threads)] if lone_threads is not None else []),
                            env=env, cwd=tree)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not start")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def commit_of(tree: Path) -> str:
    """The short commit a checkout stands on (``?`` where git cannot say)."""
    done = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def print_ratios(rows: list[dict]) -> None:
    """This tree's p50 / p99 over the other's, per precision and client setting."""
    from tabulate import tabulate

    other = {(r["precision"], r["clients"]): r for r in rows if r["tree"] == "against"}
    print(tabulate([[r["precision"], r["clients"], f"{r['p50_ms'] / other[key]['p50_ms']:.3f}",
                     f"{r['p99_ms'] / other[key]['p99_ms']:.3f}", f"{r['qps'] / other[key]['qps']:.3f}"]
                    for r in rows if r["tree"] == "this" and (key := (r["precision"], r["clients"])) in other],
                   headers=["query precision", "clients", "p50 this/against", "p99 this/against",
                            "QPS this/against"]))


def main(argv: list[str] | None = None) -> int:
    from data.modalities import CLIP_TEXT
    from extractors.registry import DEFAULT_MODELS

    parser = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=10_000, help="indexed videos (default 10,000)")
    parser.add_argument("--queries", type=int, default=400, help="requests per client setting (default 400)")
    parser.add_argument("--clients", default="1,16", help="comma-separated concurrent clients (default 1,16)")
    parser.add_argument("--model", default=DEFAULT_MODELS[CLIP_TEXT],
                        help="open_clip model of the random CLIP (default %(default)s)")
    parser.add_argument("--home", type=Path, help="TVR_HOME to build in (default: a temporary folder)")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="micro-batch wait (default 2 ms)")
    parser.add_argument("--threads", type=int, default=None,
                        help="the service's torch CPU threads (default: the service's default)")
    parser.add_argument("--lone-threads", type=int, default=None,
                        help="the service's torch threads for a lone query (default: the service's default, 1; "
                             "0 = as --threads)")
    parser.add_argument("--query-precision", default="stored,bf16",
                        help="comma-separated text-tower precisions, one service each (default stored,bf16)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout of this project to measure side by side (e.g. the commit "
                             "before a change, from `git worktree add`)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds per client setting (default 1, or 3 with --against or --moments)")
    parser.add_argument("--moments", action="store_true",
                        help="instead: the cost of moments, on a run with a moment head over GENERATED features "
                             "(bench/moments_home.py): moments off, on (3 per video) and the corpus moment mode, "
                             "measured in alternating rounds in one service")
    args = parser.parse_args(argv)
    from data.settings import QUERY_PRECISIONS

    for precision in args.query_precision.split(","):
        if precision not in QUERY_PRECISIONS:
            parser.error(f"--query-precision {precision!r}: expected {', '.join(QUERY_PRECISIONS)}")
    if args.against is not None and not (args.against / "retrieval" / "serve.py").is_file():
        parser.error(f"--against {args.against}: not a checkout of this project (no retrieval/serve.py)")
    args.rounds = args.rounds or (3 if args.against or args.moments else 1)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
        if args.moments:
            from bench.serve_moments import run_moments

            return run_moments(args, args.home or Path(scratch))
        return run(args, args.home or Path(scratch))


def run(args: argparse.Namespace, home: Path) -> int:
    os.environ["TVR_HOME"] = str(home)
    import httpx
    from tabulate import tabulate

    start = time.perf_counter()
    build_home(home, "bench", args.videos, args.model)
    print(f"built {args.videos:,} generated vectors + random {args.model} extractor descriptions under {home} "
          f"in {time.perf_counter() - start:.1f} s; {os.cpu_count()} cores, "
          f"TVR_DEVICE={os.environ.get('TVR_DEVICE', 'auto')}")
    trees = {"this": None} if args.against is None else {"this": None, "against": args.against.resolve()}
    if args.against is not None:
        print(f"against: {trees['against']} (commit {commit_of(trees['against'])}); this tree: "
              f"commit {commit_of(Path(__file__).resolve().parents[1])}; {args.rounds} alternating rounds per setting", flush=True)
    rows, answered = [], {}
    for precision in args.query_precision.split(","):
        with ExitStack() as stack:
            bases = {name: stack.enter_context(served(home, args.wait_ms, args.threads, precision,
                                                      args.lone_threads, tree)) for name, tree in trees.items()}
            health = httpx.get(bases["this"] + "/api/info").json()
            label = precision if precision == health["query_precision"] else f"{precision}={health['query_precision']}"
            print(f"service: build {health['build_id']}, device {health['device']}, query precision {label}",
                  flush=True)
            for base in bases.values():
                load(base, 1, 10)                                # warm-up
            for clients in (int(c) for c in args.clients.split(",")):
                rounds: dict[str, list[dict]] = {name: [] for name in trees}
                for _ in range(args.rounds):
                    for name, base in bases.items():
                        before = httpx.get(base + "/api/info").json()["batching"]
                        row = load(base, clients, args.queries)
                        after = httpx.get(base + "/api/info").json()["batching"]
                        batches = max(after["batches"] - before["batches"], 1)
                        row["mean_batch"] = (after["queries"] - before["queries"]) / batches
                        row["batch_ms"] = 1000 * (after["busy_s"] - before["busy_s"]) / batches
                        rounds[name].append(row)
                for name, got in rounds.items():
                    row = merged(got)
                    row["mean_batch"] = float(np.mean([r["mean_batch"] for r in got]))
                    row["batch_ms"] = float(np.mean([r["batch_ms"] for r in got]))
                    rows.append({"tree": name, "precision": label, **row})
            answered[label] = answers(bases["this"], AGREEMENT_QUERIES)
    print(f"!!! {RANDOM_WEIGHTS} text tower and GENERATED index vectors: timings only, no retrieval quality !!!")
    print(tabulate([[r["tree"], r["precision"], r["clients"], r["requests"], r["errors"], f"{r['p50_ms']:.1f}",
                     f"{r['p99_ms']:.1f}", f"{r['qps']:.1f}", f"{r['mean_batch']:.1f}", f"{r['batch_ms']:.1f}"]
                    for r in rows],
                   headers=["tree", "query precision", "clients", "requests", "errors", "p50 ms", "p99 ms", "QPS",
                            "mean batch", "ms per batch (model + FAISS)"]))
    for precision in dict.fromkeys(r["precision"] for r in rows):
        mine = [r for r in rows if r["precision"] == precision and r["tree"] == "this"]
        if len(mine) > 1:
            print(f"{precision}: throughput at {mine[-1]['clients']} clients = "
                  f"{mine[-1]['qps'] / mine[0]['qps']:.1f}x that at {mine[0]['clients']}")
    if args.against is not None:
        print_ratios(rows)
    reference, *others = answered
    for precision in others:
        overlap, diff = agreement(answered[reference], answered[precision])
        print(f"{precision} vs {reference} on {AGREEMENT_QUERIES} queries: top-10 overlap {overlap:.3f}, "
              f"largest score difference {diff:.2g}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
