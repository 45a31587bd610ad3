"""Progress events from library code, drawn at the edge: tqdm bars on a terminal, log lines elsewhere.

Library functions take ``progress: ProgressFn | None`` and call it with :class:`ProgressEvent`\\ s;
they never print. The command-line entry points (and the Prefect flows) turn events into output
with :class:`Bars`: one tqdm bar per task name when stderr is a terminal, otherwise (a log file, a
pipe, a Prefect flow run) one line per task at most every ``interval_s`` seconds, plus its first
line and the line that completes it, each with the counts, the rate since the task's first event
(units per second) and the time left at that rate (ETA)::

    epoch 3/8: 120/400 step (loss 0.41), 6.2 step/s, ETA 45 s

Example::

    with Bars.for_cli() as bars:
        train(..., progress=bars)          # "epoch 3/8" bar: steps, with the running loss
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm


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


def _duration(seconds: float) -> str:
    """``seconds`` in words for a log line: ``42 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class _Pace:
    """A task's first event: when (``start``, clock seconds) and its ``done`` then (``first``);
    ``last_line``: when its last line was written."""

    start: float
    first: int
    last_line: float | None = None


class Bars:
    """A :data:`ProgressFn` that draws bars (``tty=True``) or writes lines to ``log_fn`` (default: stderr).

    ``interval_s``: least seconds between two lines of one task (not on a terminal); ``clock``:
    seconds, monotonic (tests pass a fake one)."""

    def __init__(self, *, tty: bool, log_fn: Callable[[str], None] | None = None, interval_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        self.tty, self.interval_s, self.clock = tty, interval_s, clock
        self.log_fn = log_fn or _to_stderr
        self._bars: dict[str, tqdm] = {}
        self._pace: dict[str, _Pace] = {}

    @classmethod
    def for_cli(cls, interval_s: float = 30.0) -> "Bars":
        """Bars when stderr is a terminal, lines on stderr otherwise (a pipe, a log file)."""
        return cls(tty=sys.stderr.isatty(), interval_s=interval_s)

    def __call__(self, event: ProgressEvent) -> None:
        if self.tty:
            self._draw(event)
            return
        now = self.clock()
        pace = self._pace.get(event.task)
        if pace is None or event.done < pace.first:      # a new task, or one that started again
            pace = self._pace[event.task] = _Pace(now, event.done)
        finished = event.total is not None and event.done >= event.total
        if finished or pace.last_line is None or now - pace.last_line >= self.interval_s:
            pace.last_line = now
            self.log_fn(self._line(event, pace, now, finished))
        if finished:
            del self._pace[event.task]

    @staticmethod
    def _line(event: ProgressEvent, pace: _Pace, now: float, finished: bool) -> str:
        of = f"/{event.total}" if event.total is not None else ""
        line = f"{event.task}: {event.done}{of} {event.unit}" + (f" ({_figures(event.info)})" if event.info else "")
        elapsed, count = now - pace.start, event.done - pace.first
        if elapsed <= 0 or count <= 0:
            return line
        rate = count / elapsed
        line += f", {rate:.3g} {event.unit}/s"
        if event.total is not None and not finished:
            line += f", ETA {_duration((event.total - event.done) / rate)}"
        return line

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
