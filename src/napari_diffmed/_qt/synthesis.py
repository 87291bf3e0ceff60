"""Plugins > napari-diffmed > Synthesize: sample new scans with a live preview of the x0 estimate."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, SpinBox,
)
from napari.utils.notifications import show_error

from ..device import DEVICE_CHOICES
from ..models import ModelCard, ModelCardError, default_model, list_models
from ..sampling import SCHEDULER_NAMES
from ..synthesis import DEFAULTS, MAX_GUIDANCE, MAX_SAMPLES, SWEEP_SCALES, SynthesisSettings
from .backend import BackendChoice
from .dock import short_tab_title
from .jobs import JobRunner
from .layers import PreviewLayer


PREVIEW_NAME = "synthesis preview"
GAP = 0.1  # space between side-by-side sweep columns, as a fraction of the image width


class SynthesisWidget(Container):
    """Pick a model and sampler settings, press Run; samples arrive as new image layers."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        names = [entry.name for entry in list_models(task="image")]
        default = default_model("image", 2, "synthesis")
        self.model = ComboBox(label="model", choices=names, tooltip="shipped and user models ($NAPARI_DIFFMED_MODELS)")
        if default in names:
            self.model.value = default
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.safetensors", nullable=True,
                                   tooltip="NAME.safetensors with NAME.json beside it; overrides the list")
        self.info = Label(value="")
        self.scheduler = ComboBox(label="scheduler", choices=self._schedulers, value=DEFAULTS.scheduler)
        self.steps = SpinBox(label="steps", min=1, max=1000, value=DEFAULTS.steps,
                             tooltip="network evaluations; DDPM needs all 1000")
        self.n_samples = SpinBox(label="samples", min=1, max=MAX_SAMPLES, value=DEFAULTS.n)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.class_name = ComboBox(label="class", choices=self._classes)
        self.guidance = FloatSpinBox(label="guidance", min=0.0, max=MAX_GUIDANCE, step=0.5, value=DEFAULTS.guidance,
                                     tooltip="0 unconditional, 1 conditional, >1 stronger class features")
        self.sweep = CheckBox(text="guidance sweep (same seed, side by side)", value=False)
        self.sweep_scales = LineEdit(label="sweep scales", value=", ".join(f"{w:g}" for w in SWEEP_SCALES))
        self.device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value=DEFAULTS.device)
        self.backend = BackendChoice(self.device)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        super().__init__(widgets=[
            self.model, self.model_file, self.info, self.scheduler, self.steps, self.n_samples, self.seed,
            self.class_name, self.guidance, self.sweep, self.sweep_scales, self.device, self.backend, self.run_button,
            self.cancel_button, self.progress, self.status,
        ])
        self.runner = JobRunner(self.run_button, self.cancel_button, self.status, progress_bar=self.progress)
        self.preview = PreviewLayer(viewer)
        self.worker = None
        self.model.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_changed)
        self.sweep.changed.connect(self._update_enabled)
        self.run_button.changed.connect(self.run)
        self._card: ModelCard | None = None
        self._scale: tuple[float, ...] = ()
        self._model_changed()
        short_tab_title(self, "Synthesize")

    # --- model choice -----------------------------------------------------------------------------

    def model_source(self) -> str | None:
        """The model file if one is given, else the chosen name."""
        path = self.model_file.value
        return str(path) if path not in (None, Path("."), Path("")) else self.model.value

    def _read_card(self) -> ModelCard | None:
        source = self.model_source()
        if source is None:
            return None
        for entry in list_models(task="image"):
            if entry.name == source:
                return entry.card
        return ModelCard.read(Path(source).with_suffix(".json"))

    def _model_changed(self, *_: Any) -> None:
        try:
            card = self._read_card()
        except (ModelCardError, OSError) as err:
            card, self.info.value = None, f"cannot read model: {err}"
        self._card = card
        if card is not None:
            size = "x".join(map(str, card.image_size))
            self.info.value = f"{card.spatial_dims}D {card.task} model, {size} px at {card.spacing} mm"
            self.scheduler.reset_choices()
            choices = self._schedulers()
            self.scheduler.value = DEFAULTS.scheduler if DEFAULTS.scheduler in choices else choices[0]
        self.class_name.reset_choices()
        self._update_enabled()

    def _schedulers(self, *_: Any) -> list[str]:
        """Schedulers that can sample the chosen model (rectified flow only for models trained for it)."""
        card = getattr(self, "_card", None)
        rflow = card is not None and card.scheduler["name"] == "RFlowScheduler"
        return ["rflow"] if rflow else [k for k, v in SCHEDULER_NAMES.items() if v != "RFlowScheduler"]

    def _classes(self, *_: Any) -> list[str]:
        """The chosen model's classes (a callable, so napari's ``reset_choices`` keeps them)."""
        card = getattr(self, "_card", None)
        return list(card.class_names) if card is not None and card.conditional else []

    def _update_enabled(self, *_: Any) -> None:
        conditional = self._card is not None and self._card.conditional
        self.class_name.enabled = self.sweep.enabled = conditional
        self.sweep_scales.enabled = conditional and self.sweep.value
        self.guidance.enabled = conditional and not self.sweep.value

    # --- running ------------------------------------------------------------------------------------

    def settings(self) -> SynthesisSettings:
        """The widget's values as a frozen settings object (read on the GUI thread)."""
        conditional = self._card is not None and self._card.conditional
        return SynthesisSettings(
            model=self.model_source(), n=self.n_samples.value, steps=self.steps.value,
            scheduler=self.scheduler.value, seed=self.seed.value,
            class_name=self.class_name.value if conditional else None,
            guidance=float(self.guidance.value), device=self.device.value, eta=DEFAULTS.eta,
        )

    def _fail(self, message: str) -> None:
        show_error(f"Synthesize: {message}")
        self.status.value = f"failed: {message}"

    def run(self, *_: Any):
        """Start sampling with the current settings; returns the worker (None on bad input)."""
        from ..synthesis import check_settings, iter_guidance_sweep, iter_synthesize

        iter_guidance_sweep, iter_synthesize = (self.backend.task(f) for f in (iter_guidance_sweep, iter_synthesize))

        if self._card is None:
            self._fail(self.info.value or "choose a model, or give a model file")
            return None
        settings = self.settings()
        sweep = self.sweep.value and self._card.conditional
        try:
            scales = self._sweep_scales() if sweep else [settings.guidance]
            for w in scales:
                check_settings(self._card, settings.replace(guidance=w), device=True)
        except ValueError as err:
            self._fail(str(err))
            return None
        kwargs = asdict(settings)
        runs = len(scales)
        if sweep:
            kwargs.pop("guidance")

            def job():
                return iter_guidance_sweep(scales=scales, **kwargs)
        else:
            def job():
                return iter_synthesize(**kwargs)

        self.progress.max, self.progress.value = settings.steps * runs, 0
        self._scale = tuple(self._card.spacing)
        worker = self.runner.start(job, total=settings.steps * runs, on_done=self._add_result,
                                   on_preview=self._show_preview, description="Synthesize")
        if worker is not None:
            worker.finished.connect(self.preview.remove)
            self.worker = worker
        return worker

    def _sweep_scales(self) -> list[float]:
        text = self.sweep_scales.value
        try:
            scales = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"sweep scales must be comma-separated numbers, got {text!r}") from None
        if not scales:
            raise ValueError("give at least one sweep scale, e.g. 0, 1, 2, 4")
        return scales

    def _show_preview(self, event) -> None:
        scale = (1.0,) * (event.preview.ndim - len(self._scale)) + self._scale
        self.preview.show(event.preview, PREVIEW_NAME, scale=scale, contrast_limits=(0.0, 1.0), colormap="gray")

    # --- results ------------------------------------------------------------------------------------

    def _add_result(self, result) -> None:
        self.preview.remove()
        results = getattr(result, "results", [result])
        columns = len(results) > 1
        for k, res in enumerate(results):
            prov = res.provenance
            tag = f" w={prov['guidance']:g}" if columns else ""
            width = res.samples.shape[-1] * res.spacing[-1] * (1 + GAP)
            self._add_samples(res, f"synthesis {prov['model']}{tag}", x_offset=k * width)
        self.progress.value = self.progress.max
        seconds = sum(r.provenance["seconds"] for r in results)
        self.status.value = f"done: {results[0].samples.shape[0] * len(results)} samples in {seconds:.1f} s"

    def _add_samples(self, result, name: str, x_offset: float = 0.0) -> None:
        """2D: one layer, samples along the first axis; 3D: one layer per volume."""
        spacing = tuple(result.spacing)
        meta = {"provenance": result.provenance, "spacing": spacing}
        style = dict(contrast_limits=(0.0, 1.0), colormap="gray", metadata=meta)
        if result.spatial_dims == 2:
            translate = (0.0,) * 2 + (x_offset,)
            self.viewer.add_image(result.samples, name=name, scale=(1.0, *spacing), translate=translate, **style)
            return
        for i, volume in enumerate(result.samples):
            translate = (0.0,) * 2 + (x_offset,)
            self.viewer.add_image(np.asarray(volume), name=f"{name} #{i}", scale=spacing, translate=translate,
                                  **{**style, "metadata": {**meta, "index": i}})
