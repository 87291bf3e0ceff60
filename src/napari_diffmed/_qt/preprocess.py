"""The preprocessing panel shared by the task widgets: a checkbox per stage, "Preview registered scan",
and the mark that says when a scan lies outside the model's training domain."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, Label, PushButton
from napari.utils.notifications import show_error, show_warning

from ..preprocess.pipeline import REGISTER, SKULL, PreprocessSettings, in_template_space
from .layers import spacing_of

MARK = "\u26a0 "


class PreprocessPanel(Container):
    """Stages of the step to the model's template space and back (on where the card names a template),
    ``force`` for scans outside the domain, a preview of the registered scan, and the domain mark."""

    def __init__(self, viewer, source: Callable[[], Any], card: Callable[[], Any]) -> None:
        self.viewer, self._source, self._card = viewer, source, card
        self.use_template = CheckBox(text="to the model's template space and back", value=True,
                                tooltip="where the model card names a template (the shipped models)")
        self.n4 = CheckBox(text="bias-field correction (N4)", value=True)
        self.registration = ComboBox(label="registration", choices=list(REGISTER), value="affine")
        self.skull_strip = ComboBox(label="brain extraction", choices=list(SKULL), value="auto")
        self.standardise = CheckBox(text="match intensities to the template", value=True)
        self.force = CheckBox(text="run even outside the model's domain", value=False)
        self.preview_button = PushButton(text="Preview registered scan")
        self.mark = Label(value="")
        super().__init__(widgets=[self.use_template, self.n4, self.registration, self.skull_strip, self.standardise,
                                  self.force, self.preview_button, self.mark])
        self.preview_button.changed.connect(self.preview)
        self.worker = None

    def settings(self, card) -> PreprocessSettings | None:
        if not self.use_template.value or not in_template_space(card):
            return None
        return PreprocessSettings(n4=self.n4.value, register=self.registration.value,
                                  skull_strip=self.skull_strip.value, standardise=self.standardise.value)

    def job(self, task: str, make, data: np.ndarray, spacing, card, axis: int, indices, mask=None, metadata=None):
        """The generator a widget's job runs: the domain check, the task in the template's space, results back."""
        from ..preprocess.run import iter_task

        self.mark.value = ""
        return iter_task(task, make, data, spacing, card, preprocess=self.settings(card), force=self.force.value,
                         axis=axis, indices=indices, mask=mask, metadata=metadata)

    def report(self, result) -> None:
        """Show the result's domain findings: a napari notification and the mark under the panel."""
        findings = result.provenance.get("domain") or []
        if findings:
            text = "; ".join(f"{f['code']}: {f['message']}" for f in findings)
            self.mark.value = MARK + "outside the model's domain: " + ", ".join(f["code"] for f in findings)
            self.mark.tooltip = text
            show_warning(f"The scan is outside the model's training domain: {text}")
        pre = result.provenance.get("preprocess")
        if pre:
            self.mark.value += f"  (registered: similarity {pre['similarity']:.2f}, {pre['seconds']:.0f} s)"

    def preview(self, *_: Any):
        """Bring the chosen scan to the template off the GUI thread and add it (and the template) as layers."""
        from napari.qt.threading import create_worker

        from ..preprocess import to_model_space
        from ..preprocess.pipeline import load_template

        layer, card = self._source(), self._card()
        if layer is None or card is None or not in_template_space(card):
            show_error("Preview: choose a 3D image layer and a model whose card names a template")
            return None
        settings = self.settings(card) or PreprocessSettings()
        data = np.array(layer.data, dtype=np.float32)
        spacing = spacing_of(layer)

        def work():
            model_scan, tf = to_model_space(data, spacing, card, settings, force=self.force.value)
            return model_scan, tf, load_template(card)

        def done(out) -> None:
            model_scan, tf, (template, t_spacing, _) = out
            self.viewer.add_image(template, name=f"{card.domain['template']} template", scale=t_spacing,
                                  colormap="gray", metadata={"preprocess": tf.record})
            self.viewer.add_image(model_scan, name=f"{layer.name} registered", scale=t_spacing, colormap="magma",
                                  blending="additive", opacity=0.6, metadata={"preprocess": tf.record})
            self.mark.value = (f"registered to {card.domain['template']}: similarity {tf.record['similarity']:.2f}, "
                               f"skull {'removed' if tf.record['stages']['skull']['stripped'] else 'none found'}, "
                               f"{tf.record['seconds']:.0f} s")

        self.worker = create_worker(work, _start_thread=False)
        self.worker.returned.connect(done)
        self.worker.errored.connect(lambda err: show_error(f"Preview: {err}"))
        self.worker.finished.connect(lambda: setattr(self, "worker", None))
        self.mark.value = "registering..."
        self.worker.start()
        return self.worker


def card_of(source: str | None):
    """The card of a model name or path (None when there is none to read)."""
    from ..models import ModelCard, ModelCardError, resolve
    from ..models.checkpoint import card_path

    try:
        return ModelCard.read(card_path(resolve(source))) if source else None
    except (ModelCardError, OSError, ValueError):
        return None
