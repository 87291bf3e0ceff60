"""Plugins > napari-diffmed > Label: a labeling session over a folder of scans (docs/labeling.md).

The ensemble proposes cases in the background while you correct the open one with napari's tools
(saved every few seconds and on every case change). Background events reach the GUI through a timer
that polls the runner's queue without waiting, so no layer is touched off the GUI thread. Reading a case
and saving edits run in one more thread, in the order asked (a save before the next case's read), so
that the GUI thread never waits for the files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, Select, SpinBox
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ..device import DEVICE_CHOICES
from ..ensemble import DEFAULTS, MAX_MEMBERS
from ..labeling.finetune import FinetuneSettings
from ..models import default_model, list_models
from .dock import short_tab_title
from .io_queue import IOQueue
from .labeling_layers import CaseLayers

AUTOSAVE_MS = 5000
POLL_MS = 150


class LabelingWidget(Container):
    """Open a session, walk its cases (least certain first), correct, propose again, accept, fine-tune."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.scans = FileEdit(label="scans folder", mode="d")
        self.out = FileEdit(label="output folder", mode="d")
        names = [entry.name for entry in list_models(task="segmentation")]
        default = default_model("segmentation", 2)
        self.model = ComboBox(label="model", choices=names, value=default if default in names else None,
                              nullable=True)
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.safetensors", nullable=True)
        self.members = SpinBox(label="members", min=1, max=MAX_MEMBERS, value=DEFAULTS.members)
        self.steps = SpinBox(label="steps", min=1, max=1000, value=DEFAULTS.steps)
        self.device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value="auto")
        self.force = CheckBox(label="propose outside the model's domain", value=False)
        self.finetune_steps = SpinBox(label="fine-tune steps", min=1, max=100_000, value=FinetuneSettings.steps)
        self.open_button = PushButton(text="Open session", tooltip="an existing session keeps its stored settings")
        self._choices: list[tuple[str, str]] = []
        self.case_list = Select(label="cases (least certain first)", choices=lambda *_: self._choices)
        self.next_case_button = PushButton(text="Next case")
        self.next_slice_button = PushButton(text="Next uncertain slice")
        self.again_button, self.accept_button = PushButton(text="Propose again"), PushButton(text="Accept")
        self.finetune_button, self.cancel_button = PushButton(text="Fine-tune"), PushButton(text="Cancel")
        self.progress = ProgressBar(label="background", min=0, max=1, value=0)
        self.status = Label(value="open a session")
        row = lambda *w: Container(widgets=list(w), layout="horizontal", labels=False)  # noqa: E731
        super().__init__(widgets=[
            self.scans, self.out, self.model, self.model_file, self.members, self.steps, self.device, self.force,
            self.open_button, self.case_list, row(self.next_case_button, self.next_slice_button),
            row(self.again_button, self.accept_button), self.finetune_steps,
            row(self.finetune_button, self.cancel_button),
            self.progress, self.status,
        ])
        short_tab_title(self, "Label")
        self.session = None
        self.runner = None
        self.current: str | None = None  # the case chosen
        self.shown: str | None = None  # the case whose arrays the layers hold (None while the next one loads)
        self.view = CaseLayers(viewer)
        self._saved: np.ndarray | None = None
        self._io: IOQueue | None = None  # reads and saves, one at a time, in the order asked
        self.open_button.changed.connect(self.open_session)
        self.case_list.changed.connect(self._picked)
        self.next_case_button.changed.connect(self.next_case)
        self.next_slice_button.changed.connect(self.next_slice)
        self.again_button.changed.connect(self.propose_again)
        self.accept_button.changed.connect(self.accept)
        self.finetune_button.changed.connect(self.finetune)
        self.cancel_button.changed.connect(lambda *_: self.runner and self.runner.cancel())
        self._poll = QTimer()
        self._poll.timeout.connect(self.poll)
        self._autosave = QTimer()
        self._autosave.timeout.connect(self.autosave)
        self.native.destroyed.connect(self.close_session)

    # --- the session ---------------------------------------------------------------------------------

    def open_session(self, *_: Any) -> bool:
        """Open the chosen folders as a session and start proposing in the background."""
        from ..labeling import Background, Session

        self.close_session()
        model = self.model_file.value
        model = str(model) if model not in (None, Path("."), Path("")) else self.model.value
        settings = dict(model=model, members=self.members.value, steps=self.steps.value, force=self.force.value)
        if (Path(self.out.value) / "session.json").exists():
            settings = {}  # an existing session keeps its settings (and the model it was fine-tuned to)
        try:
            self.session = Session(self.scans.value, self.out.value, device=self.device.value, **settings)
        except (ValueError, OSError, KeyError) as err:
            return self._fail(str(err))
        self.members.value, self.steps.value = self.session.settings.members, self.session.settings.steps
        self.runner = Background()
        self._io = IOQueue(self._io_failed)
        for case_id in self.session.to_propose():
            self._submit_proposal(case_id)
        self._poll.start(POLL_MS)
        self._autosave.start(AUTOSAVE_MS)
        self._refresh()
        self.status.value = f"{len(self.session.cases)} cases; proposing in the background"
        return True

    def close_session(self, *_: Any) -> None:
        """Save the open case, stop the background runner, release the folder."""
        if self.session is None:
            return
        self.autosave()
        self.flush()
        self._poll.stop()
        self._autosave.stop()
        self.runner.close()
        self._io.close()
        self.session.close()
        self.session = self.runner = self.current = self.shown = self._io = None

    def _submit_proposal(self, case_id: str, urgent: bool = False) -> None:
        from ..labeling import AHEAD, URGENT

        session = self.session
        self.runner.submit("propose", case_id, lambda: session.iter_propose(case_id), URGENT if urgent else AHEAD)

    def _fail(self, message: str) -> bool:
        show_error(f"Label: {message}")
        self.status.value = f"failed: {message}"
        return False

    def _refresh(self) -> None:
        """Rebuild the case list: cases to do least certain first, then the accepted ones."""
        s = self.session
        rows = []
        for case_id in s.order() + s.accepted():
            case = s.case(case_id)
            score = self._score(case.score)
            rows.append((f"{case_id}: {case.state}, {score}", case_id))
        self._choices = rows
        self.case_list.reset_choices()

    def _score(self, value: float | None) -> str:
        from ..labeling.cases import UNITS

        return "-" if value is None else f"{value:.3f} {UNITS[self.session.settings.score]}"

    # --- background events ---------------------------------------------------------------------------

    def _io_failed(self, what: str, err: Exception) -> None:
        self._fail(f"could not {what}: {err}")
        if what.startswith("save"):
            self._saved = None  # the next autosave tries again

    def flush(self) -> None:
        """Wait for the reads and saves asked for so far (before an action that needs them on disk)."""
        if self._io is not None:
            self._io.handle(wait=True)

    def poll(self) -> None:
        """Handle the runner's events and finished reads and saves on the GUI thread (the timer calls this)."""
        import queue

        if self._io is not None:
            self._io.handle()
        while self.runner is not None:
            try:
                event = self.runner.events.get_nowait()
            except queue.Empty:
                return
            label = f"{event.job} {event.case or ''}".strip()
            if event.kind == "progress":
                self.progress.max, self.progress.value = max(1, event.value.total), event.value.done
                self.status.value = f"{label}: {event.value.message or event.value.done}"
            elif event.kind == "failed":
                self._fail(f"{label}: {event.value}")
            elif event.kind == "cancelled":
                self.status.value = f"{label}: cancelled"
            elif event.kind == "done":
                self._finished(event)
            if event.job == "again" and event.kind in ("failed", "cancelled") and self.view.labels:
                self.view.labels.editable = True  # (done: editable again once the new proposal is shown)

    def _finished(self, event) -> None:
        value = event.value
        if event.job == "finetune":
            self.status.value = f"fine-tuned: {value['message']}"
            for case_id in self.session.to_propose():  # later proposals come from the new model
                self._submit_proposal(case_id)
        elif event.job == "again":
            if event.case == self.current:
                self._show(event.case, keep_view=True)
            drop = value["before"] - value["score"]
            self.status.value = (f"{event.case}: uncertainty {value['before']:.3f} -> {self._score(value['score'])} "
                                 f"({-100 * drop / max(value['before'], 1e-9):+.0f}%)")
        else:
            self.status.value = f"{event.case} proposed: {self._score(value['score'])}"
            if event.case == self.current and self.shown != event.case:
                self._show(event.case)
        self._refresh()

    # --- cases ---------------------------------------------------------------------------------------

    def next_case(self, *_: Any) -> str | None:
        """Open the least certain case still to do (not the one open now, when others are left)."""
        if self.session is None:
            return None
        order = [c for c in self.session.order() if c != self.current] or self.session.order()
        if not order:
            self.status.value = "every case is accepted"
            return None
        self.open_case(order[0])
        return order[0]

    def _picked(self, *_: Any) -> None:
        chosen = self.case_list.value
        if chosen and chosen[0] != self.current:
            self.open_case(chosen[0])

    def open_case(self, case_id: str) -> None:
        """Save the open case, then show ``case_id`` (or queue its proposal first)."""
        self.autosave()
        self.current = case_id
        self._hold()
        if self.session.case(case_id).score is None:
            self._submit_proposal(case_id, urgent=True)
            self.status.value = f"{case_id}: proposing first"
            return
        self._show(case_id)

    def _hold(self) -> None:
        """The layers no longer stand for a case that can be edited (the next one is on its way)."""
        self.shown, self._saved = None, None
        if self.view.labels is not None:
            self.view.labels.editable = False

    def _show(self, case_id: str, keep_view: bool = False) -> None:
        """Read ``case_id`` in the background, then show it (if it is still the case chosen)."""
        self._hold()
        if not keep_view:
            self.status.value = f"{case_id}: opening"
        self._io.submit(lambda: self.session.load(case_id), lambda data: self._display(case_id, data, keep_view),
                        f"open {case_id}")

    def _display(self, case_id: str, data, keep_view: bool) -> None:
        if case_id != self.current or self.session is None:
            return
        if self.view.show(case_id, data, keep_view):
            self.next_slice()
        self.view.labels.editable = True
        self.shown, self._saved = case_id, np.array(data.labels)
        if keep_view:  # the new proposal of the open case: the status keeps what it changed
            return
        case = self.session.case(case_id)
        self.status.value = f"{case_id}: {case.state}, {self._score(case.score)}; most uncertain slices {case.ranking[:5]}"

    def next_slice(self, *_: Any) -> int | None:
        """Move the viewer to the open case's next most uncertain slice; returns its index."""
        if self.current is None:
            return None
        return self.view.step(self.session.case(self.current).ranking, self.session.settings.axis)

    # --- edits ---------------------------------------------------------------------------------------

    def autosave(self, *_: Any) -> bool:
        """Save the shown case's labels when they changed since the last save (in the background: :meth:`flush`
        waits for it); returns whether a save was asked for."""
        labels, case_id, session = self.view.labels, self.shown, self.session
        if session is None or case_id is None or labels is None:
            return False
        data = np.array(labels.data)  # a copy: the save writes what the layer held now
        if self._saved is not None and np.array_equal(data, self._saved):
            return False
        self._saved = data

        def saved(corrected: int) -> None:
            self.status.value = f"{case_id}: saved ({corrected} corrected voxels)"
            self._refresh()

        self._io.submit(lambda: session.save_edits(case_id, data), saved, f"save {case_id}")
        return True

    def propose_again(self, *_: Any) -> bool:
        """Save, then resample the open case around its corrected voxels in the background."""
        if self.current is None or self.shown != self.current:
            return self._fail("open a proposed case first")
        self.autosave()
        self.flush()
        if not self.session.load_labels(self.current).corrected.any():
            return self._fail(f"{self.current} has no corrections yet: edit its labels first")
        from ..labeling import URGENT

        session, case_id = self.session, self.current
        self.runner.submit("again", case_id, lambda: session.iter_propose(case_id, again=True), URGENT)
        self.view.labels.editable = False  # until the new proposal replaces the layer's data
        self.status.value = f"{case_id}: proposing again around the corrections"
        return True

    def accept(self, *_: Any) -> str | None:
        """Accept the open case's labels (written as NIfTI in its scan's space) and open the next case."""
        if self.current is None or self.shown != self.current:
            self._fail("open a proposed case first")
            return None
        self.flush()  # no earlier save of this case may land after its acceptance
        try:
            path = self.session.accept(self.current, np.asarray(self.view.labels.data))
        except (ValueError, OSError) as err:
            self._fail(str(err))
            return None
        self._hold()
        self._refresh()
        done = self.current
        self.current = None
        self.status.value = f"accepted {done}: {path.name}"
        if self.next_case() is None:  # nothing left to open: the layers go
            self.view.clear()
        return done

    def finetune(self, *_: Any) -> bool:
        """Fine-tune the model on the accepted cases in the background (live loss in the status line)."""
        from ..labeling import URGENT, FinetuneSettings, iter_finetune

        if self.session is None or len(self.session.accepted()) < 2:
            return self._fail("fine-tuning needs at least 2 accepted cases")
        self.autosave()
        self.flush()
        session, settings = self.session, FinetuneSettings(steps=self.finetune_steps.value)
        self.runner.submit("finetune", None, lambda: iter_finetune(session, settings), URGENT)
        self.status.value = "fine-tuning queued"
        return True
