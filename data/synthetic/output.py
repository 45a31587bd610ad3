"""Writing a generated set into its folder, shared by synthetic-av and synthetic-events: claiming the
folder for one plan, and rendering the videos not yet on disk in worker processes."""
from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

from data.atomic import write_json_atomic


def claim_folder(out_dir: Path, plan_key: dict) -> None:
    """Create ``out_dir/videos`` and record ``plan_key`` in ``out_dir/plan.json``;
    :class:`FileExistsError` when the folder already holds a set with another plan."""
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    plan_file = out_dir / "plan.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan_key:
        raise FileExistsError(f"{out_dir} holds a synthetic dataset with another plan "
                              f"({plan_file.read_text().strip()}); choose an empty folder")
    write_json_atomic(plan_file, plan_key)


def render_missing(render: Callable, specs: Sequence, out_dir: Path, workers: int | None = None,
                   progress: bool = True) -> int:
    """Call ``render(spec, out_dir)`` for every spec whose ``out_dir / spec.filename`` is absent, in
    ``workers`` processes (default: all cores); returns how many were rendered."""
    todo = [s for s in specs if not (out_dir / s.filename).is_file()]
    workers = workers or os.cpu_count() or 1
    start = time.time()
    # spawn, not fork: forking a process that already runs torch's thread pools can deadlock the child
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, _ in enumerate(pool.map(render, todo, itertools.repeat(out_dir), chunksize=4), 1):
            if progress and (done % 25 == 0 or done == len(todo)):
                print(f"  rendered {done}/{len(todo)} videos ({time.time() - start:.1f} s)", file=sys.stderr)
    return len(todo)
