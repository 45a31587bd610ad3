"""The HTTP server under the app: uvicorn, configured with the service's connection limits.

- ``limit_concurrency`` = ``max_connections``: past that many open connections plus running
  requests, uvicorn answers 503 at once instead of queueing without bound;
- ``timeout_keep_alive`` = ``keep_alive_s``: an idle keep-alive connection is closed;
- a **header timeout** (``header_timeout_s``, what nginx calls ``client_header_timeout`` and
  Apache ``RequestReadTimeout``): uvicorn 0.54 has none, so a connection that opens and then sends
  part of its headers, or nothing, is held forever (slowloris). :func:`header_timeout_protocol`
  subclasses uvicorn's h11 protocol: from the moment a connection opens, or a keep-alive
  connection starts sending its next request, the complete request headers must arrive within the
  limit, else the connection is closed;
- ``h11_max_incomplete_event_size`` = :data:`MAX_HEADER_BYTES`: larger request heads are refused.
"""
from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from retrieval.service.settings import ServeSettings

MAX_HEADER_BYTES = 16 * 1024


def header_timeout_protocol(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a limit on how long a request's headers may take to arrive."""

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _armed_for = None                           # the scope that was current when the timer started

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self.conn.their_state is h11.IDLE:
                self._arm()                         # a keep-alive connection starts its next request
            super().data_received(data)
            if self._header_timer is not None and self.scope is not self._armed_for:
                self._disarm()                      # the request line and headers are complete

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._armed_for = self.scope
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.scope is self._armed_for and not self.transport.is_closing():
                self.transport.close()              # no complete request head in time

    return HeaderTimeoutProtocol


def uvicorn_config(app, settings: ServeSettings, *, host: str | None = None, port: int | None = None) -> uvicorn.Config:
    """The uvicorn configuration of the service (``host`` / ``port``: override the settings')."""
    return uvicorn.Config(app, host=settings.host if host is None else host, port=settings.port if port is None else port,
                          log_level="warning", http=header_timeout_protocol(settings.header_timeout_s),
                          timeout_keep_alive=settings.keep_alive_s, limit_concurrency=settings.max_connections,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES)
