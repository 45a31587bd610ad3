"""Which Prefect task runner a flow's per-shard tasks go to: this machine, or a Dask cluster.

``task_runner()`` picks, from explicit arguments or the settings (``TVR_DASK_ADDRESS``,
``TVR_DASK_LOCAL_WORKERS``):

- an address -> ``DaskTaskRunner(address=...)``: an existing Dask scheduler (``dask scheduler`` +
  ``dask worker`` processes started elsewhere, see docs/dask.md);
- N local workers -> a temporary ``distributed.LocalCluster`` of N worker processes with one thread
  each, created when the flow run starts and closed when it ends;
- neither -> Prefect's ``ThreadPoolTaskRunner`` with one thread: shards run one after another in the
  flow's own process (the default).

A flow declares ``task_runner=SettingsTaskRunner()``: it stands for "the runner the settings
choose" and turns into ``task_runner()`` only when a flow run starts (Prefect calls
``duplicate()`` on the flow's runner then), so importing a flow module never reads the settings and
a deployment run uses the settings of the worker that runs it.

Work is scheduled by Dask itself through prefect-dask; nothing here queues or dispatches tasks.

When a run on an existing cluster fails, :func:`unreachable_scheduler` tells whether the scheduler
is gone (killed, stopped, its machine lost), so the command can say that in one line; and
:func:`console_without_tracebacks` keeps the tracebacks that Prefect's flow engine and the Dask
client log on such a failure off the console (the flow run's log on the Prefect server keeps the
engine's). What a lost worker or scheduler costs: docs/dask.md "Lost workers, lost scheduler".
"""
from __future__ import annotations

import logging
import socket
from contextlib import contextmanager
from typing import Any, Iterator, NoReturn

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from data.settings import Settings, get_settings


def task_runner(address: str | None = None, local_workers: int | None = None,
                settings: Settings | None = None) -> TaskRunner:
    """A task runner for ``address`` / ``local_workers``; arguments left ``None`` come from settings."""
    settings = settings or get_settings()
    address = settings.dask_address if address is None else address
    workers = settings.dask_local_workers if local_workers is None else local_workers
    if workers < 0:
        raise ValueError(f"local Dask workers {workers}: must be 0 (off) or more")
    if address and workers:
        raise ValueError(f"give either a Dask scheduler address ({address!r}, TVR_DASK_ADDRESS) or a number of "
                         f"local Dask workers ({workers}, TVR_DASK_LOCAL_WORKERS), not both")
    if address:
        return DaskTaskRunner(address=address)
    if workers:
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                              "dashboard_address": ":0"})
    return ThreadPoolTaskRunner(max_workers=1)


class SettingsTaskRunner(TaskRunner):
    """A flow's default runner: :func:`task_runner` from the settings as they are when a flow run
    starts. Prefect never submits to the flow's own runner; it enters ``duplicate()`` per run."""

    def duplicate(self) -> TaskRunner:
        return task_runner()

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Any = None,
               dependencies: Any = None) -> NoReturn:
        raise RuntimeError("SettingsTaskRunner only chooses a runner: submit to its duplicate()")


def describe(runner: TaskRunner) -> str:
    """One line for logs: where the tasks of ``runner`` run."""
    if isinstance(runner, DaskTaskRunner):
        if runner.address:
            return f"Dask cluster at {runner.address}"
        return f"local Dask cluster of {runner.cluster_kwargs.get('n_workers')} worker processes"
    return "this process (shards one after another)"


def require_api_server(runner: TaskRunner) -> None:
    """Dask workers must report to a Prefect server they can reach: refuse the ephemeral in-process one."""
    from prefect.settings import PREFECT_API_URL

    if isinstance(runner, DaskTaskRunner) and not PREFECT_API_URL.value():
        raise RuntimeError("the Dask task runner needs a running Prefect server (PREFECT_API_URL is not set); "
                           "start one, e.g. `python -m flows.local up` and `eval \"$(python -m flows.local env)\"`")


def unreachable_scheduler(runner: TaskRunner | None, timeout_s: float = 5.0) -> str | None:
    """The address of ``runner``'s existing Dask scheduler (``DaskTaskRunner(address=...)``, TCP or
    TLS) when it does not accept a connection now; None when it does, or for any other runner."""
    if not (isinstance(runner, DaskTaskRunner) and runner.address):
        return None
    from distributed.comm.addressing import parse_address, parse_host_port

    protocol, location = parse_address(runner.address)
    if protocol not in ("tcp", "tls"):
        return None
    try:
        socket.create_connection(parse_host_port(location, 8786), timeout=timeout_s).close()
    except OSError:
        return runner.address
    return None


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of each record without its traceback (``exc_info``, ``stack_info``) through ``inner``."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None, "stack_info": None})
        return self.inner.format(bare)


@contextmanager
def console_without_tracebacks() -> Iterator[None]:
    """While the block runs, console log handlers (stream handlers of any logger) print each
    record's message but not its traceback; other handlers (Prefect's API log) are unchanged."""
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    consoles = {h for lg in loggers for h in lg.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)}
    saved = {h: h.formatter for h in consoles}
    for handler, formatter in saved.items():
        handler.setFormatter(_WithoutTraceback(formatter or logging.Formatter()))
    try:
        yield
    finally:
        for handler, formatter in saved.items():
            handler.setFormatter(formatter)
