"""The search service behind ``python -m retrieval.serve``: a :class:`~retrieval.service.core.SearchService`
(model, text tower and index build loaded once, micro-batched queries, hot swaps of ``current``),
media helpers (thumbnails by seeking, video files) and the FastAPI app (:func:`~retrieval.service.app.create_app`)."""
