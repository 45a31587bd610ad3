"""Progress events from library code, drawn at the edge: tqdm bars on a terminal, log lines elsewhere.

Library functions take ``progress: ProgressFn | None`` and call it with :class:`ProgressEvent`\\ s;
they never print. The command-line entry points (and the Prefect flows) turn events into output
with :class:`Bars`: one tqdm bar per task name when stderr is a terminal, otherwise (a log file, a
pipe, a Prefect flow run) one log line per task at most every ``interval_s`` seconds, plus the
line that completes it.

Example::

    with Bars.for_cli() as bars:
        train(..., progress=bars)          # "epoch 3/8" bar: steps, with the running loss
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

log = logging.getLogger("tvr.progress")


@dataclass(frozen=True)
class ProgressEvent:
    """``done`` of ``total`` ``unit``\\ s of ``task`` finished (``total`` None: unknown);
    ``info``: a few figures worth showing beside it (e.g. ``{"loss": 0.41}``)."""

    task: str
    done: int
    total: int | None = None
    unit: str = "it"
    info: dict = field(default_factory=dict)


ProgressFn = Callable[[ProgressEvent], None]


def _figures(info: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())


class Bars:
    """A :data:`ProgressFn` that draws bars (``tty=True``) or writes periodic lines to ``log``."""

    def __init__(self, *, tty: bool, log_fn: Callable[[str], None] | None = None, interval_s: float = 30.0):
        self.tty, self.interval_s = tty, interval_s
        self.log_fn = log_fn or log.info
        self._bars: dict[str, tqdm] = {}
        self._last: dict[str, float] = {}

    @classmethod
    def for_cli(cls, interval_s: float = 30.0) -> "Bars":
        """Bars when stderr is a terminal, log lines otherwise."""
        return cls(tty=sys.stderr.isatty(), interval_s=interval_s)

    def __call__(self, event: ProgressEvent) -> None:
        if self.tty:
            self._draw(event)
            return
        now = time.monotonic()
        finished = event.total is not None and event.done >= event.total
        if finished or now - self._last.get(event.task, -1e9) >= self.interval_s:
            self._last[event.task] = now
            of = f"/{event.total}" if event.total is not None else ""
            extra = f" ({_figures(event.info)})" if event.info else ""
            self.log_fn(f"{event.task}: {event.done}{of} {event.unit}{extra}")

    def _draw(self, event: ProgressEvent) -> None:
        bar = self._bars.get(event.task)
        if bar is None or bar.total != event.total or event.done < bar.n:
            if bar is not None:
                bar.close()
            bar = self._bars[event.task] = tqdm(total=event.total, desc=event.task, unit=event.unit,
                                                file=sys.stderr, dynamic_ncols=True)
        if event.info:
            bar.set_postfix_str(_figures(event.info), refresh=False)
        bar.update(event.done - bar.n)
        if event.total is not None and event.done >= event.total:
            bar.close()
            del self._bars[event.task]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> "Bars":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
