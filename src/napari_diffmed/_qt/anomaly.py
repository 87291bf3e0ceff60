"""Anomaly map widget: heatmap overlay, pseudo-healthy scan and a re-thresholdable anomaly mask."""

from __future__ import annotations

from typing import Any, Iterator

import napari
import numpy as np
from magicgui.widgets import ComboBox, FloatSlider, FloatSpinBox, Label, LineEdit, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_info

from ..anomaly import COMPARES, DEFAULTS, LIMITS, METHODS, AnomalyResult
from ..slices import parse_slices
from ..models import ModelCardError, default_model
from .base import Job, TaskWidget
from .choices import LayerPicker
from .dock import FollowImage
from .layers import spacing_of
from .preprocess import PreprocessPanel, card_of

GEOMETRY = ("scale", "translate", "rotate", "shear")


class AnomalyWidget(TaskWidget):
    """Pick a scan, a model and a method; Run adds the heatmap (inferno, additive), the pseudo-healthy
    reconstruction and an anomaly mask whose threshold slider re-cuts the map without the model."""

    tab, title, model_task = "Anomaly", "Anomaly map", "image"

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(viewer, default_model("image", 2))
        self.image = LayerPicker(viewer, Image, "image")
        self.method = ComboBox(label="method", choices=list(METHODS), value=DEFAULTS.method)
        self.level = SpinBox(label="noise level", min=LIMITS["level"][0], max=LIMITS["level"][1], value=DEFAULTS.level,
                             tooltip="noising timestep of 1000 (gaussian, simplex)")
        self.depth = SpinBox(label="inversion depth", min=LIMITS["depth"][0], max=LIMITS["depth"][1],
                             value=DEFAULTS.depth, tooltip="DDIM inversion timestep of 1000 (ddim)")
        self.guidance = FloatSpinBox(label="guidance", min=0.0, max=LIMITS["guidance"][1], step=0.5,
                                     value=DEFAULTS.guidance, tooltip="classifier-free guidance towards 'healthy'")
        self.compare = ComboBox(label="compare with", choices=list(COMPARES), value=DEFAULTS.compare,
                                tooltip="unguided: the same decoding without the pull towards 'healthy' (cancels "
                                        "the model's own reconstruction errors); scan: the scan itself")
        self.negative = ComboBox(label="away from", choices=["auto", "none"], value=DEFAULTS.negative,
                                 tooltip="auto: the guidance also pushes away from the model's 'lesion' class "
                                         "(when it has one); none: plain classifier-free guidance")
        self.reconstructions = SpinBox(label="reconstructions", min=1, max=LIMITS["reconstructions"][1],
                                       value=DEFAULTS.reconstructions)
        self.steps = SpinBox(label="DDIM steps", min=1, max=1000, value=DEFAULTS.steps)
        self.smoothing = FloatSpinBox(label="smoothing (mm)", min=0.0, max=LIMITS["smoothing"][1], step=0.5,
                                      value=DEFAULTS.smoothing)
        self.seed = SpinBox(label="seed", min=0, max=2**31 - 1, value=DEFAULTS.seed or 0)
        self.slices = LineEdit(label="slices", value="",
                               tooltip="START:STOP (STOP excluded), e.g. 40:52, or 3,5,7; empty = all slices")
        self.reference = LayerPicker(viewer, Labels, "reference lesions", nullable=True)
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.001, value=0.0, visible=False)
        self.threshold_info = Label(value="")
        self.metrics = Label(value="")
        self.prep = PreprocessPanel(viewer, lambda: self.image.value, lambda: card_of(self.model_source()))
        self.lay_out(inputs=[self.image],
                     options=[self.method, self.level, self.depth, self.guidance, self.compare, self.negative,
                              self.reconstructions, self.steps, self.smoothing, self.seed, self.slices,
                              self.reference],
                     extras=[self.prep], review=[self.threshold, self.threshold_info, self.metrics])
        self.result: AnomalyResult | None = None
        self.result_layers: dict[str, Any] = {}
        self._scores: dict[str, float] | None = None
        self._reference: np.ndarray | None = None
        self._cut: float | None = None
        self.threshold.changed.connect(self._rethreshold)
        self.method.changed.connect(self._show_level)
        for field in (self.method, self.model, self.model_file):
            field.changed.connect(self._describe_threshold)
        self.follow = FollowImage(viewer, self.image)
        self._show_level()
        self._describe_threshold()

    def _show_level(self, *_: Any) -> None:
        self.level.visible = self.method.value != "ddim"
        self.depth.visible = self.method.value == "ddim"

    def _describe_threshold(self, *_: Any) -> None:
        """Say, before a run, where the anomaly mask will be cut: the model card's calibrated threshold."""
        from ..anomaly import THRESHOLD_PERCENTILE

        try:
            card = self.read_card()
        except (ModelCardError, OSError, ValueError):
            card = None
        entry = None if card is None else card.metrics.get("anomaly", {}).get("threshold", {}).get(self.method.value)
        self.threshold_info.value = (
            f"{self.method.value} default threshold {entry['value']:.4g}: flags "
            f"{100 * entry['healthy_fraction']:g}% of healthy brain voxels" if entry else
            f"default threshold: the {THRESHOLD_PERCENTILE:g}th percentile of the heatmap (not calibrated)")

    def settings(self) -> dict[str, Any]:
        """The widget's values as :class:`AnomalySettings` fields."""
        chosen = {"depth": self.depth.value} if self.method.value == "ddim" else {"level": self.level.value}
        return dict(method=self.method.value, guidance=float(self.guidance.value), compare=self.compare.value,
                    negative=self.negative.value, steps=self.steps.value,
                    reconstructions=self.reconstructions.value, smoothing=float(self.smoothing.value),
                    seed=self.seed.value, device=self.device.value, **chosen)

    def prepare(self) -> Job:
        """Check the choices and copy the scan; the job makes the map (through the preprocessing panel)."""
        from ..anomaly import iter_anomaly_map, planned_calls
        from ..slices import check_slices

        layer, model = self.image.value, self.model_source()
        if layer is None or model is None:
            raise ValueError("choose an image layer and a model (set NAPARI_DIFFMED_MODELS for your own models)")
        card = self.read_card()  # the card only: the job loads the weights
        if card.task != "image":
            raise ValueError(f"model {card.name!r} is a {card.task} model; an anomaly map needs an image model")
        if layer.rgb or layer.multiscale or layer.ndim not in (2, 3):
            raise ValueError(f"layer {layer.name!r} must be a single-channel 2D image or 3D volume")
        data = np.array(layer.data, dtype=np.float32)  # a copy: the layer is never touched
        spacing = spacing_of(layer)
        indices, settings = parse_slices(self.slices.value), self.settings()
        indices = check_slices(indices, data.shape[0] if data.ndim == 3 else 1)
        config = DEFAULTS.replace(**settings)  # checks the values
        reference = self.reference.value
        self._reference = None if reference is None else np.asarray(reference.data) > 0
        self._scores, self._source = None, layer
        n = 1 if card.spatial_dims == 3 or data.ndim == 2 else len(set(indices or range(data.shape[0])))
        task, meta, truth = self.backend.task(iter_anomaly_map), dict(layer.metadata), self._reference
        make = lambda img, sp, ax, idx, m: task(  # noqa: E731
            img, sp, mask=m, axis=ax, indices=idx, model=model, preview=0.5, **settings)
        return Job(lambda: self.prep.job("anomaly", make, data, spacing, card, 0, indices, metadata=meta),
                   check=lambda: planned_calls(card, n, config), finish=lambda result: _display(result, truth))

    def _kwargs(self, source) -> dict[str, Any]:
        kw = {name: getattr(source, name) for name in GEOMETRY}
        return {**kw, "affine": source.affine.affine_matrix, "metadata": dict(source.metadata)}

    def show_preview(self, event) -> None:
        source = self._source
        self.preview.show(event.preview, f"{source.name} reconstruction (running)", colormap="gray",
                          contrast_limits=source.contrast_limits, **self._kwargs(source))

    def add_result(self, done) -> Iterator[None]:
        result, shown = done
        source = self._source
        self.prep.report(result)
        self.result, kw, name = result, self._kwargs(source), source.name
        self._cut = result.threshold  # the cut of the mask computed with the result
        kw["metadata"] = {**{k: v for k, v in kw["metadata"].items() if k != "provenance"},
                          "provenance": result.provenance}
        self.result_layers = {}  # only the heatmap arrives visible
        self.result_layers["reconstruction"] = self.preview.adopt(
            result.reconstruction, name=f"{name} pseudo-healthy", colormap="gray",
            contrast_limits=source.contrast_limits, visible=False, **kw)
        yield
        self.result_layers["heatmap"] = self.viewer.add_image(
            result.heatmap, name=f"{name} anomaly heatmap", colormap="inferno", blending="additive", opacity=0.7,
            contrast_limits=shown["heatmap"], **kw)
        yield
        self.result_layers["labels"] = self.viewer.add_labels(shown["labels"], name=f"{name} anomaly mask",
                                                              opacity=0.5, visible=False, **kw)
        yield
        for note in result.messages:
            show_info(f"Anomaly map: {note}")
        if result.variance is not None:
            self.result_layers["variance"] = self.viewer.add_image(
                result.variance, name=f"{name} anomaly variance", colormap="magma", blending="additive",
                contrast_limits=shown["variance"], visible=False, **kw)
            yield
        self._scores = shown.get("scores")
        if "no scores" in shown:
            self.metrics.value = f"no scores: {shown['no scores']}"
        self.threshold.max, self.threshold.step = shown["top"], shown["top"] / 1000
        self.threshold.visible = True
        self.threshold.value = result.threshold
        fraction = result.provenance.get("threshold_healthy_fraction")
        self.threshold_info.value = (f"default {result.threshold:.4g}: flags {100 * fraction:g}% of healthy brain "
                                     "voxels" if fraction is not None else
                                     f"default {result.threshold:.4g}: {result.provenance['threshold_rule']}")
        self._rethreshold()

    def _rethreshold(self, *_: Any) -> None:
        """Re-cut the anomaly mask from the stored heatmap (no model call)."""
        if self.result is None:
            return
        labels, cut = self.result_layers.get("labels"), self.threshold.value
        if labels is not None and labels in self.viewer.layers and cut != self._cut:
            labels.data, self._cut = self.result.labels(cut), cut
        if self._scores is not None:
            from ..evaluation.anomaly import dice

            s = self._scores
            d = dice(self.result.labels(cut), self._reference, self.result.brain_mask)
            self.metrics.value = (f"AUROC {s['auroc']:.3f}  AUPRC {s['auprc']:.3f}\n"
                                  f"best Dice {s['best_dice']:.3f} (at {s['best_threshold']:.3g})  "
                                  f"Dice here {d:.3f}")


def _display(result: AnomalyResult, reference: np.ndarray | None) -> tuple[AnomalyResult, dict[str, Any]]:
    """What the layers show, computed in the worker: the heatmap's contrast (median to 99.5th percentile in the
    brain), the variance's, the default mask, the slider's top and the scores against ``reference``."""
    inside = result.heatmap[result.brain_mask]
    low, high = np.percentile(inside, [50, 99.5]) if inside.size else (0.0, 1.0)
    shown: dict[str, Any] = {"heatmap": (float(low), float(max(high, low + 1e-6))), "labels": result.labels(),
                             "top": float(max(result.heatmap.max(), result.threshold, 1e-6))}
    if result.variance is not None:
        shown["variance"] = (0.0, float(result.variance.max()) or 1.0)
    if reference is not None and reference.shape == result.heatmap.shape:
        from ..evaluation.anomaly import anomaly_scores

        try:
            shown["scores"] = anomaly_scores(result.heatmap, reference, mask=result.brain_mask)
        except ValueError as err:
            shown["no scores"] = str(err)
    return result, shown
