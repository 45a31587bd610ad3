"""Dask worker preload used by tests/test_dask.py (no tests here): counts, per worker process, the
shards it extracted (``ExtractConfig.build`` calls), the models it built (``seeded_build`` calls
of the CLIP and VGGish loaders) and the index parts it built (``retrieval.index.shards.build_part_file``
calls; tests/test_reindex.py), and writes them to ``$TVR_TEST_COUNTS_DIR/<pid>.json`` after each."""
from __future__ import annotations

import json
import os
from pathlib import Path


def dask_setup(worker) -> None:
    from extractors import audio, clip, config
    from retrieval.index import shards

    counts = {"worker": worker.name, "shards": 0, "models": 0, "parts": 0}
    out = Path(os.environ["TVR_TEST_COUNTS_DIR"]) / f"{os.getpid()}.json"
    build, seeded_build, build_part_file = config.ExtractConfig.build, clip.seeded_build, shards.build_part_file

    def save(key: str) -> None:
        counts[key] += 1
        out.write_text(json.dumps(counts))

    def counting_build(self):
        save("shards")
        return build(self)

    def counting_seeded_build(weights, fn):
        save("models")
        return seeded_build(weights, fn)

    def counting_build_part_file(*args, **kwargs):
        save("parts")
        return build_part_file(*args, **kwargs)

    config.ExtractConfig.build = counting_build
    shards.build_part_file = counting_build_part_file
    clip.seeded_build = audio.seeded_build = counting_seeded_build
