"""The search service without HTTP: one :class:`~retrieval.query.search.Searcher` answering
micro-batched queries (:class:`~retrieval.service.batcher.MicroBatcher`), following ``current``.

:class:`SearchService`:

- **Hot swaps.** A watcher thread polls ``current`` every ``poll_s`` seconds; a changed build is
  opened in that thread (never in a request) and the searcher's state is replaced by one reference
  assignment. Each batch reads the reference once, so a response comes from one build and says
  which (``index.build_id``). The pointer value the answering build was opened for is the one read
  BEFORE opening it, so a build published while the first one is being verified is swapped in at
  the next poll.
- **Failed swaps are retried** with exponential backoff (1 s, 2 s, 4 s ... at most
  :data:`MAX_BACKOFF_S`) while ``current`` keeps naming the build; the old build answers
  meanwhile, and :meth:`health` says ``degraded`` with the last error and the next retry.
- **A build damaged while serving** (a file truncated, replaced or deleted after it was opened:
  :meth:`retrieval.index.layout.IndexBuild.check_files`, a few ``os.stat`` calls before every batch)
  never reaches FAISS or a memory map: the batch fails with
  :class:`~retrieval.index.layout.BuildDamaged` (the HTTP layer answers 503 naming the build),
  the service re-opens ``current`` at once, which falls back to the newest verified build, and
  :meth:`health` reports the damage (``degraded``) until a verified build answers.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from concurrent.futures import Future

from retrieval.index.layout import BuildDamaged
from retrieval.index.reader import current_build_id
from retrieval.query.search import Searcher, check_params, check_query
from retrieval.service.batcher import MicroBatcher

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0


class SearchService:
    """A loaded :class:`Searcher` answering micro-batched queries, following ``current``.

    ``searcher``: injectable (tests pass a searcher over a fake model). ``poll_s``: how often the
    ``current`` pointer is read (0 = never: no hot swaps). ``max_queue`` / ``timeout_s``: the
    batcher's queue bound and per-query deadline (:mod:`retrieval.service.batcher`).
    ``lone_threads``: torch CPU threads for a batch of one query (None: leave torch's setting
    alone); a batch of several uses the threads torch had when the service started. A lone short
    query's forward pass streams the text tower's weights once and splitting its small matrix
    products across threads mostly adds synchronisation (docs/retrieval.md, "Service benchmark"),
    while a batch has the rows to share.
    """

    def __init__(self, searcher: Searcher, *, poll_s: float = 1.0, max_batch: int = 64, wait_s: float = 0.002,
                 lone_threads: int | None = None, max_queue: int = 256, timeout_s: float = math.inf):
        self.searcher = searcher
        self.lone_threads = lone_threads
        self.batch_threads = None
        if lone_threads is not None:
            import torch

            self.batch_threads = torch.get_num_threads()
        self.problem: str | None = None         # why the newest build is not the one answering
        self._seen = searcher.state.pointer     # the pointer value the answering build was opened for
        self._retry: dict | None = None         # {"build", "attempts", "at" (monotonic), "error"}
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.batcher = MicroBatcher(self._answer, max_batch=max_batch, wait_s=wait_s, max_queue=max_queue,
                                    timeout_s=timeout_s)
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
        try:
            state.build.check_files()               # before any read of its (possibly mapped) files
        except BuildDamaged as err:
            self._recover(err)
            raise
        return self.searcher.search(texts, ks, state=state, params=params)

    def query(self, text: str, k: int = 10, timeout: float = 60.0) -> dict:
        """The ``retrieval.search --json`` dict for ``text`` (validated first; raises QueryError)."""
        check_query(text, k)
        return self.batcher.submit(text, k).result(timeout)

    def submit(self, text: str, k: int, params: dict | None = None) -> Future:
        """Validated, queued query (``params``: per-query search parameters, retrieval.search's
        ``SEARCH_PARAMS``); the future resolves to the result dict (for async callers). Raises
        QueryError, or :class:`~retrieval.service.batcher.Overloaded` when the queue is full."""
        check_query(text, k)
        return self.batcher.submit(text, k, check_params(params))

    # ---- hot swaps and recovery -----------------------------------------------------------------
    def check_for_new_build(self) -> bool:
        """Open the build ``current`` names when it is not the one answering (or a failed open is
        due for its retry, or the answering build was damaged); True when a new build was swapped in."""
        s = self.searcher
        named = current_build_id(s.dataset, s.run, s.settings)
        retry = self._retry
        if retry is not None and retry["build"] != named:
            retry = self._retry = None              # the pointer moved on: a fresh first try
        due = retry is not None and time.monotonic() >= retry["at"]
        damage = s.state.build.damage()
        if named == self._seen and not due and damage is None:
            return False
        if retry is not None and not due:
            return False
        return self._open(named, damage)

    def _recover(self, err: BuildDamaged) -> None:
        """The answering build changed on disk: re-open ``current`` now (falls back to a verified build)."""
        retry = self._retry
        if retry is not None and time.monotonic() < retry["at"]:
            return                                   # recovery already failed: the next try is scheduled
        log.error("%s; re-opening the index", err)
        s = self.searcher
        self._open(current_build_id(s.dataset, s.run, s.settings), str(err))

    def _open(self, named: str | None, damage: str | None) -> bool:
        s = self.searcher
        with self._swap_lock:
            before = s.state
            if damage is None and before.build.damage() is None and named == self._seen and self._retry is None:
                return False                         # another thread already swapped
            try:
                state = s.open()
            except Exception as err:                 # keep the old build; retry later; say why in /healthz
                attempts = (self._retry or {}).get("attempts", 0) + 1
                wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (attempts - 1))
                self._retry = {"build": named, "attempts": attempts, "at": time.monotonic() + wait,
                               "error": str(err)[:300]}
                self.problem = (f"build {named!r} could not be opened ({str(err)[:300]}); still answering "
                                f"from build {before.build_id}" + (f" ({damage})" if damage else ""))
                log.warning("%s; attempt %d, next in %.0f s", self.problem, attempts, wait)
                return False
            self._retry = None
            self._seen = state.pointer
            swapped = state.build_id != before.build_id
            s.state = state                          # the swap: one reference
            self.swaps += swapped
            self.problem = f"{damage}; now answering from build {state.build_id}" if damage else None
            self._note_fallback()
        if swapped:
            log.info("now answering from build %s", state.build_id)
        return swapped

    def _note_fallback(self) -> None:
        warning = self.searcher.state.build.warning
        if warning:
            self.problem = f"{self.problem}; {warning}" if self.problem else warning

    def _watch(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.check_for_new_build()
            except Exception as err:                 # a watcher that dies silently would stop swaps
                self.problem = f"watching for new builds failed: {str(err)[:300]}"
                log.exception("build watcher")

    # ---- status ---------------------------------------------------------------------------------
    def health(self) -> dict:
        """Status of the answering build; never waits for a query or a swap (a few ``os.stat``)."""
        s = self.searcher
        state = s.state
        damage = state.build.damage()
        problems = [p for p in (f"index build {state.build_id} changed on disk after it was opened: {damage}"
                                if damage else None, self.problem) if p]
        retry = self._retry
        return {"status": "degraded" if problems else "ok", "build_id": state.build_id,
                "dataset": s.dataset, "run": s.run, "model": s.loaded.name, "query_precision": s.encoder.precision,
                "random_weights": bool(s.loaded.random_weights), "problem": "; ".join(problems) or None,
                "last_error": retry["error"] if retry else None,
                "next_retry_in_s": round(max(0.0, retry["at"] - time.monotonic()), 1) if retry else None}

    def info(self) -> dict:
        s = self.searcher
        b = self.batcher
        return {**self.health(), "index": dict(s.state.info), "device": s.device,
                "fine_grained": bool(s.loaded.fine_grained),
                "rerank_depth": s.rerank_depth if s.loaded.fine_grained else None,
                "notes": list(s.state.notes), "swaps": self.swaps,
                "batching": {"max_batch": b.max_batch, "wait_ms": 1000 * b.wait_s, "batches": b.n_batches,
                             "queries": b.n_queries, "busy_s": round(b.busy_s, 4),
                             "max_queue": b.max_queue, "waiting": b.waiting, "refused": b.n_refused,
                             "expired": b.n_expired, "timeout_s": b.timeout_s if math.isfinite(b.timeout_s) else None,
                             "threads": {"lone": self.lone_threads, "batch": self.batch_threads}}}

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
        self.batcher.close()
