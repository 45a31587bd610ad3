"""Scheduled re-indexing: bring ``indexes/<dataset>/<run>`` up to date with the dataset's manifest.

``reindex(dataset, run)`` (:mod:`.run`) compares the manifest with the per-video state of the
``current`` index build (``videos.parquet``: video_id, path, the file's content fingerprint,
indexed or not; :mod:`.plan`) and

- extracts (:mod:`.extract`, through ``extractors``) only the videos that are new or whose file
  changed (other path or fingerprint: a replaced file; the one definition in
  :mod:`data.fingerprint`, taken from the files as they are now, so a replaced file is seen even
  before ``data.prepare`` runs again). A changed video's stored rows carry the old fingerprint, so
  extraction redoes it and the store's newest-row-wins rule (then compaction) keeps only the new
  features;
- encodes (``fusion.api.video_id_vector_batches``) only those videos, drops removed ones and reuses
  the stored vectors (``vectors.npy``) of every unchanged video, assembling the new build's vectors
  on disk ``batch`` rows at a time (:mod:`.assemble`; never all in memory);
- writes the new build beside the old one and then swaps ``current`` atomically
  (``retrieval.index.writer.stage_build`` / ``publish_build``). Searches keep answering from the old
  build until the swap; a failed or killed run leaves the old build current, and the next run redoes it.

The new build is made with the current build's index options (``info.json["build_options"]``:
index type, memory budget, factory string, shard count, tuning target; :func:`.plan.index_options`)
unless others are given; other options than the current build's make a rebuild even when nothing
else changed. ``mapper`` builds the shards as jobs elsewhere (the flow's Dask task runner).

Nothing new -> no new build, no extraction, no model forward pass. Vectors are reused only when the
old build was made with the same extractor ids and the same model (a hash of its weights and
config); otherwise every video is encoded again (extraction still skips what the store holds).
A video whose extraction failed is not retried until its file changes (the store's retry still
happens when its frames become ``ok`` by other means, e.g. ``python -m flows.extract``).

``python -m retrieval.reindex <dataset> [--run R]`` (:mod:`.cli`, ``tvr-reindex``) runs it as plain
Python; the Prefect flow ``flows/reindex.py`` wraps the same function for the daily schedule.
This is the write side of the index: no reader imports it.
"""
