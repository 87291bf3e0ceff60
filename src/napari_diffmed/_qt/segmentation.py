"""Plugins > napari-diffmed > Segment (ensemble): consensus labels with uncertainty, and a review
panel that walks the slices where the members disagree most (annotation-assisted labeling)."""

from __future__ import annotations

from typing import Any, Iterator

import napari
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, PushButton, Select, SpinBox
from napari.layers import Image, Labels

from ..ensemble import DEFAULTS, MAX_MEMBERS, RULES
from ..models import default_model
from ..sampling import SCHEDULER_NAMES
from .base import Job, TaskWidget
from .choices import LayerPicker, SliceChoice
from .dock import FollowImage
from .layers import placement, spacing_of
from .preprocess import PreprocessPanel, card_of

SLAB = 12  # slices in the default range, around the current one


class SegmentationWidget(TaskWidget):
    """Choose a scan, a segmentation model and the ensemble; Run adds consensus labels, mean, variance and
    entropy layers. The threshold and fusion rule re-fuse the stored members without the model; the review
    list ranks slices by disagreement and Previous/Next move the viewer there."""

    tab, title, model_task = "Segment", "Segment", "segmentation"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, default_model("segmentation", 2))
        self.image = LayerPicker(viewer, Image, "image")
        self.members = SpinBox(label="members", min=1, max=MAX_MEMBERS, value=DEFAULTS.members)
        self.steps = SpinBox(label="steps", min=1, max=1000, value=DEFAULTS.steps, tooltip="DDPM needs all 1000")
        self.scheduler = ComboBox(label="scheduler", choices=list(SCHEDULER_NAMES), value=DEFAULTS.scheduler)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed)
        self.slices = SliceChoice(viewer, region="slice range", stop=SLAB)
        self.region, self.axis, self.first, self.stop = self.slices.widgets
        self.keep_members = CheckBox(text="add the members as a stack layer", value=False)
        self.rule = ComboBox(label="fusion", choices=list(RULES), value=DEFAULTS.rule,
                             tooltip="majority: fraction of members voting > threshold; mean: mean probability")
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.01, value=DEFAULTS.threshold)
        self.reference = LayerPicker(viewer, Labels, "reference labels", nullable=True)
        self._choices: list[tuple[str, int]] = []  # the ranking, read back by napari's reset_choices
        self.ranked = Select(label="most uncertain slices", choices=lambda *_: self._choices)
        self.previous_button, self.next_button = PushButton(text="Previous"), PushButton(text="Next")
        self.metrics = Label(value="")
        self.prep = PreprocessPanel(viewer, lambda: self.image.value, lambda: card_of(self.model_source()))
        self.lay_out(
            inputs=[self.image],
            options=[self.members, self.steps, self.scheduler, self.seed, *self.slices.widgets],
            extras=[self.keep_members, self.prep],
            review=[self.rule, self.threshold, self.reference, self.ranked,
                    Container(widgets=[self.previous_button, self.next_button], layout="horizontal", labels=False),
                    self.metrics])
        self.result = None
        self.result_layers: dict[str, Any] = {}
        self._source: Image | None = None
        self._order: list[int] = []
        self._position = -1
        self.follow = FollowImage(viewer, self.image)
        self.image.changed.connect(self._centre_range)
        self.axis.changed.connect(self._centre_range)
        self.rule.changed.connect(self.refuse)
        self.threshold.changed.connect(self.refuse)
        self.reference.changed.connect(self._score)
        self.ranked.changed.connect(self._picked)
        self.previous_button.changed.connect(lambda *_: self.step(-1))
        self.next_button.changed.connect(lambda *_: self.step(1))
        self._centre_range()

    def _centre_range(self, *_: Any) -> None:
        """A slab of ``SLAB`` slices around the current one: about a minute on a laptop CPU."""
        self.slices.centre(self.image.value, SLAB)

    def _indices(self, image: Image) -> list[int] | None:
        return self.slices.indices(image)

    def settings(self) -> dict[str, Any]:
        """The widget's values as keyword arguments of :func:`~napari_diffmed.ensemble.iter_segment_ensemble`."""
        return dict(members=self.members.value, steps=self.steps.value, scheduler=self.scheduler.value,
                    seed=self.seed.value, axis=self.axis.value, device=self.device.value)

    # --- running ------------------------------------------------------------------------------------

    def prepare(self) -> Job:
        """Check the choices, copy the scan; the job runs the ensemble (through the preprocessing panel)."""
        from ..ensemble import check_segmentation_card, iter_segment_ensemble, planned_calls

        image = self.image.value
        if image is None or self.model_source() is None:
            raise ValueError("choose an image layer and a segmentation model")
        if image.rgb or image.multiscale or image.ndim not in (2, 3):
            raise ValueError(f"layer {image.name!r} must be a single-channel 2D image or 3D volume")
        card = self.read_card()  # the card only: the job loads the weights
        check_segmentation_card(card)
        indices = self.slices.checked(image)
        depth = image.data.shape[self.axis.value] if image.ndim == 3 else 1
        n = 1 if card.spatial_dims == 3 else len(indices) if indices is not None else depth
        members, steps, scheduler = self.members.value, self.steps.value, self.scheduler.value
        data = np.array(image.data, dtype=np.float32)  # a copy: the layer is never touched
        spacing = spacing_of(image)
        kwargs = {**self.settings(), "model": self.model_source()}
        task, meta, rule, threshold = self.backend.task(iter_segment_ensemble), dict(image.metadata), \
            self.rule.value, self.threshold.value
        self._source = image

        def start():
            make = lambda img, sp, ax, idx, _: task(img, sp, **{**kwargs, "axis": ax, "indices": idx})  # noqa: E731
            return self.prep.job("segmentation", make, data, spacing, card, kwargs["axis"], indices, metadata=meta)

        return Job(start, check=lambda: planned_calls(card, n, members=members, steps=steps, scheduler=scheduler),
                   finish=lambda result: (result, (rule, threshold), result.labels(rule, threshold)))

    def show_preview(self, event) -> None:
        self.preview.show(event.preview, f"{self._source.name} ensemble preview", colormap="magma",
                          blending="additive", contrast_limits=(0.0, 1.0), **placement(self._source))

    def add_result(self, done) -> Iterator[None]:
        result, fused, labels = done
        self.prep.report(result)
        src, self.result = self._source, result
        place = placement(src)
        place["metadata"] = {**place["metadata"], "provenance": result.provenance}
        name, add = src.name, self.viewer.add_image
        self.result_layers = {}  # only the consensus arrives visible; the maps are a click away in the layer list
        self.result_layers["mean"] = self.preview.adopt(result.mean, name=f"{name} ensemble mean", colormap="viridis",
                                                        contrast_limits=(0, 1), opacity=0.6, blending="additive",
                                                        visible=False, **place)
        yield
        self.result_layers["variance"] = add(result.variance, name=f"{name} ensemble variance", colormap="magma",
                                             visible=False, contrast_limits=(0, 0.25), blending="additive", **place)
        yield
        self.result_layers["entropy"] = add(result.entropy, name=f"{name} ensemble entropy", colormap="inferno",
                                            contrast_limits=(0, 1), blending="additive", opacity=0.7, visible=False,
                                            **place)
        yield
        if self.keep_members.value:
            stack = placement(src, lead=1)
            stack["metadata"] = {**stack["metadata"], "provenance": result.provenance}
            self.result_layers["members"] = add(result.members, name=f"{name} ensemble members", colormap="gray",
                                                contrast_limits=(0, 1), visible=False, **stack)
            yield
        if fused != (self.rule.value, self.threshold.value):  # changed during the run
            labels = result.labels(self.rule.value, self.threshold.value)
        self.result_layers["labels"] = self.viewer.add_labels(labels, name=f"{name} consensus", opacity=0.5, **place)
        yield
        self._rank()
        self._score()
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

        reference = np.asarray(self.reference.value.data)
        spacing = self.result.provenance.get("spacing")
        try:
            s = segmentation_scores(self.result, reference, spacing, self.rule.value, self.threshold.value)
        except ValueError as err:
            self.metrics.value = f"no scores: {err}"
            return
        self.metrics.value = (f"Dice {s['dice']:.3f}  HD95 {s['hd95']:.2f} mm\nGED {s['ged']:.3f}  "
                              f"uncertainty AUROC {s['uncertainty_auroc']:.3f}")
