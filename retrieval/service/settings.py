"""What ``python -m retrieval.serve`` is told: :class:`ServeSettings`, including the service's limits.

One typed place for every limit the service enforces (docs/retrieval.md "Service limits"); the CLI
(:mod:`retrieval.service.serve`) fills it from its flags, tests build it directly. Unknown keys are
refused. The bearer token is never a flag (a command line is visible to every user of the machine):
it comes from ``$TVR_SERVE_TOKEN`` or ``--token-file``.
"""
from __future__ import annotations

import ipaddress
import os

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from data.names import check_name
from data.settings import QueryPrecision
from retrieval.query.search import RERANK_DEPTH

TOKEN_ENV = "TVR_SERVE_TOKEN"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ServeSettings(BaseModel):
    """The service's options and limits (defaults: a loopback service for one user)."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = None             # one index: this dataset (with ``run``); more: ``indexes``
    run: str | None = None                 # None: the dataset's serving run
    indexes: list[str] = Field(default_factory=list)   # more indexes, "<dataset>" or "<dataset>/<run>"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    poll_s: float = Field(1.0, ge=0)       # how often `current` is checked (0: never)
    max_batch: int = Field(64, ge=1)
    wait_ms: float = Field(2.0, ge=0)      # how long a batch waits for more queries after its first
    rerank_depth: int = Field(RERANK_DEPTH, ge=1)
    device: str | None = None              # None: $TVR_DEVICE
    threads: int | None = Field(None, ge=1)  # torch CPU threads of the query encoder (None: torch's choice)
    lone_threads: int | None = Field(1, ge=0)  # torch threads for a batch of one query (0 / None: as threads)
    query_precision: QueryPrecision | None = None   # None: $TVR_QUERY_PRECISION (data.settings)
    # ---- limits (docs/retrieval.md "Service limits") -----------------------------------------------
    max_queue: int = Field(256, ge=1)              # queries waiting for the batcher; beyond: 503 + Retry-After
    request_timeout_s: float = Field(10.0, gt=0)   # a search's deadline from arrival to answer; past it: 504
    thumb_workers: int = Field(2, ge=1)            # threads making thumbnails (their own pool)
    thumb_queue: int = Field(32, ge=0)             # thumbnails waiting for a worker; beyond: 503 + Retry-After
    thumb_cache_mb: float = Field(256.0, ge=0)     # the thumbnail cache's size bound (LRU eviction)
    thumb_decode_s: float = Field(10.0, gt=0)      # wall time to find one thumbnail's frame; past it: 503
    header_timeout_s: float = Field(10.0, gt=0)    # a connection must send a request's headers within this
    keep_alive_s: float = Field(5.0, gt=0)         # an idle keep-alive connection is closed after this
    max_connections: int = Field(256, ge=1)        # open connections + running requests; beyond: 503
    allow_hosts: list[str] = Field(default_factory=list)   # Host names accepted besides loopback ("*": any)
    absolute_paths: bool = False                   # results carry abs_path (server paths) only when asked
    max_upload_mb: float = Field(32.0, gt=0)       # an uploaded image or clip larger than this: 413
    example_workers: int = Field(1, ge=1)          # searches by example (decode + encode) running at once
    example_queue: int = Field(4, ge=0)            # searches by example waiting; beyond: 503 + Retry-After
    example_timeout_s: float = Field(60.0, gt=0)   # a search by example's deadline (decoding a clip); past it: 504
    token: SecretStr | None = None                 # bearer token for the API and media (None: none asked)

    @field_validator("lone_threads")
    @classmethod
    def _zero_is_none(cls, value: int | None) -> int | None:
        return value or None

    @field_validator("dataset", "run")
    @classmethod
    def _one_path_part(cls, value: str | None, info) -> str | None:
        return None if value is None else check_name(value, info.field_name)

    @field_validator("token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().strip()) < 16:
            raise ValueError("the bearer token must be at least 16 characters (e.g. `openssl rand -hex 16`)")
        return None if value is None else SecretStr(value.get_secret_value().strip())

    @field_validator("indexes")
    @classmethod
    def _index_names(cls, value: list[str]) -> list[str]:
        for spec in value:
            parts = spec.split("/")
            if len(parts) > 2:
                raise ValueError(f"index {spec!r}: expected <dataset> or <dataset>/<run>")
            for part, what in zip(parts, ("dataset", "run")):
                check_name(part, what)
        return value

    @model_validator(mode="after")
    def _something_to_serve(self) -> "ServeSettings":
        if self.dataset is None and not self.indexes:
            raise ValueError("nothing to serve: give --dataset D [--run R] or one --index D[/R] per index")
        if self.run is not None and self.dataset is None:
            raise ValueError("--run needs --dataset (or give --index D/R)")
        return self

    def targets(self) -> list[tuple[str, str | None]]:
        """(dataset, run or None for its serving run) of every index to serve, in order: ``dataset``
        / ``run`` first, then ``indexes``."""
        named = [(self.dataset, self.run)] if self.dataset is not None else []
        for spec in self.indexes:
            dataset, _, run = spec.partition("/")
            named.append((dataset, run or None))
        return named

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def accepted_hosts(self) -> set[str] | None:
        """Host header names (without port) the service answers; None: any (``allow_hosts`` has ``*``)."""
        if "*" in self.allow_hosts:
            return None
        named = {h.strip("[]").lower() for h in self.allow_hosts}
        bound = self.host.strip("[]").lower()
        unspecified = bound in ("0.0.0.0", "::", "")
        return set(LOOPBACK_NAMES) | named | (set() if unspecified else {bound})


def token_from(env: dict | None = None, token_file: str | None = None) -> str | None:
    """The bearer token: the contents of ``token_file`` when given, else ``$TVR_SERVE_TOKEN``, else None."""
    if token_file:
        with open(token_file, encoding="utf-8") as fh:
            return fh.read().strip() or None
    return ((env if env is not None else os.environ).get(TOKEN_ENV) or "").strip() or None
