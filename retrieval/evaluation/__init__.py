"""Evaluation: Rank@K of a model or a precomputed matrix (:mod:`.evaluate`, ``python -m
retrieval.evaluate``), R@K through a FAISS index (:mod:`.ranked`), the tables (:mod:`.report`)
and the pipeline's report page (:mod:`.pipeline_report`).

Contract: the metrics themselves are :mod:`data.metrics`; this package imports only the FAISS layer
of :mod:`retrieval.index` (never a build writer) and loads models through ``fusion.api``.
"""
