"""The search service behind ``python -m retrieval.serve`` (:mod:`.serve`): a
:class:`~retrieval.service.core.SearchService` (model, text tower and index build loaded once,
micro-batched queries, hot swaps of ``current``), media helpers (:mod:`.media`: thumbnails by
seeking, video files) and the FastAPI app (:func:`~retrieval.service.app.create_app`).

Contract: imports the query side (:mod:`retrieval.query`) and the read side of the index only;
no index writer and no training code.
"""
