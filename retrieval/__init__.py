"""Text-video retrieval over index builds of video embeddings, by role:

- :mod:`retrieval.index`: build folders, the FAISS layer, the read side and the write side
  (``python -m retrieval.index``, ``python -m retrieval.export``);
- :mod:`retrieval.reindex`: scheduled re-indexing (``python -m retrieval.reindex``);
- :mod:`retrieval.query`: free-text search and matching moments (``python -m retrieval.search``);
- :mod:`retrieval.service`: the search service (``python -m retrieval.serve``);
- :mod:`retrieval.evaluation`: Rank@K tables and the pipeline report (``python -m retrieval.evaluate``);
- :mod:`retrieval.runs`: loading a run's model through ``fusion.api``, shared by all of them.

The top-level ``search``, ``serve``, ``evaluate`` and ``export`` modules only expose those entry points.
"""
