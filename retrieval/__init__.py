"""Embeddings -> FAISS index; search; Rank@K metrics; ``python -m retrieval.evaluate`` and ``.search``."""
