"""A scan task run whole: the domain check, the preprocessing its settings ask for, the task, and its results
back on the scan's grid. The plain task functions (:func:`~napari_diffmed.ensemble.segment_ensemble`,
:func:`~napari_diffmed.inpainting.inpaint`, :func:`~napari_diffmed.anomaly.anomaly_map`), the file runner
(:mod:`napari_diffmed.batch`) and the server all run a scan through :func:`iter_run`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np

from .progress import Progress
from .settings import TaskSettings, settings_class

if TYPE_CHECKING:
    from .models import LoadedModel

SCAN_TASKS = ("segmentation", "inpainting", "anomaly")


def load_model(task: str, model: "str | os.PathLike | LoadedModel | None", device: str = "auto") -> "LoadedModel":
    """:func:`napari_diffmed.models.load`, with a segmentation card checked by the ensemble's own rules."""
    if task == "segmentation":
        from .ensemble import load_model as load_segmentation

        return load_segmentation(model, device)
    from .models import load

    return load(task, model, device)


def iter_run(
    task: str, image: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: TaskSettings | dict | None = None,
    mask: np.ndarray | None = None, fixed: np.ndarray | None = None, metadata: dict | None = None,
    preview: float | None = None, **overrides: Any,
) -> Generator[Progress, None, Any]:
    """Yield the task's progress and return its result on ``image``'s grid.

    ``task``: one of :data:`SCAN_TASKS`; ``settings`` (its settings class, a dict of its fields, or None for
    the defaults) with ``overrides`` in place; ``model`` takes the place of ``settings.model``. ``mask`` is the
    region to fill (inpainting, required) or the brain mask (anomaly); ``fixed`` the labels a person set
    (segmentation). The scan is checked against the model's training domain (refused outside it unless
    ``settings.force``); ``settings.preprocess`` runs the model in its template's space (no previews then).
    """
    from .preprocess.run import iter_task

    if task not in SCAN_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(SCAN_TASKS)}")
    s = settings_class(task).build(settings, **overrides)
    loaded = load_model(task, s.model if model is None else model, s.device)
    if task == "inpainting" and mask is None:
        raise ValueError("inpainting needs a mask: the region to fill")
    if task == "segmentation":
        from .ensemble import iter_segment_ensemble

        def make(img, sp, ax, idx, m):
            return iter_segment_ensemble(img, sp, loaded, settings=s.replace(axis=ax, indices=idx), fixed=m,
                                         preview=preview)
        data = fixed
    elif task == "inpainting":
        from .inpainting import iter_inpaint

        def make(img, sp, ax, idx, m):
            return iter_inpaint(img, mask if m is None else m, sp, loaded, settings=s.replace(axis=ax, indices=idx),
                                preview=preview)
        data = mask
    else:
        from .anomaly import iter_anomaly_map

        def make(img, sp, ax, idx, m):
            return iter_anomaly_map(img, sp, loaded, settings=s.replace(axis=ax, indices=idx), mask=m,
                                    preview=preview)
        data = mask
    return (yield from iter_task(task, make, image, spacing, loaded.card, preprocess=s.preprocess, force=s.force,
                                 axis=s.axis, indices=s.indices, mask=data, metadata=metadata))
