"""Datasets -> manifests, the synthetic-av generator, and the Parquet feature store."""
