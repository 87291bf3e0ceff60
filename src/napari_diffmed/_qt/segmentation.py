"""Plugins > napari-diffmed > Segment (ensemble): consensus labels with uncertainty, and a review
panel that walks the slices where the members disagree most (annotation-assisted labeling)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    CheckBox, ComboBox, Container, FileEdit, FloatSlider, Label, ProgressBar, PushButton, Select, SpinBox,
)
from napari.layers import Image, Labels
from napari.utils.notifications import show_error

from ..device import DEVICE_CHOICES
from ..ensemble import DEFAULTS, MAX_MEMBERS, RULES
from ..models import default_model, list_models
from ..sampling import SCHEDULER_NAMES
from .backend import BackendChoice
from .dock import FollowImage, short_tab_title
from .layers import PreviewLayer, placement
from .jobs import JobRunner
from .preprocess import PreprocessPanel, card_of


REGIONS = ("slice range", "current slice", "whole volume")
SLAB = 12  # slices in the default range, around the current one


class SegmentationWidget(Container):
    """Choose a scan, a segmentation model and the ensemble; Run adds consensus labels, mean, variance and
    entropy layers. The threshold and fusion rule re-fuse the stored members without the model; the review
    list ranks slices by disagreement and Previous/Next move the viewer there."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._layers(Image), nullable=True)
        names = [entry.name for entry in list_models(task="segmentation")]
        default = default_model("segmentation", 2)
        self.model = ComboBox(label="model", choices=names, value=default if default in names else None,
                              nullable=True)
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.safetensors", nullable=True)
        self.members = SpinBox(label="members", min=1, max=MAX_MEMBERS, value=DEFAULTS.members)
        self.steps = SpinBox(label="steps", min=1, max=1000, value=DEFAULTS.steps, tooltip="DDPM needs all 1000")
        self.scheduler = ComboBox(label="scheduler", choices=list(SCHEDULER_NAMES), value=DEFAULTS.scheduler)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.axis = SpinBox(label="slice axis", min=0, max=2, value=0)
        self.region = ComboBox(label="region", choices=list(REGIONS), value=REGIONS[0])
        self.first = SpinBox(label="first slice", min=0, max=100_000, value=0)
        self.stop = SpinBox(label="stop slice (excluded)", min=1, max=100_000, value=SLAB,
                            tooltip="the range is first, first + 1, ..., stop - 1, as --slices FIRST:STOP")
        self.device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value="auto")
        self.backend = BackendChoice(self.device)
        self.keep_members = CheckBox(text="add the members as a stack layer", value=False)
        self.run_button, self.cancel_button = PushButton(text="Run"), PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        self.rule = ComboBox(label="fusion", choices=list(RULES), value=DEFAULTS.rule,
                             tooltip="majority: fraction of members voting > threshold; mean: mean probability")
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.01, value=DEFAULTS.threshold)
        self.reference = ComboBox(label="reference labels", choices=self._layers(Labels), nullable=True, value=None)
        self._choices: list[tuple[str, int]] = []  # the ranking, read back by napari's reset_choices
        self.ranked = Select(label="most uncertain slices", choices=lambda *_: self._choices)
        self.previous_button, self.next_button = PushButton(text="Previous"), PushButton(text="Next")
        self.metrics = Label(value="")
        self.prep = PreprocessPanel(viewer, lambda: self.viewer.layers[self.image.value] if self.image.value else None,
                                    lambda: card_of(self.model_source()))
        super().__init__(widgets=[
            self.image, self.model, self.model_file, self.members, self.steps, self.scheduler, self.seed, self.axis,
            self.region, self.first, self.stop, self.device, self.backend, self.keep_members, self.prep,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.progress, self.status, self.rule, self.threshold, self.reference, self.ranked,
            Container(widgets=[self.previous_button, self.next_button], layout="horizontal", labels=False),
            self.metrics,
        ])
        self.runner = JobRunner(self.run_button, self.cancel_button, self.status, progress_bar=self.progress)
        self.preview = PreviewLayer(viewer)
        self.worker = None
        self.result = None
        self.result_layers: dict[str, Any] = {}
        self._source: Image | None = None
        self._order: list[int] = []
        self._position = -1
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(self._refresh_layers)
        self._refresh_layers()
        self.follow = FollowImage(viewer, self.image)
        self.region.changed.connect(self._show_range)
        self._show_range()
        short_tab_title(self, "Segment")
        self.image.changed.connect(self._centre_range)
        self.axis.changed.connect(self._centre_range)
        self.run_button.changed.connect(self.run)
        self.rule.changed.connect(self.refuse)
        self.threshold.changed.connect(self.refuse)
        self.reference.changed.connect(self._score)
        self.ranked.changed.connect(self._picked)
        self.previous_button.changed.connect(lambda *_: self.step(-1))
        self.next_button.changed.connect(lambda *_: self.step(1))
        self._centre_range()

    # --- choices ------------------------------------------------------------------------------------

    def _layers(self, kind):
        """Layer names of one kind, as a callable: napari's ``reset_choices`` on layer changes calls it."""
        return lambda *_: [layer.name for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layers(self, *_: Any) -> None:
        self.reset_choices()
        names = self._layers(Image)()
        if self.image.value is None and names:
            self.image.value = names[0]

    def _current_slice(self, image: Image) -> int:
        axis = min(self.axis.value, image.ndim - 1)
        index = np.asarray(image.world_to_data(self.viewer.dims.point[-image.ndim:]))[axis]
        return int(np.clip(round(float(index)), 0, image.data.shape[axis] - 1))

    def _centre_range(self, *_: Any) -> None:
        """A slab of ``SLAB`` slices around the current one: about a minute on a laptop CPU."""
        if self.image.value is None:
            return
        image = self.viewer.layers[self.image.value]
        if image.ndim != 3:
            return
        depth = image.data.shape[self.axis.value]
        start = int(np.clip(self._current_slice(image) - SLAB // 2, 0, max(0, depth - SLAB)))
        self.first.value, self.stop.value = start, min(depth, start + SLAB)

    def _show_range(self, *_: Any) -> None:
        for field in (self.first, self.stop):
            field.visible = self.region.value == "slice range"

    def model_source(self) -> str | None:
        path = self.model_file.value
        return str(path) if path not in (None, Path("."), Path("")) else self.model.value

    def settings(self) -> dict[str, Any]:
        """The widget's values as keyword arguments of :func:`~napari_diffmed.ensemble.iter_segment_ensemble`."""
        return dict(members=self.members.value, steps=self.steps.value, scheduler=self.scheduler.value,
                    seed=self.seed.value, axis=self.axis.value, device=self.device.value)

    def _indices(self, image: Image) -> list[int] | None:
        if self.region.value == "whole volume" or image.ndim == 2:
            return None
        if self.region.value == "current slice":
            return [self._current_slice(image)]
        return list(range(self.first.value, self.stop.value))

    # --- running ------------------------------------------------------------------------------------

    def _fail(self, message: str) -> None:
        show_error(f"Segment: {message}")
        self.status.value = f"failed: {message}"

    def run(self, *_: Any):
        """Copy the scan and start the ensemble; returns the worker (None on bad input)."""
        from ..ensemble import check_segmentation_card, iter_segment_ensemble, planned_calls
        from ..models import ModelCard, resolve
        from ..models.checkpoint import card_path
        from ..slices import check_slices

        iter_segment_ensemble = self.backend.task(iter_segment_ensemble)
        if self.image.value is None or self.model_source() is None:
            self._fail("choose an image layer and a segmentation model")
            return None
        image = self.viewer.layers[self.image.value]
        try:
            if image.rgb or image.multiscale or image.ndim not in (2, 3):
                raise ValueError(f"layer {image.name!r} must be a single-channel 2D image or 3D volume")
            indices = self._indices(image)
            card = ModelCard.read(card_path(resolve(self.model_source())))  # the card only: the job loads the weights
            check_segmentation_card(card)
            depth = image.data.shape[self.axis.value] if image.ndim == 3 else 1
            indices = check_slices(indices, depth, self.axis.value)
            n = 1 if card.spatial_dims == 3 else len(indices) if indices is not None else depth
            total = planned_calls(card, n, members=self.members.value, steps=self.steps.value,
                                  scheduler=self.scheduler.value)
        except (ValueError, OSError) as err:
            self._fail(str(err))
            return None
        data = np.array(image.data, dtype=np.float32)  # a copy: the layer is never touched
        spacing = image.metadata.get("spacing") or tuple(image.scale)
        kwargs = {**self.settings(), "model": self.model_source(), "indices": indices}
        self._source = image

        meta = dict(image.metadata)

        def job():
            make = lambda img, sp, ax, idx, _: iter_segment_ensemble(  # noqa: E731
                img, sp, **{**kwargs, "axis": ax, "indices": idx})
            return self.prep.job("segmentation", make, data, spacing, card, kwargs["axis"], indices, metadata=meta)

        worker = self.runner.start(job, total=total, on_done=self._add_result, on_preview=self._show_preview,
                                   description="Segment")
        if worker is not None:
            worker.finished.connect(self.preview.remove)
            self.worker = worker
        return worker

    def _show_preview(self, event) -> None:
        self.preview.show(event.preview, f"{self._source.name} ensemble preview", colormap="magma",
                          blending="additive", contrast_limits=(0.0, 1.0), **placement(self._source))

    def _add_result(self, result) -> None:
        self.preview.remove()
        self.prep.report(result)
        src, self.result = self._source, result
        place = placement(src)
        place["metadata"] = {**place["metadata"], "provenance": result.provenance}
        name, add = src.name, self.viewer.add_image
        self.result_layers = {  # only the consensus arrives visible; the maps are a click away in the layer list
            "mean": add(result.mean, name=f"{name} ensemble mean", colormap="viridis", contrast_limits=(0, 1),
                        opacity=0.6, blending="additive", visible=False, **place),
            "variance": add(result.variance, name=f"{name} ensemble variance", colormap="magma", visible=False,
                            contrast_limits=(0, 0.25), blending="additive", **place),
            "entropy": add(result.entropy, name=f"{name} ensemble entropy", colormap="inferno", contrast_limits=(0, 1),
                           blending="additive", opacity=0.7, visible=False, **place),
        }
        if self.keep_members.value:
            stack = placement(src, lead=1)
            stack["metadata"] = {**stack["metadata"], "provenance": result.provenance}
            self.result_layers["members"] = add(result.members, name=f"{name} ensemble members", colormap="gray",
                                                contrast_limits=(0, 1), visible=False, **stack)
        self.result_layers["labels"] = self.viewer.add_labels(
            result.labels(self.rule.value, self.threshold.value), name=f"{name} consensus", opacity=0.5, **place)
        self._rank()
        self._score()
        self.progress.value = self.progress.max
        prov = result.provenance
        self.status.value = f"done: {prov['network_calls']} network calls in {prov['seconds']:.1f} s"

    # --- after the run: re-fuse, review, score --------------------------------------------------------

    def refuse(self, *_: Any) -> None:
        """Re-fuse the stored members into the consensus layer (no model call); edits there are replaced."""
        labels = self.result_layers.get("labels")
        if self.result is None or labels is None or labels not in self.viewer.layers:
            return
        labels.data = self.result.labels(self.rule.value, self.threshold.value)
        self._score()

    def _rank(self) -> None:
        from ..ensemble import slice_scores

        ranking = self.result.ranking()
        scores = slice_scores(self.result.entropy, self.result.axis or 0)
        self._order, self._position = [int(i) for i in ranking], -1
        self._choices = [(f"slice {i}: {scores[i]:.1f} bits", i) for i in self._order]
        self.ranked.reset_choices()

    def _picked(self, *_: Any) -> None:
        chosen = self.ranked.value
        if chosen and chosen[0] in self._order and self._order.index(chosen[0]) != self._position:
            self._position = self._order.index(chosen[0])
            self.go_to(chosen[0])

    def step(self, direction: int) -> int | None:
        """Move to the next (1) or previous (-1) slice in the ranking; returns its index."""
        if not self._order:
            return None
        self._position = int(np.clip(self._position + direction, 0, len(self._order) - 1))
        index = self._order[self._position]
        self.ranked.value = [index]
        self.go_to(index)
        return index

    def go_to(self, index: int) -> None:
        """Set the viewer's position along the slicing axis to slice ``index`` of the source scan."""
        src = self._source
        if src is None or src.ndim != 3 or src not in self.viewer.layers:
            return
        axis = self.result.axis or 0
        point = np.asarray(src.world_to_data(self.viewer.dims.point[-src.ndim:]), dtype=float)
        point[axis] = index
        world = np.asarray(src.data_to_world(point), dtype=float)
        self.viewer.dims.set_point(self.viewer.dims.ndim - src.ndim + axis, world[axis])

    def _score(self, *_: Any) -> None:
        if self.result is None or self.reference.value is None:
            self.metrics.value = ""
            return
        from ..evaluation.segmentation import segmentation_scores

        reference = np.asarray(self.viewer.layers[self.reference.value].data)
        spacing = self.result.provenance.get("spacing")
        try:
            s = segmentation_scores(self.result, reference, spacing, self.rule.value, self.threshold.value)
        except ValueError as err:
            self.metrics.value = f"no scores: {err}"
            return
        self.metrics.value = (f"Dice {s['dice']:.3f}  HD95 {s['hd95']:.2f} mm\nGED {s['ged']:.3f}  "
                              f"uncertainty AUROC {s['uncertainty_auroc']:.3f}")
