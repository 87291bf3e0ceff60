"""One background job at a time: proposals for the next cases, Propose again, fine-tuning.

A plain thread with a priority queue, so the API, the command line and the widget share it. Jobs are
``iter_``-style generators (they yield :class:`~napari_diffmed.progress.Progress` and return a
result); each job's progress, result or error is put on :attr:`Background.events` as an
:class:`Event` (a widget polls that queue on its GUI thread; nothing here touches Qt). ``cancel``
stops the running job at its next progress event.
"""

from __future__ import annotations

import itertools
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generator

URGENT, AHEAD = 0, 1  # priorities: what the person waits for, then proposals for later cases


@dataclass
class Event:
    """``kind`` is "started", "progress", "done", "failed" or "cancelled"; ``value`` its payload."""

    kind: str
    job: str
    case: str | None
    value: Any = None


class Cancelled(Exception):
    """Raised inside a job that was cancelled."""


class Background:
    """Runs jobs one at a time in a daemon thread; :meth:`close` stops it."""

    def __init__(self, on_event: Callable[[Event], None] | None = None) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.on_event = on_event
        self._jobs: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._pending: dict[tuple[str, str | None], int] = {}  # queued jobs and their best priority
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self.current: tuple[str, str | None] | None = None
        self._thread = threading.Thread(target=self._run, name="napari-diffmed labeling", daemon=True)
        self._thread.start()

    def submit(self, job: str, case: str | None, make: Callable[[], Generator], priority: int = AHEAD) -> bool:
        """Queue ``make()`` (called in the worker thread) unless the same job for the same case is running
        or queued at the same or a better priority (a better one moves it up); returns whether it was queued."""
        with self._lock:
            key = (job, case)
            if key == self.current or self._pending.get(key, priority + 1) <= priority:
                return False
            self._pending[key] = priority
        self._jobs.put((priority, next(self._order), job, case, make))
        return True

    def busy(self) -> bool:
        with self._lock:
            return self.current is not None or bool(self._pending)

    def pending(self) -> set[tuple[str, str | None]]:
        with self._lock:
            return set(self._pending) | ({self.current} if self.current else set())

    def cancel(self) -> None:
        """Stop the running job at its next progress event (queued jobs stay queued)."""
        self._cancel.set()

    def drop_queued(self) -> None:
        """Forget every queued job (the running one carries on)."""
        with self._lock:
            while not self._jobs.empty():
                self._jobs.get_nowait()
            self._pending.clear()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel the running job, drop the queue and stop the thread."""
        self.drop_queued()
        self.cancel()
        self._jobs.put((-1, next(self._order), None, None, None))
        self._thread.join(timeout)

    def _emit(self, event: Event) -> None:
        self.events.put(event)
        if self.on_event is not None:
            self.on_event(event)

    def _run(self) -> None:
        while True:
            priority, _, job, case, make = self._jobs.get()
            if job is None:
                return
            with self._lock:
                if self._pending.get((job, case)) != priority:
                    continue  # moved up and already run, or dropped
                del self._pending[(job, case)]
                self.current = (job, case)
            self._cancel.clear()
            self._emit(Event("started", job, case))
            try:
                result = self._drive(make())
            except Cancelled:
                self._emit(Event("cancelled", job, case))
            except Exception as err:  # reported to the front end; the runner carries on
                self._emit(Event("failed", job, case, f"{type(err).__name__}: {err}"))
            else:
                self._emit(Event("done", job, case, result))
            finally:
                with self._lock:
                    self.current = None

    def _drive(self, gen: Generator) -> Any:
        job, case = self.current
        try:
            while True:
                if self._cancel.is_set():
                    raise Cancelled()
                try:
                    event = next(gen)
                except StopIteration as stop:
                    return stop.value
                self._emit(Event("progress", job, case, event))
        finally:
            gen.close()
