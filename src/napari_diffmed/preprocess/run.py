"""A task run through the model's space: the domain check, then (optionally) the scan brought onto the
template, the task run there, and every result taken back onto the scan's exact grid."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from ..progress import Progress
from .pipeline import PreprocessSettings, resolve, to_model_space

if TYPE_CHECKING:
    from ..models.card import ModelCard
    from .transform import Transform

TASKS = ("segmentation", "anomaly", "inpainting")
Make = Callable[..., Generator[Progress, None, Any]]  # (image, spacing, axis, indices, mask) -> task generator


def iter_task(
    task: str, make: Make, image: np.ndarray, spacing: Sequence[float] | None, card: "ModelCard", *,
    preprocess: "None | str | PreprocessSettings" = None, force: bool = False, axis: int = 0,
    indices: Sequence[int] | None = None, mask: np.ndarray | None = None, metadata: dict | None = None,
) -> Generator[Progress, None, Any]:
    """Check ``image`` against ``card.domain`` (warn, or refuse unless ``force``), run ``make`` on it or on
    its template-space version, and return the task's result on the scan's grid with the findings (if any)
    as ``domain`` and the preprocessing record as ``preprocess`` in its provenance."""
    from ..domain import check_scan, report

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    arr = np.asarray(image)
    settings = resolve(preprocess, card)
    notes: list[dict[str, Any]] = []
    if settings is not None and arr.ndim != 3:
        notes.append({"code": "not_registered", "message": f"a {arr.ndim}D image cannot be registered to the "
                      "template: it runs as it is", "refuse": False})
        settings = None
    elif settings is not None and spacing is None:  # e.g. a bare array in the viewer
        notes.append({"code": "not_registered", "message": "without the scan's spacing it cannot be registered "
                      "to the template: it runs as it is", "refuse": False})
        settings = None
    findings = report(check_scan(arr, spacing, card, axis=axis, metadata=metadata,
                                 preprocessed=settings is not None) + notes, force, stacklevel=5)
    if settings is None:
        result = yield from make(image, spacing, axis, indices, mask)
        if findings:  # none found: the provenance stays what the task itself records
            result.provenance["domain"] = findings
        return result
    yield Progress(0, 1, None, "bringing the scan onto the model's template")
    model_scan, tf = to_model_space(arr, spacing, card, settings, force=force)
    model_indices = tf.model_slices(axis, indices) if card.spatial_dims == 2 else None
    model_mask = None
    if task == "inpainting":
        model_mask = tf.to_model((np.asarray(mask) != 0).astype(np.uint8), "labels") > 0
        if np.asarray(mask).any() and not model_mask.any():
            raise ValueError("the mask falls outside the template once the scan is registered")
    elif task == "segmentation" and mask is not None:  # voxels a person fixed: -1 free, 0/1 set
        model_mask = np.rint(tf.to_model(np.asarray(mask, np.float32) + 1.0, "map")).astype(np.int8) - 1
    elif task == "anomaly":
        user = None if mask is None else tf.to_model((np.asarray(mask) != 0).astype(np.uint8), "labels") > 0
        model_mask = tf.brain if user is None else user & tf.brain
    gen = make(model_scan, tf.model_spacing, 0, model_indices, model_mask)
    result = yield from _no_previews(gen)
    chosen = selection(arr.shape, axis, indices) if card.spatial_dims == 2 else np.ones(arr.shape, bool)
    back = RESTORE[task](result, tf, arr, chosen & tf.inside(), mask, axis)
    back.provenance["preprocess"] = {**tf.record, "model_slices": model_indices}
    if back.provenance.get("slices"):  # the scan's slices and axis; the template's are under "preprocess"
        back.provenance["slices"] = sorted({int(i) for i in (range(arr.shape[axis]) if indices is None else indices)})
        back.provenance["axis"] = axis
    if findings:
        back.provenance["domain"] = findings
    return back


def _no_previews(gen: Generator[Progress, None, Any]) -> Generator[Progress, None, Any]:
    """The task's events without previews (they are on the template's grid, not the scan's)."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        yield Progress(event.done, event.total, None, event.message)


def selection(shape: tuple[int, ...], axis: int, indices: Sequence[int] | None) -> np.ndarray:
    """Boolean mask of the chosen slices along ``axis`` (all voxels when ``indices`` is None)."""
    chosen = np.zeros(shape, dtype=bool)
    if indices is None:
        chosen[...] = True
    else:
        np.moveaxis(chosen, axis, 0)[sorted(set(int(i) for i in indices))] = True
    return chosen


def _segmentation(result, tf: "Transform", image, chosen, mask, axis):
    covered = tf.back(result.covered.astype(np.uint8), "labels").astype(bool) & chosen
    maps = {key: tf.back(getattr(result, key), "map") * covered
            for key in ("members", "mean", "votes", "variance", "entropy", "mutual_information")}
    return replace(result, **maps, covered=covered, axis=None if result.axis is None else axis)


def _anomaly(result, tf: "Transform", image, chosen, mask, axis):
    brain = tf.back(result.brain_mask.astype(np.uint8), "labels").astype(bool) & chosen
    if mask is not None:
        brain &= np.asarray(mask) != 0
    heatmap = tf.back(result.heatmap, "map") * brain
    recon = np.where(brain, tf.back(result.reconstruction, "image"), image).astype(np.float32)
    variance = None if result.variance is None else tf.back(result.variance, "map") * brain
    return replace(result, heatmap=heatmap.astype(np.float32), reconstruction=recon, variance=variance,
                   brain_mask=brain)


def _inpainting(result, tf: "Transform", image, chosen, mask, axis):
    fill = (np.asarray(mask) != 0) & chosen
    back = tf.back(result.proposals, "image")
    proposals = np.where(fill[None], back, image[None]).astype(result.proposals.dtype)
    mean = proposals.mean(axis=0, dtype=np.float64).astype(result.mean.dtype)
    variance = proposals.var(axis=0, dtype=np.float64).astype(result.variance.dtype)
    return replace(result, proposals=proposals, mean=mean, variance=variance, mask=fill)


RESTORE = {"segmentation": _segmentation, "anomaly": _anomaly, "inpainting": _inpainting}
