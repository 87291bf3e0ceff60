"""Plugins > napari-diffmed > Inpaint: fill a painted Labels (or Shapes) region with RePaint proposals."""

from __future__ import annotations

from typing import Any, Iterator

import napari
import numpy as np
from magicgui.widgets import ComboBox, Label, PushButton, SpinBox
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_info

from ..inpainting import DEFAULTS, MODES, count_network_calls, describe, repaint_schedule
from ..masks import mask_on_grid
from ..models import ModelCard, ModelCardError
from .base import Job, TaskWidget
from .choices import LayerPicker, SliceChoice
from .dock import FollowImage
from .layers import placement, spacing_of, world_matrix
from .preprocess import PreprocessPanel, card_of


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


class InpaintingWidget(TaskWidget):
    """Choose the scan, the painted mask, the model and the schedule; Run adds proposals, mean and variance."""

    tab, title, model_task = "Inpaint", "Inpaint", "image"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, DEFAULTS.model)
        preset = MODES[DEFAULTS.mode]
        self._card: ModelCard | None = None
        self.image = LayerPicker(viewer, Image, "image")
        self.mask = LayerPicker(viewer, (Labels, Shapes), "mask (Labels/Shapes)", newest_first=True)
        self.class_name = ComboBox(label="class", choices=self._classes)
        self.mode = ComboBox(label="mode", choices=list(MODES), value=DEFAULTS.mode)
        self.steps = SpinBox(label="steps", min=2, max=1000, value=preset.steps)
        self.jump_length = SpinBox(label="jump length", min=1, max=999, value=preset.jump_length)
        self.resamplings = SpinBox(label="resamplings", min=1, max=50, value=preset.resamplings)
        self.calls = Label(value="")
        self.proposals = SpinBox(label="proposals", min=1, max=64, value=DEFAULTS.proposals)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.slices = SliceChoice(viewer, axis=DEFAULTS.axis)
        self.region, self.axis, self.first, self.stop = self.slices.widgets
        self.chosen = SpinBox(label="proposal", min=0, max=63, value=0)
        self.accept_button = PushButton(text="Accept proposal as a new layer")
        self.prep = PreprocessPanel(viewer, lambda: self.image.value, lambda: card_of(self.model_source()))
        self.lay_out(inputs=[self.image, self.mask],
                     options=[self.class_name, self.mode, self.steps, self.jump_length, self.resamplings, self.calls,
                              self.proposals, self.seed, *self.slices.widgets],
                     extras=[self.prep], review=[self.chosen, self.accept_button])
        self.result_layer: Image | None = None
        self.follow = FollowImage(viewer, self.image)
        self.model.changed.connect(self._model_changed)
        self.model_file.changed.connect(self._model_changed)
        self.mode.changed.connect(self._mode_changed)
        for spin in (self.steps, self.jump_length, self.resamplings):
            spin.changed.connect(self._update_calls)
        self.accept_button.changed.connect(self.accept)
        self._model_changed()

    # --- choices ------------------------------------------------------------------------------------

    def _model_changed(self, *_: Any) -> None:
        card = None
        try:
            card = self.read_card()
        except (ModelCardError, OSError, ValueError) as err:
            self.status.value = f"cannot read model: {err}"
        self._card = card
        self.class_name.reset_choices()
        classes = self._classes()
        if DEFAULTS.class_name in classes:
            self.class_name.value = DEFAULTS.class_name
        self.class_name.enabled = bool(classes)
        self.slices.enable(card is None or card.spatial_dims == 2)
        self._update_calls()

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

    def _indices(self, image: Image) -> list[int] | None:
        return self.slices.indices(image)

    def _batches(self, mask: np.ndarray, indices: list[int] | None) -> int:
        """Batches the run will take: proposals x masked slices (2D models), in batches of the default size."""
        if self._card is not None and self._card.spatial_dims == 3:
            items = 1
        else:
            moved = np.moveaxis(mask if mask.ndim == 3 else mask[None], self.axis.value if mask.ndim == 3 else 0, 0)
            has = moved.reshape(len(moved), -1).any(axis=1)
            items = int(has.sum() if indices is None else has[[i for i in indices if 0 <= i < len(has)]].sum())
        return max(1, -(-items * self.proposals.value // DEFAULTS.batch_size))

    def prepare(self) -> Job:
        """Copy the scan and the mask (on the scan's grid); the job runs RePaint (through the preprocessing panel)."""
        from ..inpainting import iter_inpaint, settings_for

        image, mask_layer = self.image.value, self.mask.value
        if image is None or mask_layer is None or self.model_source() is None:
            raise ValueError("choose an image layer, a mask layer (Labels or Shapes) and a model")
        if image.rgb or image.multiscale:
            raise ValueError(f"image {image.name!r} is RGB or multiscale; choose a single-channel scan")
        mask, notes = mask_for(image, mask_layer)
        settings = settings_for(self.mode.value, self.steps.value, self.jump_length.value, self.resamplings.value)
        indices = self.slices.checked(image)
        for note in notes:
            show_info(f"Inpaint: {note}")
        data = np.array(image.data, copy=True)
        spacing = spacing_of(image)
        kwargs = {**self.settings(), "model": self.model_source(), "indices": indices}
        calls = count_network_calls(repaint_schedule(settings)) * self._batches(mask, indices)
        task, card, meta = self.backend.task(iter_inpaint), card_of(self.model_source()), dict(image.metadata)
        self._source = image

        def start():
            make = lambda img, sp, ax, idx, m: task(  # noqa: E731
                img, mask if m is None else m, sp, **{**kwargs, "axis": ax, "indices": idx})
            return self.prep.job("inpainting", make, data, spacing, card, kwargs["axis"], indices, mask=mask,
                                 metadata=meta)

        return Job(start, total=calls, finish=lambda result: (result, float(result.variance.max()) or 1.0))

    def show_preview(self, event) -> None:
        self.preview.show(event.preview, f"{self._source.name} inpaint preview", colormap="gray",
                          contrast_limits=self._source.contrast_limits, **placement(self._source))

    def add_result(self, done) -> Iterator[None]:
        result, top = done
        self.prep.report(result)
        src, prov = self._source, result.provenance
        for note in result.messages:
            show_info(f"Inpaint: {note}")
        look = dict(colormap="gray", contrast_limits=src.contrast_limits)
        stack = placement(src, lead=1)
        stack["metadata"] = {**stack["metadata"], "provenance": prov}
        self.result_layer = self.viewer.add_image(result.proposals, name=f"{src.name} inpaint proposals", **look,
                                                  **stack)
        yield
        single = placement(src)
        single["metadata"] = {**single["metadata"], "provenance": prov}
        self.preview.adopt(result.mean, name=f"{src.name} inpaint mean", visible=False, **look, **single)
        yield
        self.viewer.add_image(result.variance, name=f"{src.name} inpaint variance", colormap="magma",
                              blending="additive", contrast_limits=(0.0, top), visible=False, **single)
        yield
        self.chosen.max = len(result.proposals) - 1
        self.status.value = f"done: {prov['network_calls']} network calls in {prov.get('seconds', 0):.1f} s"

    def accept(self, *_: Any) -> Image | None:
        """Copy the chosen proposal into a new layer (the scan itself is never changed)."""
        stack = self.result_layer
        if stack is None or stack not in self.viewer.layers:
            self.fail("run inpainting first (the proposals layer is gone)")
            return None
        k = min(self.chosen.value, stack.data.shape[0] - 1)
        single = placement(self._source)
        single["metadata"] = {**single["metadata"], "provenance": {**stack.metadata["provenance"], "proposal": k}}
        return self.viewer.add_image(np.array(stack.data[k]), name=f"{self._source.name} inpainted #{k}",
                                     colormap="gray", contrast_limits=self._source.contrast_limits, **single)
