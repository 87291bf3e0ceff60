"""Run a task's ``iter_`` generator off the GUI thread, with progress, preview and Cancel."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Generator

from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer

from ..progress import Progress

HEAVY = ("torch", "monai")  # the settings checks build MONAI's schedulers; the jobs run torch


def heavy_ready() -> bool:
    """Whether torch and MONAI are imported, so that a check needing them costs milliseconds on the GUI thread.

    Before that, such checks run at the start of the job in its thread: importing them takes seconds (tens
    on a loaded machine), and two threads importing MONAI at once can deadlock on its circular imports, so
    the GUI thread never imports them itself.
    """
    import sys

    for name in HEAVY:
        module = sys.modules.get(name)
        if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
            return False
    return True


class JobRunner:
    """One job at a time for a widget: starts the worker, throttles previews, wires Run/Cancel.

    ``on_preview`` and ``on_done`` run on the GUI thread (Qt delivers the worker's signals there); the
    generator, and ``finish`` (the result's display preparation), run in a worker thread and never touch
    layers. ``on_done`` may return an iterable: one step of it (one layer added) runs per turn of the event
    loop, so that adding several layers never holds the GUI thread for all of them at once; the job ends
    (``running`` false, Run enabled again) after its last step. The widget's own progress bar is the one progress display; an error reaches the user once,
    through napari's notification of the worker's exception. A result that arrives after Cancel is dropped.
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
        description: str = "napari-diffmed", finish: Callable[[Any], Any] | None = None,
        check: Callable[[], Any] | None = None,
    ):
        """Start ``job()`` in a thread; returns the worker (tests wait on its ``finished`` signal).

        ``check()``, when given, runs in the worker before the job (a failure there is the job's error);
        ``finish(result)``, when given, runs in the worker after the job and its value goes to ``on_done``.
        """
        if self.worker is not None:
            show_info("a job is already running; cancel it first")
            return None

        running = []  # the job's generator, closed on Cancel (a server job stops there too)
        failed: list[Exception] = []
        adding: list = []  # the result's layer additions still to come
        ended: list[bool] = []  # the worker has finished

        taken = threading.Semaphore(1)  # the worker runs at most one event ahead of the GUI thread

        def _gen():
            if check is not None:
                check()
            running.append(job())
            with _inference_mode():
                while True:
                    try:
                        event = next(running[0])
                    except StopIteration as stop:
                        result = stop.value
                        break
                    while not taken.acquire(timeout=0.05) and not worker.abort_requested:
                        pass
                    yield event
            if worker.abort_requested:
                return None
            return result if finish is None else finish(result)

        worker = create_worker(_gen)
        # napari shows a worker's error twice: through its relay, and through its exception hook when the worker
        # re-raises it on the GUI thread. The re-raise stays (tests and scripts see it too); the relay goes.
        relay = getattr(worker, "_relay_error", None)
        if relay is not None:
            try:
                worker.errored.disconnect(relay)
            except (TypeError, RuntimeError):
                pass
        self._last_preview = 0.0
        if self.progress is not None:
            self.progress.max, self.progress.value = max(1, total), 0

        def yielded(event: Progress) -> None:
            taken.release()
            if worker.abort_requested:
                return
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
            if worker.abort_requested:  # Cancel came after the last step: no result layer
                self._set_status("cancelled")
                return
            try:
                steps = on_done(result)
            except Exception as err:  # a failure adding layers must not kill the GUI
                show_error(f"{description}: {err}")
                self._set_status(f"failed: {err}")
                return
            if steps is None:
                self._done()
            else:
                adding.append(iter(steps))
                QTimer.singleShot(0, advance)

        def advance() -> None:
            """One step of ``on_done``'s layer additions per turn of the event loop."""
            try:
                next(adding[0])
            except StopIteration:
                adding.clear()
                self._done()
            except Exception as err:
                adding.clear()
                show_error(f"{description}: {err}")
                self._set_status(f"failed: {err}")
            else:
                QTimer.singleShot(0, advance)
                return
            if ended:
                release()

        def errored(err: Exception) -> None:  # napari itself notifies the user of a worker's exception
            failed.append(err)
            self._set_status(f"failed: {err}")

        def aborted() -> None:
            self._set_status("cancelled")
            for gen in running:  # suspended at a yield: closing it off the GUI thread is safe and never blocks here
                threading.Thread(target=gen.close, daemon=True).start()

        def finished() -> None:
            ended.append(True)
            if worker.abort_requested and not failed:  # also when Cancel came after the last step
                self._set_status("cancelled")
            if not adding:  # else the last layer addition ends the job
                release()

        def release() -> None:
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

    def _done(self) -> None:
        if self.status is not None and not str(self.status.value).startswith("done"):
            self.status.value = "done"

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
