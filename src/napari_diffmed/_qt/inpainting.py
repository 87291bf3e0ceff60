"""Plugins > napari-diffmed > Inpaint: fill a painted Labels (or Shapes) region with RePaint proposals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, ProgressBar, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error, show_info

from ..device import DEVICE_CHOICES
from ..inpainting import DEFAULTS, MODES, count_network_calls, describe, repaint_schedule
from ..masks import mask_on_grid
from ..models import ModelCard, ModelCardError, list_models
from .backend import BackendChoice
from .dock import FollowImage, short_tab_title
from .jobs import JobRunner
from .preprocess import PreprocessPanel, card_of
from .layers import PreviewLayer, placement, world_matrix


REGIONS = ("whole volume", "current slice", "slice range")


def mask_for(image: Image, layer: Labels | Shapes) -> tuple[np.ndarray, list[str]]:
    """The mask layer as a mask on ``image``'s voxel grid (Shapes are rasterised; other grids resampled)."""
    shape = tuple(image.data.shape)
    if layer.ndim != image.ndim:
        raise ValueError(f"mask layer {layer.name!r} has {layer.ndim} axes but image {image.name!r} has {image.ndim}")
    if isinstance(layer, Shapes):
        if not len(layer.data):
            return np.zeros(shape, bool), []
        to_image = np.linalg.inv(world_matrix(image)) @ world_matrix(layer)
        moved = [(np.c_[v, np.ones(len(v))] @ to_image.T)[:, :-1] for v in layer.data]
        return Shapes(moved, shape_type=layer.shape_type).to_labels(labels_shape=shape) > 0, []
    return mask_on_grid(np.asarray(layer.data), world_matrix(layer), shape, world_matrix(image),
                        f"mask {layer.name!r}", repr(image.name))


