"""Test helper: run the search service's FastAPI app with uvicorn in a background thread, with the
service's own server configuration (retrieval.service.server: connection limits, header timeout).

Only tests import this (``python -m retrieval.serve`` runs uvicorn in the foreground)."""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Iterator

from fastapi import FastAPI

from retrieval.service.server import uvicorn_config
from retrieval.service.settings import ServeSettings


@contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0,
                    settings: ServeSettings | None = None) -> Iterator[str]:
    """Run ``app`` with uvicorn in a thread (default: loopback, a free port); yields the base URL."""
    import uvicorn

    config = uvicorn_config(app, settings or ServeSettings(dataset="unused"), host=host, port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start (see its log above)")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()
    try:
        yield f"http://{bound[0]}:{bound[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
