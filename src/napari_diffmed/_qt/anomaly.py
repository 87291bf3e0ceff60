"""Anomaly map widget: heatmap overlay, pseudo-healthy scan and a re-thresholdable anomaly mask."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import napari
import numpy as np
from magicgui.widgets import (
    ComboBox, Container, FileEdit, FloatSlider, FloatSpinBox, Label, LineEdit, ProgressBar, PushButton, SpinBox,
)
from napari.utils.notifications import show_error, show_info

from ..anomaly import COMPARES, DEFAULTS, LIMITS, METHODS, AnomalyResult, parse_slices
from ..device import DEVICE_CHOICES
from .backend import BackendChoice
from .dock import FollowImage, short_tab_title
from .jobs import JobRunner
from .preprocess import PreprocessPanel, card_of
from .layers import PreviewLayer


GEOMETRY = ("scale", "translate", "rotate", "shear")


class AnomalyWidget(Container):
    """Pick a scan, a model and a method; Run adds the heatmap (inferno, additive), the pseudo-healthy
    reconstruction and an anomaly mask whose threshold slider re-cuts the map without the model."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.viewer = viewer
        self.image = ComboBox(label="image", choices=self._layers("image"))
        self.model = ComboBox(label="model", choices=self._models())
        self.model_file = FileEdit(label="or model file", mode="r", filter="*.safetensors", nullable=True)
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
        self.reference = ComboBox(label="reference lesions", choices=self._layers("labels"), nullable=True, value=None)
        self.device = ComboBox(label="device", choices=list(DEVICE_CHOICES), value="auto")
        self.backend = BackendChoice(self.device)
        self.run_button, self.cancel_button = PushButton(text="Run"), PushButton(text="Cancel")
        self.progress = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        self.threshold = FloatSlider(label="threshold", min=0.0, max=1.0, step=0.001, value=0.0, visible=False)
        self.threshold_info = Label(value="")
        self.metrics = Label(value="")
        self.prep = PreprocessPanel(viewer, lambda: self.image.value, lambda: card_of(self.model_source()))
        self.extend([self.image, self.model, self.model_file, self.method, self.level, self.depth, self.guidance,
                     self.compare, self.negative, self.reconstructions, self.steps, self.smoothing, self.seed,
                     self.slices, self.reference, self.device, self.backend, self.prep,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.progress, self.status, self.threshold, self.threshold_info, self.metrics])
        self.runner = JobRunner(self.run_button, self.cancel_button, self.status, progress_bar=self.progress)
        self.result: AnomalyResult | None = None
        self.result_layers: dict[str, Any] = {}
        self.preview = PreviewLayer(viewer)
        self._scores: dict[str, float] | None = None
        self._reference: np.ndarray | None = None
        self.run_button.changed.connect(self.run)
        self.threshold.changed.connect(self._rethreshold)
        self.method.changed.connect(self._show_level)
        for field in (self.method, self.model, self.model_file):
            field.changed.connect(self._describe_threshold)
        viewer.layers.events.inserted.connect(self.reset_choices)
        viewer.layers.events.removed.connect(self.reset_choices)
        self.follow = FollowImage(viewer, self.image)
        self._show_level()
        self._describe_threshold()
        short_tab_title(self, "Anomaly")

    def _layers(self, kind: str):
        from napari.layers import Image, Labels

        cls = Image if kind == "image" else Labels
        return lambda *_: [layer for layer in self.viewer.layers if isinstance(layer, cls)]

    @staticmethod
    def _models() -> list[str]:
        from ..models import default_model, list_models

        names = [entry.name for entry in list_models(task="image")]
        first = default_model("image", 2)
        return sorted(names, key=lambda n: n != first)

    def _show_level(self, *_: Any) -> None:
        self.level.visible = self.method.value != "ddim"
        self.depth.visible = self.method.value == "ddim"

    def _describe_threshold(self, *_: Any) -> None:
        """Say, before a run, where the anomaly mask will be cut: the model card's calibrated threshold."""
        from ..anomaly import THRESHOLD_PERCENTILE
        from ..models import ModelCard, ModelCardError, resolve
        from ..models.checkpoint import card_path

        try:
            card = ModelCard.read(card_path(resolve(self.model_source()))) if self.model_source() else None
        except (ModelCardError, OSError, ValueError):
            card = None
        entry = None if card is None else card.metrics.get("anomaly", {}).get("threshold", {}).get(self.method.value)
        self.threshold_info.value = (
            f"{self.method.value} default threshold {entry['value']:.4g}: flags "
            f"{100 * entry['healthy_fraction']:g}% of healthy brain voxels" if entry else
            f"default threshold: the {THRESHOLD_PERCENTILE:g}th percentile of the heatmap (not calibrated)")

    def model_source(self) -> str | None:
        path = self.model_file.value
        return str(path) if path not in (None, Path("."), Path("")) else self.model.value

    def settings(self) -> dict[str, Any]:
        """The widget's values as :class:`AnomalySettings` fields."""
        chosen = {"depth": self.depth.value} if self.method.value == "ddim" else {"level": self.level.value}
        return dict(method=self.method.value, guidance=float(self.guidance.value), compare=self.compare.value,
                    negative=self.negative.value, steps=self.steps.value,
                    reconstructions=self.reconstructions.value, smoothing=float(self.smoothing.value),
                    seed=self.seed.value, device=self.device.value, **chosen)

    def run(self, *_: Any):
        """Copy the scan and start the anomaly map; returns the worker (None on bad input)."""
        from ..anomaly import iter_anomaly_map, planned_calls
        from ..models import ModelCard, resolve
        from ..models.checkpoint import card_path
        from ..slices import check_slices

        iter_anomaly_map = self.backend.task(iter_anomaly_map)

        layer, model = self.image.value, self.model_source()
        try:
            if layer is None or model is None:
                raise ValueError("choose an image layer and a model (set NAPARI_DIFFMED_MODELS for your own models)")
            card = ModelCard.read(card_path(resolve(model)))  # the card only: the job loads the weights
            if card.task != "image":
                raise ValueError(f"model {card.name!r} is a {card.task} model; an anomaly map needs an image model")
            if layer.rgb or layer.multiscale or layer.ndim not in (2, 3):
                raise ValueError(f"layer {layer.name!r} must be a single-channel 2D image or 3D volume")
            data = np.array(layer.data, dtype=np.float32)  # a copy: the layer is never touched
            spacing = tuple(layer.metadata.get("spacing", layer.scale))
            indices, settings = parse_slices(self.slices.value), self.settings()
            indices = check_slices(indices, data.shape[0] if data.ndim == 3 else 1)
            replace(DEFAULTS, **settings)  # checks the values
        except (ValueError, OSError) as err:
            show_error(f"Anomaly map: {err}")
            self.status.value = f"failed: {err}"
            return None
        source, reference = layer, self.reference.value
        self._reference = None if reference is None else np.asarray(reference.data) > 0
        self._scores = None
        n = 1 if card.spatial_dims == 3 or data.ndim == 2 else len(set(indices or range(data.shape[0])))
        make = lambda img, sp, ax, idx, m: iter_anomaly_map(  # noqa: E731
            img, sp, mask=m, axis=ax, indices=idx, model=model, preview=0.5, **settings)
        meta = dict(layer.metadata)
        job = lambda: self.prep.job("anomaly", make, data, spacing, card, 0, indices, metadata=meta)  # noqa: E731
        worker = self.runner.start(job, total=planned_calls(card, n, replace(DEFAULTS, **settings)),
                                   on_done=lambda r: self._show(r, source, self._reference),
                                   on_preview=lambda e: self.preview.show(
                                       e.preview, f"{source.name} reconstruction (running)", colormap="gray",
                                       **self._kwargs(source)),
                                   description="anomaly map")
        if worker is not None:
            worker.finished.connect(self.preview.remove)
        return worker

    def _kwargs(self, source) -> dict[str, Any]:
        kw = {name: getattr(source, name) for name in GEOMETRY}
        return {**kw, "affine": source.affine.affine_matrix, "metadata": dict(source.metadata)}

    def _show(self, result: AnomalyResult, source, reference: np.ndarray | None) -> None:
        self.preview.remove()
        self.prep.report(result)
        self.result, kw, name = result, self._kwargs(source), source.name
        kw["metadata"] = {**{k: v for k, v in kw["metadata"].items() if k != "provenance"},
                          "provenance": result.provenance}
        inside = result.heatmap[result.brain_mask]
        low, high = (np.percentile(inside, [50, 99.5]) if inside.size else (0.0, 1.0))
        self.result_layers = {
            "reconstruction": self.viewer.add_image(result.reconstruction, name=f"{name} pseudo-healthy",
                                                    colormap="gray", contrast_limits=source.contrast_limits,
                                                    visible=False, **kw),
            "heatmap": self.viewer.add_image(result.heatmap, name=f"{name} anomaly heatmap", colormap="inferno",
                                             blending="additive", opacity=0.7,
                                             contrast_limits=(float(low), float(max(high, low + 1e-6))), **kw),
            "labels": self.viewer.add_labels(result.labels(), name=f"{name} anomaly mask", opacity=0.5,
                                             visible=False, **kw),
        }  # only the heatmap arrives visible
        for note in result.messages:
            show_info(f"Anomaly map: {note}")
        if result.variance is not None:
            self.result_layers["variance"] = self.viewer.add_image(
                result.variance, name=f"{name} anomaly variance", colormap="magma", blending="additive",
                visible=False, **kw)
        if reference is not None and reference.shape == result.heatmap.shape:
            from ..evaluation.anomaly import anomaly_scores

            try:
                self._scores = anomaly_scores(result.heatmap, reference, mask=result.brain_mask)
            except ValueError as err:
                self.metrics.value = f"no scores: {err}"
        top = float(max(result.heatmap.max(), result.threshold, 1e-6))
        self.threshold.max, self.threshold.step = top, top / 1000
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
        labels = self.result_layers.get("labels")
        if labels is not None and labels in self.viewer.layers:
            labels.data = self.result.labels(self.threshold.value)
        if self._scores is not None:
            from ..evaluation.anomaly import dice

            s = self._scores
            d = dice(self.result.labels(self.threshold.value), self._reference, self.result.brain_mask)
            self.metrics.value = (f"AUROC {s['auroc']:.3f}  AUPRC {s['auprc']:.3f}\n"
                                  f"best Dice {s['best_dice']:.3f} (at {s['best_threshold']:.3g})  "
                                  f"Dice here {d:.3f}")
