"""The query side: free text in, ranked videos out (:mod:`.search`: :class:`~.search.Searcher`,
``python -m retrieval.search``), and the best-matching moment of each video (:mod:`.spans`).

Contract: imports only the read side of the index (:mod:`retrieval.index.reader` and the layout /
FAISS modules it uses), never a writer; the query is encoded through ``fusion.api``.
"""
