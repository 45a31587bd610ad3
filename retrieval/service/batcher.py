"""Micro-batching of queries with backpressure and deadlines: :class:`MicroBatcher`.

Requests queue up; one worker thread takes what is waiting (up to ``max_batch``; when more than
one is waiting, also what arrives within ``wait_s``; a lone request is answered at once) and
answers them with ONE call of ``answer``, so concurrent clients share a forward pass.

Limits:

- the queue holds at most ``max_queue`` requests; :meth:`MicroBatcher.submit` beyond that raises
  :class:`Overloaded` at once (the service answers 503 with ``Retry-After``), so a burst cannot
  grow memory or latency without bound;
- each request carries a deadline (``timeout_s`` from its arrival): a request whose deadline has
  passed, or whose future was cancelled (its client gave up), is dropped before the batch is
  computed, so a slow query ahead of it costs the others its own time only once;
- the worker never dies of a request: a failed batch hands its exception to each waiting future,
  and a future that is already cancelled or resolved is skipped.
"""
from __future__ import annotations

import logging
import math
import queue
import threading
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full: ask again after ``retry_after_s`` seconds."""

    def __init__(self, waiting: int, retry_after_s: int):
        super().__init__(f"the search queue is full ({waiting} queries waiting); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class DeadlineExceeded(TimeoutError):
    """A query not answered within its deadline."""


@dataclass
class _Request:
    text: str
    k: int
    future: Future
    params: dict | None = None
    deadline: float = field(default=math.inf)     # time.monotonic() after which it is dropped


def _resolve(future: Future, result=None, error: BaseException | None = None) -> None:
    """Set a future's outcome unless its client already gave up (cancelled) or it is resolved."""
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except InvalidStateError:           # cancelled between the check and the set
        pass


class MicroBatcher:
    """Answer ``(text, k, params)`` requests in batches with ``answer(texts, ks, params) -> results``."""

    def __init__(self, answer: Callable[[list[str], list[int], list], list], *, max_batch: int = 64,
                 wait_s: float = 0.002, max_queue: int = 256, timeout_s: float = math.inf):
        self.answer, self.max_batch, self.wait_s = answer, int(max_batch), float(wait_s)
        self.max_queue, self.timeout_s = int(max_queue), float(timeout_s)
        self.n_batches = self.n_queries = 0     # counters for /api/info (mean batch size)
        self.n_refused = self.n_expired = 0     # queue full / dropped at their deadline or cancelled
        self.busy_s = 0.0                       # time spent answering batches (model + search)
        self._queue: queue.Queue[_Request | None] = queue.Queue(maxsize=self.max_queue)
        self._thread = threading.Thread(target=self._loop, name="query-batcher", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, text: str, k: int, params: dict | None = None, timeout_s: float | None = None) -> Future:
        """Queue a request; raises :class:`Overloaded` when the queue is full."""
        future: Future = Future()
        limit = self.timeout_s if timeout_s is None else float(timeout_s)
        try:
            self._queue.put_nowait(_Request(text, k, future, params, time.monotonic() + limit))
        except queue.Full:
            self.n_refused += 1
            mean = self.busy_s / self.n_batches if self.n_batches else 0.1
            raise Overloaded(self.max_queue, max(1, math.ceil(mean * self.max_queue / self.max_batch))) from None
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

    def _live(self, batch: list[_Request]) -> list[_Request]:
        """The requests still worth answering: not cancelled, deadline not passed (those fail now)."""
        now = time.monotonic()
        live = []
        for r in batch:
            if r.future.cancelled():
                self.n_expired += 1
            elif now > r.deadline:
                self.n_expired += 1
                _resolve(r.future, error=DeadlineExceeded(
                    f"the query waited past its deadline of {self.timeout_s:g} s (the service is overloaded)"))
            else:
                live.append(r)
        return live

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            batch = self._live(batch)
            if not batch:
                continue
            self.n_batches += 1
            self.n_queries += len(batch)
            start = time.perf_counter()
            try:
                results = self.answer([r.text for r in batch], [r.k for r in batch], [r.params for r in batch])
            except Exception as err:            # handed to each waiting request, never lost
                results, error = None, err
            else:
                error = None
            finally:
                self.busy_s += time.perf_counter() - start
            try:
                for i, r in enumerate(batch):
                    _resolve(r.future, None if error else results[i], error)
            except Exception:                   # e.g. fewer results than requests: never the worker's end
                log.exception("query batcher: could not hand results to their requests")
                for r in batch:
                    _resolve(r.future, error=RuntimeError("internal error while answering the query"))
