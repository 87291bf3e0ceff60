"""The base of the task widgets (Synthesize, Segment, Inpaint, Anomaly map).

It holds what they share: the model choice, where the job runs (device, this computer or a server),
Run and Cancel, one progress bar and a status line, the job runner with its preview layer, and errors
shown once through napari's notifications. A widget adds the settings it shows, turns them into a
:class:`Job` on Run (:meth:`TaskWidget.prepare`, on the GUI thread: read values, copy layers, check),
and adds the result's layers (:meth:`TaskWidget.add_result`, one per turn of the event loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Generator, Iterator, Sequence

from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton
from napari.utils.notifications import show_error, show_info

from ..device import DEVICE_CHOICES
from ..models import list_models
from .backend import BackendChoice
from .dock import short_tab_title
from .jobs import JobRunner, heavy_ready
from .layers import PreviewLayer


@dataclass
class Job:
    """What Run starts: ``start()`` makes the task's generator in the worker thread; ``total`` is the progress
    total (network calls); ``finish(result)``, also in the worker, prepares what the layers show.

    ``check()`` holds the checks that need torch or MONAI and returns the progress total: it runs on the GUI
    thread when they are imported (a bad value refuses the run at once), else first thing in the job.
    """

    start: Callable[[], Generator[Any, None, Any]]
    total: int | None = None
    finish: Callable[[Any], Any] | None = None
    check: Callable[[], int] | None = None


class TaskWidget(Container):
    """A task's widget: subclasses set ``tab``, ``title`` and ``model_task``, build their fields, call
    :meth:`lay_out`, and implement :meth:`prepare`, :meth:`add_result` and :meth:`show_preview`."""

    tab: ClassVar[str]  # the dock's tab title
    title: ClassVar[str]  # names the task in messages
    model_task: ClassVar[str]  # the models offered: "image" or "segmentation"

    def __init__(self, viewer, default_model: str | None = None, device: str = "auto") -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        names = [entry.name for entry in list_models(task=self.model_task)]
        self.model = ComboBox(label="model", choices=names, value=default_model if default_model in names else None,
                              nullable=True, tooltip="shipped and user models ($NAPARI_DIFFMED_MODELS)")
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.safetensors", nullable=True,
                                   tooltip="NAME.safetensors with NAME.json beside it; overrides the list")
        self.device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value=device)
        self.backend = BackendChoice(self.device)
        self.run_button, self.cancel_button = PushButton(text="Run"), PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        self.runner = JobRunner(self.run_button, self.cancel_button, self.status, progress_bar=self.progress)
        self.preview = PreviewLayer(viewer)
        self._adding = False  # a result's layers are being added (they take the preview)
        self.worker = None
        self.run_button.changed.connect(self.run)
        short_tab_title(self, self.tab)

    def lay_out(self, inputs: Sequence = (), options: Sequence = (), extras: Sequence = (),
                review: Sequence = ()) -> None:
        """The form, top to bottom: the input layers, the model, the task's options, where it runs, extras
        (such as the preprocessing panel), Run/Cancel, progress and status, then what reviews a result."""
        buttons = Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)
        self.extend([*inputs, self.model, self.model_file, *options, self.device, self.backend, *extras, buttons,
                     self.progress, self.status, *review])

    # --- the model ----------------------------------------------------------------------------------

    def model_source(self) -> str | None:
        """The model file if one is given, else the chosen name."""
        path = self.model_file.value
        return str(path) if path not in (None, Path("."), Path("")) else self.model.value

    def read_card(self):
        """The chosen model's card (``ModelCardError``, ``OSError`` or ``ValueError`` when it cannot be read);
        None when no model is chosen. Reading the card loads no weights."""
        from ..models import ModelCard, resolve
        from ..models.checkpoint import card_path

        source = self.model_source()
        return None if source is None else ModelCard.read(card_path(resolve(source)))

    # --- running ------------------------------------------------------------------------------------

    def prepare(self) -> Job:
        """Read the widget's values and layers into a job (GUI thread); a ``ValueError`` or ``OSError``
        refuses the run with its message."""
        raise NotImplementedError

    def add_result(self, result: Any) -> Iterator[None]:
        """Add the result's layers (GUI thread), yielding after each: one layer per turn of the event loop."""
        raise NotImplementedError

    def show_preview(self, event) -> None:
        """Show a running job's preview (GUI thread, throttled by the runner)."""

    def fail(self, message: str) -> None:
        """Refuse a run: one napari notification and the status line."""
        show_error(f"{self.title}: {message}")
        self.status.value = f"failed: {message}"

    def run(self, *_: Any):
        """Start a job with the current values; returns the worker (None when the input is refused)."""
        if self.runner.running:  # the running job's layers are placed from this widget's state: leave it be
            show_info("a job is already running; cancel it first")
            return None
        try:
            job = self.prepare()
            if job.check is not None and heavy_ready():
                job.total, job.check = job.check(), None
        except (ValueError, OSError) as err:
            self.fail(str(err))
            return None
        worker = self.runner.start(job.start, total=job.total or 1, on_done=self._done,
                                   on_preview=self.show_preview, description=self.title, finish=job.finish,
                                   check=job.check)
        if worker is not None:
            worker.finished.connect(self._ended)
            self.worker = worker
        return worker

    def _ended(self) -> None:
        if not self._adding:  # no result to show (an error, Cancel): the preview goes
            self.preview.remove()

    def _done(self, result: Any) -> Iterator[None]:
        self._adding = True
        return self._add(result)

    def _add(self, result: Any) -> Iterator[None]:
        try:
            yield from self.add_result(result)
            self.progress.value = self.progress.max
        finally:  # a result layer took the preview with adopt(), or it goes now
            self._adding = False
            self.preview.remove()
