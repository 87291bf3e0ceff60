"""Run a task's ``iter_`` generator off the GUI thread, with progress, preview and Cancel."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generator

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info

from ..progress import Progress


class JobRunner:
    """One job at a time for a widget: starts the worker, throttles previews, wires Run/Cancel.

    ``on_preview`` and ``on_done`` run on the GUI thread (Qt delivers the worker's
    signals there); the generator runs in a worker thread and never touches layers.
    """

    def __init__(self, run_button, cancel_button, status_label=None, preview_interval: float = 0.3,
                 progress_bar=None) -> None:
        self.run_button, self.cancel_button, self.status = run_button, cancel_button, status_label
        self.progress = progress_bar
        self.preview_interval = preview_interval
        self.worker = None
        self._last_preview = 0.0
        self.cancel_button.enabled = False
        self.cancel_button.changed.connect(self.cancel)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self, job: Callable[[], Generator[Progress, None, Any]], total: int,
        on_done: Callable[[Any], None], on_preview: Callable[[Progress], None] | None = None,
        description: str = "napari-diffmed",
    ):
        """Start ``job()`` in a thread; returns the worker (tests wait on its ``finished`` signal)."""
        if self.worker is not None:
            show_info("a job is already running; cancel it first")
            return None

        running = []  # the job's generator, closed on Cancel (a server job stops there too)

        def _gen():
            running.append(job())
            with _inference_mode():
                result = yield from running[0]
            return result

        worker = create_worker(_gen, _progress={"total": max(1, total), "desc": description})
        self._last_preview = 0.0

        def yielded(event: Progress) -> None:
            self._set_status(f"{event.message or 'step'} {event.done}/{event.total}")
            if self.progress is not None:
                self.progress.max, self.progress.value = event.total, event.done
            now = time.monotonic()
            final = event.done >= event.total
            if on_preview is not None and event.preview is not None and (
                final or now - self._last_preview >= self.preview_interval
            ):
                self._last_preview = now
                on_preview(event)

        def returned(result: Any) -> None:
            try:
                on_done(result)
                self._set_status("done")
            except Exception as err:  # a failure adding layers must not kill the GUI
                show_error(f"{description}: {err}")
                self._set_status(f"failed: {err}")

        def errored(err: Exception) -> None:
            show_error(f"{description} failed: {err}")
            self._set_status(f"failed: {err}")

        def aborted() -> None:
            self._set_status("cancelled")
            for gen in running:  # suspended at a yield: closing it off the GUI thread is safe and never blocks here
                threading.Thread(target=gen.close, daemon=True).start()

        def finished() -> None:
            self.worker = None
            self.run_button.enabled = True
            self.cancel_button.enabled = False

        worker.yielded.connect(yielded)
        worker.returned.connect(returned)
        worker.errored.connect(errored)
        worker.aborted.connect(aborted)
        worker.finished.connect(finished)
        self.worker = worker
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self._set_status("starting...")
        worker.start()
        return worker

    def cancel(self, *_: Any) -> None:
        """Stop the job at its next step; no result layer is added."""
        if self.worker is not None:
            self._set_status("cancelling...")
            self.worker.quit()

    def _set_status(self, text: str) -> None:
        if self.status is not None:
            self.status.value = text


class _inference_mode:
    """``torch.inference_mode`` for the worker thread, importing torch lazily."""

    def __enter__(self):
        import torch

        self._ctx = torch.inference_mode()
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
