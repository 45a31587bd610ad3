"""The search service without HTTP: one :class:`~retrieval.query.search.Searcher`, micro-batched queries,
hot swaps of the ``current`` build.

- :class:`MicroBatcher`: requests queue up; one worker thread takes what is waiting (up to
  ``max_batch``; when more than one is waiting, also what arrives within ``wait_s``; a lone request
  is answered at once) and answers them with ONE call of the
  model and one FAISS search, so concurrent clients share a forward pass.
- :class:`SearchService`: a watcher thread polls ``current`` every ``poll_s`` seconds; a changed
  build is opened in that thread (never in a request) and the searcher's state is replaced by one
  reference assignment. Each batch reads the reference once, so a response comes from one build
  and says which (``index.build_id``). A build that cannot be opened leaves the old one answering
  and is reported by :meth:`SearchService.health`.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

from retrieval.index.reader import current_build_id
from retrieval.query.search import Searcher, check_params, check_query

log = logging.getLogger(__name__)


@dataclass
class _Request:
    text: str
    k: int
    future: Future
    params: dict | None = None


class MicroBatcher:
    """Answer ``(text, k)`` requests in batches with ``answer(texts, ks) -> results``."""

    def __init__(self, answer: Callable[[list[str], list[int]], list], *, max_batch: int = 64,
                 wait_s: float = 0.002):
        self.answer, self.max_batch, self.wait_s = answer, int(max_batch), float(wait_s)
        self.n_batches = self.n_queries = 0     # counters for /api/info (mean batch size)
        self.busy_s = 0.0                       # time spent answering batches (model + search)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="query-batcher", daemon=True)
        self._thread.start()

    def submit(self, text: str, k: int, params: dict | None = None) -> Future:
        future: Future = Future()
        self._queue.put(_Request(text, k, future, params))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _take(self) -> list[_Request] | None:
        """The next batch: everything already queued; when that is more than one request (clients
        are concurrent), also what arrives within ``wait_s``. A lone request is answered at once."""
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = None
        while len(batch) < self.max_batch:
            try:
                if deadline is None:
                    item = self._queue.get_nowait()
                else:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                if deadline is not None or len(batch) == 1:
                    break
                deadline = time.monotonic() + self.wait_s      # concurrent load: wait for stragglers
                continue
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            self.n_batches += 1
            self.n_queries += len(batch)
            start = time.perf_counter()
            try:
                results = self.answer([r.text for r in batch], [r.k for r in batch], [r.params for r in batch])
            except Exception as err:            # handed to each waiting request, never lost
                for r in batch:
                    r.future.set_exception(err)
                continue
            finally:
                self.busy_s += time.perf_counter() - start
            for r, result in zip(batch, results):
                r.future.set_result(result)


class SearchService:
    """A loaded :class:`Searcher` answering micro-batched queries, following ``current``.

    ``searcher``: injectable (tests pass a searcher over a fake model). ``poll_s``: how often the
    ``current`` pointer is read (0 = never: no hot swaps). ``lone_threads``: torch CPU threads for a
    batch of one query (None: leave torch's setting alone); a batch of several uses the threads torch
    had when the service started. A lone short query's forward pass streams the text tower's weights
    once and splitting its small matrix products across threads mostly adds synchronisation
    (docs/retrieval.md, "Service benchmark"), while a batch has the rows to share.
    """

    def __init__(self, searcher: Searcher, *, poll_s: float = 1.0, max_batch: int = 64, wait_s: float = 0.002,
                 lone_threads: int | None = None):
        self.searcher = searcher
        self.lone_threads = lone_threads
        self.batch_threads = None
        if lone_threads is not None:
            import torch

            self.batch_threads = torch.get_num_threads()
        self.problem: str | None = None         # why the newest build is not the one answering
        self._seen = current_build_id(searcher.dataset, searcher.run, searcher.settings)
        self.swaps = 0
        self.batcher = MicroBatcher(self._answer, max_batch=max_batch, wait_s=wait_s)
        self._stop = threading.Event()
        self._watcher = None
        if poll_s > 0:
            self._watcher = threading.Thread(target=self._watch, args=(poll_s,), name="build-watcher", daemon=True)
            self._watcher.start()
        self._note_fallback()

    # ---- answering ------------------------------------------------------------------------------
    def _answer(self, texts: list[str], ks: list[int], params: list[dict | None]) -> list[dict]:
        if self.lone_threads is not None:
            import torch

            threads = self.lone_threads if len(texts) == 1 else self.batch_threads
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)      # this thread's (the batcher's) parallel regions
        state = self.searcher.state                 # one read: the whole batch answers from one build
        return self.searcher.search(texts, ks, state=state, params=params)

    def query(self, text: str, k: int = 10, timeout: float = 60.0) -> dict:
        """The ``retrieval.search --json`` dict for ``text`` (validated first; raises QueryError)."""
        check_query(text, k)
        return self.batcher.submit(text, k).result(timeout)

    def submit(self, text: str, k: int, params: dict | None = None) -> Future:
        """Validated, queued query (``params``: per-query search parameters, retrieval.search's
        ``SEARCH_PARAMS``); the future resolves to the result dict (for async callers)."""
        check_query(text, k)
        return self.batcher.submit(text, k, check_params(params))

    # ---- hot swaps ------------------------------------------------------------------------------
    def check_for_new_build(self) -> bool:
        """Open the build ``current`` names when it is not the one answering; True when swapped."""
        s = self.searcher
        named = current_build_id(s.dataset, s.run, s.settings)
        if named == self._seen:                      # each pointer value is tried once
            return False
        self._seen = named
        try:
            state = s.open()
        except Exception as err:                    # keep the old build; say why in /healthz
            self.problem = (f"build {named!r} could not be opened ({str(err)[:300]}); still answering "
                            f"from build {s.state.build_id}")
            log.warning(self.problem)
            return False
        swapped = state.build_id != s.state.build_id
        s.state = state                              # the swap: one reference
        self.swaps += swapped
        self.problem = None
        self._note_fallback()
        if swapped:
            log.info("now answering from build %s", state.build_id)
        return swapped

    def _note_fallback(self) -> None:
        warning = self.searcher.state.build.warning
        if warning:
            self.problem = warning

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.check_for_new_build()
            except Exception as err:                 # a watcher that dies silently would stop swaps
                self.problem = f"watching for new builds failed: {str(err)[:300]}"
                log.exception("build watcher")

    # ---- status ---------------------------------------------------------------------------------
    def health(self) -> dict:
        s = self.searcher
        return {"status": "degraded" if self.problem else "ok", "build_id": s.state.build_id,
                "dataset": s.dataset, "run": s.run, "model": s.loaded.name, "query_precision": s.encoder.precision,
                "random_weights": bool(s.loaded.random_weights), "problem": self.problem}

    def info(self) -> dict:
        s = self.searcher
        b = self.batcher
        return {**self.health(), "index": dict(s.state.info), "device": s.device,
                "fine_grained": bool(s.loaded.fine_grained),
                "rerank_depth": s.rerank_depth if s.loaded.fine_grained else None,
                "notes": list(s.state.notes), "swaps": self.swaps,
                "batching": {"max_batch": b.max_batch, "wait_ms": 1000 * b.wait_s, "batches": b.n_batches,
                             "queries": b.n_queries, "busy_s": round(b.busy_s, 4),
                             "threads": {"lone": self.lone_threads, "batch": self.batch_threads}}}

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.batcher.close()
