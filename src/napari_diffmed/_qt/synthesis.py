"""Plugins > napari-diffmed > Synthesize: sample new scans with a live preview of the x0 estimate."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Iterator

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, FloatSpinBox, Label, LineEdit, SpinBox

from ..models import ModelCard, ModelCardError, default_model
from ..schedulers import samplers_for
from ..synthesis import DEFAULTS, MAX_GUIDANCE, MAX_SAMPLES, SWEEP_SCALES, SynthesisSettings
from .base import Job, TaskWidget

PREVIEW_NAME = "synthesis preview"
GAP = 0.1  # space between side-by-side sweep columns, as a fraction of the image width


class SynthesisWidget(TaskWidget):
    """Pick a model and sampler settings, press Run; samples arrive as new image layers."""

    tab, title, model_task = "Synthesize", "Synthesize", "image"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, default_model("image", 2, "synthesis"), device=DEFAULTS.device)
        self._card: ModelCard | None = None
        self._scale: tuple[float, ...] = ()
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
        self.lay_out(options=[self.info, self.scheduler, self.steps, self.n_samples, self.seed, self.class_name,
                              self.guidance, self.sweep, self.sweep_scales])
        self.model.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_changed)
        self.sweep.changed.connect(self._update_enabled)
        self._model_changed()

    # --- model choice -----------------------------------------------------------------------------

    def _model_changed(self, *_: Any) -> None:
        try:
            card = self.read_card()
        except (ModelCardError, OSError, ValueError) as err:
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
        return samplers_for(card.scheduler["name"] if card is not None else DEFAULTS.scheduler)

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

    def prepare(self) -> Job:
        from ..synthesis import check_settings, iter_guidance_sweep, iter_synthesize

        if self._card is None:
            raise ValueError(self.info.value or "choose a model, or give a model file")
        settings = self.settings()
        sweep = self.sweep.value and self._card.conditional
        scales = self._sweep_scales() if sweep else [settings.guidance]
        card = self._card

        def check() -> int:
            for w in scales:
                check_settings(card, settings.replace(guidance=w), device=True)
            return settings.steps * len(scales)

        kwargs = asdict(settings)
        if sweep:
            kwargs.pop("guidance")
            task, kwargs = self.backend.task(iter_guidance_sweep), {**kwargs, "scales": scales}
        else:
            task = self.backend.task(iter_synthesize)
        self._scale = tuple(self._card.spacing)
        return Job(lambda: task(**kwargs), check=check)

    def _sweep_scales(self) -> list[float]:
        text = self.sweep_scales.value
        try:
            scales = [float(part) for part in text.replace(";", ",").split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"sweep scales must be comma-separated numbers, got {text!r}") from None
        if not scales:
            raise ValueError("give at least one sweep scale, e.g. 0, 1, 2, 4")
        return scales

    def show_preview(self, event) -> None:
        scale = (1.0,) * (event.preview.ndim - len(self._scale)) + self._scale
        self.preview.show(event.preview, PREVIEW_NAME, scale=scale, contrast_limits=(0.0, 1.0), colormap="gray")

    # --- results ------------------------------------------------------------------------------------

    def add_result(self, result) -> Iterator[None]:
        results = getattr(result, "results", [result])
        columns = len(results) > 1
        for k, res in enumerate(results):
            prov = res.provenance
            tag = f" w={prov['guidance']:g}" if columns else ""
            width = res.samples.shape[-1] * res.spacing[-1] * (1 + GAP)
            yield from self._add_samples(res, f"synthesis {prov['model']}{tag}", x_offset=k * width)
        seconds = sum(r.provenance["seconds"] for r in results)
        self.status.value = f"done: {results[0].samples.shape[0] * len(results)} samples in {seconds:.1f} s"

    def _add_samples(self, result, name: str, x_offset: float = 0.0) -> Iterator[None]:
        """2D: one layer, samples along the first axis; 3D: one layer per volume."""
        spacing = tuple(result.spacing)
        meta = {"provenance": result.provenance, "spacing": spacing}
        style = dict(contrast_limits=(0.0, 1.0), colormap="gray", metadata=meta)
        translate = (0.0,) * 2 + (x_offset,)
        if result.spatial_dims == 2:
            self.preview.adopt(result.samples, name=name, scale=(1.0, *spacing), translate=translate, **style)
            yield
            return
        for i, volume in enumerate(result.samples):
            self.preview.adopt(np.asarray(volume), name=f"{name} #{i}", scale=spacing, translate=translate,
                                  **{**style, "metadata": {**meta, "index": i}})
            yield
