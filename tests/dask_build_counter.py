"""Dask worker preload used by tests/test_dask.py and tests/test_dask_cluster.py (no tests here):
counts, per worker process, the shards it extracted (``ExtractConfig.build`` calls), the models it
built (``seeded_build`` calls of the CLIP and VGGish loaders) and the index parts it built
(``retrieval.index.shards.build_part_file`` calls; tests/test_reindex.py), and lists the shards it
started (``started``: the video ids handed to ``plan_shard``) and the feature shards it wrote
(``written``: ``[modality, video ids]`` per ``FeatureSet.write_shard``). After each event it
replaces ``$TVR_TEST_COUNTS_DIR/<pid>.json`` atomically, so a worker killed at any line leaves a
readable file."""
from __future__ import annotations

import os
from pathlib import Path


def dask_setup(worker) -> None:
    from data.atomic import write_json_atomic
    from data.store import FeatureSet
    from extractors import audio, clip, config, runner
    from retrieval.index import shards

    counts = {"worker": worker.name, "shards": 0, "models": 0, "parts": 0, "started": [], "written": []}
    out = Path(os.environ["TVR_TEST_COUNTS_DIR"]) / f"{os.getpid()}.json"
    build, seeded_build, build_part_file = config.ExtractConfig.build, clip.seeded_build, shards.build_part_file
    plan_shard, write_shard = runner.plan_shard, FeatureSet.write_shard

    def save(key: str, item=None) -> None:
        if item is None:
            counts[key] += 1
        else:
            counts[key].append(item)
        write_json_atomic(out, counts)

    def counting_build(self):
        save("shards")
        return build(self)

    def counting_seeded_build(weights, fn):
        save("models")
        return seeded_build(weights, fn)

    def counting_build_part_file(*args, **kwargs):
        save("parts")
        return build_part_file(*args, **kwargs)

    def listing_plan_shard(dataset, video_ids, *args, **kwargs):
        save("started", list(video_ids))
        return plan_shard(dataset, video_ids, *args, **kwargs)

    def listing_write_shard(self, rows):
        path = write_shard(self, rows)
        save("written", [self.spec.modality, list(dict.fromkeys(r.video_id for r in rows))])
        return path

    config.ExtractConfig.build = counting_build
    shards.build_part_file = counting_build_part_file
    clip.seeded_build = audio.seeded_build = counting_seeded_build
    runner.plan_shard = listing_plan_shard
    FeatureSet.write_shard = listing_write_shard
