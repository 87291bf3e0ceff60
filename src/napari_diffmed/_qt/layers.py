"""Layer helpers shared by the widgets: where a layer sits in the world, and a job's preview layer."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import geometry


def world_matrix(layer) -> np.ndarray:
    """A layer's (ndim+1)^2 data -> world matrix."""
    placement = {"scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate, "shear": layer.shear,
                 "affine": layer.affine.affine_matrix}
    return geometry.world_matrix(placement, layer.ndim)


def spacing_of(layer) -> tuple[float, ...] | None:
    """The voxel spacing of an image layer in mm: the reader's (``metadata["spacing"]``), else the layer's
    scale when someone set it, else None (unknown: the task's domain check says so and assumes 1 mm)."""
    spacing = layer.metadata.get("spacing")
    if spacing is not None:
        return tuple(float(s) for s in spacing)
    scale = tuple(float(s) for s in layer.scale)
    return None if np.allclose(scale, 1.0) else scale


def placement(layer, lead: int = 0) -> dict[str, Any]:
    """Where ``layer`` sits in the world (scale/translate, or an affine), with ``lead`` extra leading axes,
    and its metadata without the provenance of whatever made it."""
    meta = {k: v for k, v in layer.metadata.items() if k != "provenance"}
    matrix, n = world_matrix(layer), layer.ndim
    if np.allclose(matrix[:n, :n], np.diag(np.diag(matrix[:n, :n]))):
        return {"scale": (1.0,) * lead + tuple(np.diag(matrix)[:n]), "translate": (0.0,) * lead + tuple(matrix[:n, n]),
                "metadata": meta}
    full = np.eye(n + lead + 1)
    full[lead:, lead:] = matrix
    return {"affine": full, "metadata": meta}


class PreviewLayer:
    """The one temporary Image layer that shows a running job's current estimate.

    ``show`` adds it on the first preview and only swaps its data afterwards; ``remove`` takes it
    away (when the job ends, however it ends). A layer the user deleted meanwhile is added again.
    ``adopt`` turns it into one of the result's layers instead: napari's removal of a layer collects
    garbage on the GUI thread (0.6 s with torch and MONAI loaded), an addition builds a new visual.
    """

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layer = None

    def show(self, data: np.ndarray, name: str, **kwargs: Any) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.layer.data = data
        else:  # marked, so that the widgets' image choice does not follow it
            kwargs["metadata"] = {**kwargs.get("metadata", {}), "preview": True}
            self.layer = self.viewer.add_image(data, name=name, **kwargs)

    def adopt(self, data: np.ndarray, name: str, **kwargs: Any):
        """``viewer.add_image(data, name=name, **kwargs)``, done by the preview layer when there is one of as
        many axes: it takes the data, the name and the keyword arguments, and stays as a result layer."""
        layer = self.layer
        if layer is None or layer not in self.viewer.layers or layer.data.ndim != np.ndim(data):
            return self.viewer.add_image(data, name=name, **kwargs)
        self.layer = None
        layer.data, layer.name, layer.metadata = data, name, kwargs.pop("metadata", {})
        for key, value in kwargs.items():
            setattr(layer, key, value)
        layers = self.viewer.layers
        layers.move(layers.index(layer), len(layers))  # on top, where add_image puts a layer
        return layer

    def remove(self, *_: Any) -> None:
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None
