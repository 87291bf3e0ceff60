"""File work of a widget (reading a case, saving edits) in one background thread, in the order asked for."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable


class IOQueue:
    """``submit(work, done, what)`` runs ``work()`` in the queue's thread; :meth:`handle`, called on the GUI
    thread (by a timer), hands each finished value to its ``done`` in order; a failure (``ValueError`` or
    ``OSError``) goes to ``on_error(what, err)`` instead."""

    def __init__(self, on_error: Callable[[str, Exception], None]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-diffmed-io")
        self._pending: list[tuple[Future, Callable[[Any], None], str]] = []
        self._on_error = on_error

    def submit(self, work: Callable[[], Any], done: Callable[[Any], None], what: str) -> None:
        self._pending.append((self._pool.submit(work), done, what))

    def handle(self, wait: bool = False) -> None:
        """Pass on what has finished (``wait``: everything submitted so far, waiting for it)."""
        while self._pending and (wait or self._pending[0][0].done()):
            future, done, what = self._pending.pop(0)
            try:
                value = future.result()
            except (ValueError, OSError) as err:
                self._on_error(what, err)
                continue
            done(value)

    def close(self) -> None:
        self.handle(wait=True)
        self._pool.shutdown(wait=True)
