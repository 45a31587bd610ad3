"""Dask worker preload used by tests/test_dask.py (no tests here): counts, per worker process, the
shards it extracted (``ExtractConfig.build`` calls) and the models it built (``seeded_build`` calls
of the CLIP and VGGish loaders), and writes them to ``$TVR_TEST_COUNTS_DIR/<pid>.json`` after each."""
from __future__ import annotations

import json
import os
from pathlib import Path


def dask_setup(worker) -> None:
    from extractors import audio, clip, run

    counts = {"worker": worker.name, "shards": 0, "models": 0}
    out = Path(os.environ["TVR_TEST_COUNTS_DIR"]) / f"{os.getpid()}.json"
    build, seeded_build = run.ExtractConfig.build, clip.seeded_build

    def save(key: str) -> None:
        counts[key] += 1
        out.write_text(json.dumps(counts))

    def counting_build(self):
        save("shards")
        return build(self)

    def counting_seeded_build(weights, fn):
        save("models")
        return seeded_build(weights, fn)

    run.ExtractConfig.build = counting_build
    clip.seeded_build = audio.seeded_build = counting_seeded_build
