"""``python -m bench.serve --moments``: what moments cost the search service, side by side in one run.

One service (``python -m retrieval.serve``) answers from a run with a moment head over
``--videos`` GENERATED videos (:mod:`bench.moments_home`; the head trained briefly on 400 of them,
the text tower a RANDOM-weights CLIP). Three settings are measured per client count, in
``--rounds`` alternating rounds (off, on, corpus, off, on, corpus, ...) so that all see the same
machine: ``moments=0`` (no moments), ``moments=3`` (the head's 3 moments per result video, the
default) and ``mode=moments`` (the corpus moment mode: the segment index, then the head on the
candidates). Printed: p50 / p95 / QPS per setting and the ratios the issue's goals name
(moments on / off p50, under 1.3; the corpus mode's p50, under 100 ms on 2 cores).
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench.serve import load, merged, served
from data.provenance import RANDOM_WEIGHTS

DATASET = "bench-moments"
SETTINGS = {"moments off": {"moments": 0}, "moments on (3 per video)": {"moments": 3},
            "corpus moment mode": {"mode": "moments"}}


def run_moments(args: argparse.Namespace, home: Path) -> int:
    os.environ["TVR_HOME"] = str(home)
    import httpx
    from tabulate import tabulate

    from bench.moments_home import build_moments_home

    start = time.perf_counter()
    run = build_moments_home(home, DATASET, args.videos, args.model)
    print(f"built {args.videos:,} generated videos, run {run} (meanP + moment head, RANDOM {args.model} text "
          f"tower) and its index under {home} in {time.perf_counter() - start:.1f} s; {os.cpu_count()} cores, "
          f"TVR_DEVICE={os.environ.get('TVR_DEVICE', 'auto')}", flush=True)
    rows = []
    with served(home, args.wait_ms, args.threads, None, args.lone_threads, dataset=DATASET) as base:
        info = httpx.get(base + "/api/info").json()
        print(f"service: build {info['build_id']}, {info['index']['n_vectors']:,} videos, device {info['device']}",
              flush=True)
        for params in SETTINGS.values():
            load(base, 1, 10, params)                                  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            rounds: dict[str, list[dict]] = {name: [] for name in SETTINGS}
            for _ in range(args.rounds):
                for name, params in SETTINGS.items():
                    rounds[name].append(load(base, clients, args.queries, params))
            rows += [{"setting": name, **merged(got)} for name, got in rounds.items()]
    print(f"!!! {RANDOM_WEIGHTS} text tower and GENERATED features: timings only, no retrieval quality !!!")
    print(tabulate([[r["setting"], r["clients"], r["requests"], r["errors"], f"{r['p50_ms']:.1f}",
                     f"{r['p95_ms']:.1f}", f"{r['qps']:.1f}"] for r in rows],
                   headers=["setting", "clients", "requests", "errors", "p50 ms", "p95 ms", "QPS"]))
    for clients in dict.fromkeys(r["clients"] for r in rows):
        by = {r["setting"]: r for r in rows if r["clients"] == clients}
        off, on, corpus = (by[name] for name in SETTINGS)
        print(f"{clients} client(s): moments on / off p50 {on['p50_ms'] / off['p50_ms']:.2f}x "
              f"(p95 {on['p95_ms'] / off['p95_ms']:.2f}x); corpus moment mode p50 {corpus['p50_ms']:.1f} ms, "
              f"p95 {corpus['p95_ms']:.1f} ms")
    return 0 if all(r["errors"] == 0 and np.isfinite(r["p50_ms"]) for r in rows) else 1
