"""Progress events that every task's ``iter_`` generator yields, and the helpers that make and consume them."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, TypeVar

import numpy as np

R = TypeVar("R")


@dataclass
class Progress:
    """``done`` of ``total`` network evaluations; ``preview`` is the current x0 estimate on the model grid."""

    done: int
    total: int
    preview: np.ndarray | None = None
    message: str = ""


class Reporter:
    """Turns a task's loop steps into :class:`Progress` events, counting them against ``total``.

    A preview is attached on the first and the last event and otherwise at most every ``interval``
    seconds, and never sooner than ten times what the last one took to make (so previews cost at
    most about a tenth of the run); ``interval`` None: no previews.
    """

    def __init__(self, total: int, interval: float | None) -> None:
        self.total, self.interval, self.done, self._next = total, interval, 0, 0.0

    def event(self, message: str = "", preview: Callable[[], np.ndarray | None] | None = None) -> Progress:
        """The next event; ``preview()`` is called only when a preview is due."""
        self.done += 1
        picture = None
        now = time.perf_counter()
        if preview is not None and self.interval is not None and (
                self.done in (1, self.total) or now >= self._next):
            picture = preview()
            took = time.perf_counter() - now
            self._next = time.perf_counter() + max(self.interval, 10 * took)
        return Progress(self.done, self.total, picture, message)

    def follow(self, loop: Generator[Any, None, R], message: str | Callable[[Any], str] = "",
               preview: Callable[[Any], np.ndarray | None] | None = None) -> Generator[Progress, None, R]:
        """Drive a sampling loop with ``yield from``: an event per step (``preview(step)`` when due,
        ``message`` text or ``message(step)``); returns the loop's value."""
        while True:
            try:
                step = next(loop)
            except StopIteration as stop:
                return stop.value
            text = message(step) if callable(message) else message
            yield self.event(text, None if preview is None else lambda: preview(step))


def drive(gen: Generator[Any, None, R], callback: Callable[[Any], Any] | None = None) -> R:
    """Run a generator (a task's ``iter_`` form, or a sampling loop) to the end, passing each event to
    ``callback``, and return its value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
