"""Progress events that every task's ``iter_`` generator yields."""

from __future__ import annotations

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


def drive(gen: Generator[Progress, None, R], callback: Callable[[Progress], Any] | None = None) -> R:
    """Run an ``iter_`` task generator to completion, passing each event to ``callback``."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)