class InpaintingWidget(Container):
    """Choose the scan, the painted mask, the model and the schedule; Run adds proposals, mean and variance."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        preset = MODES[DEFAULTS.mode]
        self.image = ComboBox(label="image", choices=lambda _: self._layers(Image), nullable=True)
        self.mask = ComboBox(label="mask (Labels/Shapes)", choices=lambda _: self._layers((Labels, Shapes))[::-1],
                             nullable=True)
        names = [entry.name for entry in list_models(task="image")]
        self.model = ComboBox(label="model", choices=names, value=DEFAULTS.model if DEFAULTS.model in names else None,
                              nullable=True)
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.safetensors", nullable=True)
        self.class_name = ComboBox(label="class", choices=self._classes)
        self.mode = ComboBox(label="mode", choices=list(MODES), value=DEFAULTS.mode)
        self.steps = SpinBox(label="steps", min=2, max=1000, value=preset.steps)
        self.jump_length = SpinBox(label="jump length", min=1, max=999, value=preset.jump_length)
        self.resamplings = SpinBox(label="resamplings", min=1, max=50, value=preset.resamplings)
        self.calls = Label(value="")
        self.proposals = SpinBox(label="proposals", min=1, max=64, value=DEFAULTS.proposals)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.region = ComboBox(label="region", choices=list(REGIONS), value=REGIONS[0])
        self.axis = SpinBox(label="slice axis", min=0, max=2, value=DEFAULTS.axis)
        self.first = SpinBox(label="first slice", min=0, max=100_000, value=0)
        self.stop = SpinBox(label="stop slice (excluded)", min=1, max=100_000, value=1,
                            tooltip="the range is first, first + 1, ..., stop - 1, as --slices FIRST:STOP")
        self.device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value="auto")
        self.backend = BackendChoice(self.device)
        self.run_button, self.cancel_button = PushButton(text="Run"), PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        self.chosen = SpinBox(label="proposal", min=0, max=63, value=0)
        self.accept_button = PushButton(text="Accept proposal as a new layer")
        self.prep = PreprocessPanel(viewer, lambda: self.viewer.layers[self.image.value] if self.image.value else None,
                                    lambda: card_of(self.model_source()))
        super().__init__(widgets=[
            self.image, self.mask, self.model, self.model_file, self.class_name, self.mode, self.steps,
            self.jump_length, self.resamplings, self.calls, self.proposals, self.seed, self.region, self.axis,
            self.first, self.stop, self.device, self.backend, self.prep, self.run_button, self.cancel_button,
            self.progress, self.status, self.chosen, self.accept_button,
        ])
        self.runner = JobRunner(self.run_button, self.cancel_button, self.status, progress_bar=self.progress)
        self.preview = PreviewLayer(viewer)
        self.worker = None
        self._card: ModelCard | None = None
        self.result_layer: Image | None = None
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self.follow = FollowImage(viewer, self.image)
        self.region.changed.connect(self._show_range)
        short_tab_title(self, "Inpaint")
        self.model.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_changed)
        self.mode.changed.connect(self._mode_changed)
        for spin in (self.steps, self.jump_length, self.resamplings):
            spin.changed.connect(self._update_calls)
        self.run_button.changed.connect(self.run)
        self.accept_button.changed.connect(self.accept)
        self._model_changed()

    # --- choices ------------------------------------------------------------------------------------

    def _layers(self, kinds) -> list[str]:
        return [layer.name for layer in self.viewer.layers if isinstance(layer, kinds)]

    def _refresh_layers(self, *_: Any) -> None:
        """Keep the layer lists current; pick the first image and the newest mask when none is chosen."""
        self.reset_choices()
        for combo in (self.image, self.mask):
            names = [c for c in combo.choices if c is not None]
            if combo.value is None and names:
                combo.value = names[0]

    def model_source(self) -> str | None:
        path = self.model_file.value
        return str(path) if path not in (None, Path("."), Path("")) else self.model.value

    def _model_changed(self, *_: Any) -> None:
        source, card = self.model_source(), None
        try:
            entries = {e.name: e.card for e in list_models(task="image")}
            card = entries.get(source) or (ModelCard.read(Path(source).with_suffix(".json")) if source else None)
        except (ModelCardError, OSError) as err:
            self.status.value = f"cannot read model: {err}"
        self._card = card
        self.class_name.reset_choices()
        classes = self._classes()
        if DEFAULTS.class_name in classes:
            self.class_name.value = DEFAULTS.class_name
        self.class_name.enabled = bool(classes)
        slices = card is None or card.spatial_dims == 2
        for w in (self.region, self.axis, self.first, self.stop):
            w.enabled = slices
        self._show_range()
        self._update_calls()

    def _show_range(self, *_: Any) -> None:
        for field in (self.first, self.stop):
            field.visible = self.region.value == "slice range"

    def _classes(self, *_: Any) -> list[str]:
        """The chosen model's classes (a callable, so napari's ``reset_choices`` keeps them)."""
        card = getattr(self, "_card", None)
        return list(card.class_names) if card is not None and card.conditional else []

    def _mode_changed(self, *_: Any) -> None:
        preset = MODES[self.mode.value]
        self.steps.value, self.jump_length.value, self.resamplings.value = (
            preset.steps, preset.jump_length, preset.resamplings)
        self._update_calls()

    def settings(self) -> dict[str, Any]:
        """The schedule and sampling values as keyword arguments of :func:`iter_inpaint`."""
        return dict(mode=self.mode.value, steps=self.steps.value, jump_length=self.jump_length.value,
                    resamplings=self.resamplings.value, proposals=self.proposals.value, seed=self.seed.value,
                    class_name=self.class_name.value if self.class_name.enabled else None,
                    axis=self.axis.value, device=self.device.value)

    def _update_calls(self, *_: Any) -> None:
        from ..inpainting import settings_for

        try:
            s = settings_for(self.mode.value, self.steps.value, self.jump_length.value, self.resamplings.value)
            self.calls.value = describe(s)
        except ValueError as err:
            self.calls.value = str(err)

    # --- running ------------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        show_error(f"Inpaint: {message}")
        self.status.value = f"failed: {message}"

    def _indices(self, image: Image) -> list[int] | None:
        if not self.region.enabled or self.region.value == "whole volume" or image.ndim == 2:
            return None
        axis = self.axis.value
        if self.region.value == "current slice":
            index = np.asarray(image.world_to_data(self.viewer.dims.point[-image.ndim:]))[axis]
            return [int(np.clip(round(float(index)), 0, image.data.shape[axis] - 1))]
        return list(range(self.first.value, self.stop.value))

    def _batches(self, mask: np.ndarray, indices: list[int] | None) -> int:
        """Batches the run will take: proposals x masked slices (2D models), in batches of the default size."""
        if self._card is not None and self._card.spatial_dims == 3:
            items = 1
        else:
            moved = np.moveaxis(mask if mask.ndim == 3 else mask[None], self.axis.value if mask.ndim == 3 else 0, 0)
            has = moved.reshape(len(moved), -1).any(axis=1)
            items = int(has.sum() if indices is None else has[[i for i in indices if 0 <= i < len(has)]].sum())
        return max(1, -(-items * self.proposals.value // DEFAULTS.batch_size))

    def run(self, *_: Any):
        """Copy the layers, start the job; returns the worker (None on bad input)."""
        from ..inpainting import iter_inpaint, settings_for

        iter_inpaint = self.backend.task(iter_inpaint)

        if self.image.value is None or self.mask.value is None or self.model_source() is None:
            self._fail("choose an image layer, a mask layer (Labels or Shapes) and a model")
            return None
        image = self.viewer.layers[self.image.value]
        try:
            if image.rgb or image.multiscale:
                raise ValueError(f"image {image.name!r} is RGB or multiscale; choose a single-channel scan")
            mask, notes = mask_for(image, self.viewer.layers[self.mask.value])
            settings = settings_for(self.mode.value, self.steps.value, self.jump_length.value, self.resamplings.value)
            indices = self._indices(image)
            if indices is not None:
                from ..slices import check_slices

                depth = image.data.shape[self.axis.value] if image.ndim == 3 else 1
                indices = check_slices(indices, depth, self.axis.value)
        except ValueError as err:
            self._fail(str(err))
            return None
        for note in notes:
            show_info(f"Inpaint: {note}")
        data = np.array(image.data, copy=True)
        spacing = image.metadata.get("spacing") or tuple(image.scale)
        kwargs = {**self.settings(), "model": self.model_source(), "indices": indices}
        calls = count_network_calls(repaint_schedule(settings)) * self._batches(mask, indices)
        self.status.value = f"{calls} network calls"
        self._source = image

        card, meta = card_of(self.model_source()), dict(image.metadata)

        def job():
            make = lambda img, sp, ax, idx, m: iter_inpaint(  # noqa: E731
                img, mask if m is None else m, sp, **{**kwargs, "axis": ax, "indices": idx})
            return self.prep.job("inpainting", make, data, spacing, card, kwargs["axis"], indices, mask=mask,
                                 metadata=meta)

        worker = self.runner.start(job, total=calls,
                                   on_done=self._add_result, on_preview=self._show_preview, description="Inpaint")
        if worker is not None:
            worker.finished.connect(self.preview.remove)
            self.worker = worker
        return worker

    def _show_preview(self, event) -> None:
        self.preview.show(event.preview, f"{self._source.name} inpaint preview", colormap="gray",
                          contrast_limits=self._source.contrast_limits, **placement(self._source))

    def _add_result(self, result) -> None:
        self.preview.remove()
        self.prep.report(result)
        src, prov = self._source, result.provenance
        for note in result.messages:
            show_info(f"Inpaint: {note}")
        look = dict(colormap="gray", contrast_limits=src.contrast_limits)
        stack = placement(src, lead=1)
        stack["metadata"] = {**stack["metadata"], "provenance": prov}
        self.result_layer = self.viewer.add_image(result.proposals, name=f"{src.name} inpaint proposals", **look,
                                                  **stack)
        single = placement(src)
        single["metadata"] = {**single["metadata"], "provenance": prov}
        self.viewer.add_image(result.mean, name=f"{src.name} inpaint mean", visible=False, **look, **single)
        top = float(result.variance.max()) or 1.0
        self.viewer.add_image(result.variance, name=f"{src.name} inpaint variance", colormap="magma",
                              blending="additive", contrast_limits=(0.0, top), visible=False, **single)
        self.chosen.max = len(result.proposals) - 1
        self.progress.value = self.progress.max
        self.status.value = f"done: {prov['network_calls']} network calls in {prov.get('seconds', 0):.1f} s"

    def accept(self, *_: Any) -> Image | None:
        """Copy the chosen proposal into a new layer (the scan itself is never changed)."""
        stack = self.result_layer
        if stack is None or stack not in self.viewer.layers:
            self._fail("run inpainting first (the proposals layer is gone)")
            return None
        k = min(self.chosen.value, stack.data.shape[0] - 1)
        single = placement(self._source)
        single["metadata"] = {**single["metadata"], "provenance": {**stack.metadata["provenance"], "proposal": k}}
        return self.viewer.add_image(np.array(stack.data[k]), name=f"{self._source.name} inpainted #{k}",
                                     colormap="gray", contrast_limits=self._source.contrast_limits, **single)
