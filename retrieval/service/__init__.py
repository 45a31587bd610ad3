"""The search service behind ``python -m retrieval.serve`` (:mod:`.serve`): a
:class:`~retrieval.service.core.SearchService` (model, text tower and index build loaded once,
micro-batched queries (:mod:`.batcher`: bounded queue, deadlines), hot swaps of ``current``), the
thumbnail cache with its own pool (:mod:`.thumbs`) and frame seeking (:mod:`.media`), the FastAPI
app (:func:`~retrieval.service.app.create_app`) behind its guard (:mod:`.guard`: path bytes, Host,
token, one JSON error shape), its settings and limits (:mod:`.settings`) and the uvicorn
configuration (:mod:`.server`: connection limits, header timeout).

Contract: imports the query side (:mod:`retrieval.query`) and the read side of the index only;
no index writer and no training code.
"""
