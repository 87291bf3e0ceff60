"""The open case of the Label widget in the viewer: its scan, entropy map and editable labels."""

from __future__ import annotations

from typing import Any

import numpy as np


class CaseLayers:
    """The layers of one case (``layers``: "scan", "entropy", "labels") and a walk along its slice ranking."""

    def __init__(self, viewer) -> None:
        self.viewer = viewer
        self.layers: dict[str, Any] = {}
        self._slice = -1

    @property
    def labels(self):
        """The labels layer while it is in the viewer, else None."""
        layer = self.layers.get("labels")
        return layer if layer is not None and layer in self.viewer.layers else None

    def clear(self) -> None:
        for layer in self.layers.values():
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.layers = {}

    def show(self, case_id: str, data, keep_view: bool = False) -> bool:
        """Show ``data`` (a :class:`~napari_diffmed.labeling.CaseData`); with ``keep_view`` only replace the
        arrays of the layers shown. Returns whether the case is new to the layers (the view moves).

        The layers of the case shown before take the new case's arrays and placement rather than being removed
        and added again: napari's removal of a layer collects garbage on the GUI thread (0.6 s a layer with
        torch and MONAI loaded) and an addition builds a new visual."""
        if keep_view and "labels" in self.layers:
            self.layers["labels"].data = data.labels
            self.layers["entropy"].data = data.maps["entropy"]
            return False
        self._slice = -1
        if all(self.layers.get(key) in self.viewer.layers for key in ("scan", "entropy", "labels")):
            self._reuse(case_id, data)
            return True
        self.clear()
        place = {**data.placement, "metadata": data.metadata}
        self.layers["scan"] = self.viewer.add_image(data.scan, name=f"{case_id}", **place)
        self.layers["entropy"] = self.viewer.add_image(
            data.maps["entropy"], name=f"{case_id} entropy", colormap="inferno", contrast_limits=(0, 1),
            blending="additive", opacity=0.5, visible=False, **place)
        self.layers["labels"] = self.viewer.add_labels(data.labels, name=f"{case_id} labels", opacity=0.5, **place)
        return True

    def _reuse(self, case_id: str, data) -> None:
        n, place = np.ndim(data.scan), data.placement
        where = {"scale": place.get("scale", (1.0,) * n), "translate": place.get("translate", (0.0,) * n),
                 "affine": place.get("affine", np.eye(n + 1)), "metadata": data.metadata}
        arrays = {"scan": (data.scan, case_id), "entropy": (data.maps["entropy"], f"{case_id} entropy"),
                  "labels": (data.labels, f"{case_id} labels")}
        for key, (array, name) in arrays.items():
            layer = self.layers[key]
            layer.data, layer.name = array, name
            for attribute, value in where.items():
                setattr(layer, attribute, value)
        self.layers["scan"].reset_contrast_limits()

    def step(self, ranking: list[int], axis: int) -> int | None:
        """Move the viewer to the next slice of ``ranking`` (along the scan's ``axis``); returns its index."""
        if "scan" not in self.layers or not ranking:
            return None
        self._slice = (self._slice + 1) % len(ranking)
        index, scan = ranking[self._slice], self.layers["scan"]
        point = np.asarray(scan.world_to_data(self.viewer.dims.point[-scan.ndim:]), dtype=float)
        point[axis] = index
        world = np.asarray(scan.data_to_world(point), dtype=float)
        self.viewer.dims.set_point(self.viewer.dims.ndim - scan.ndim + axis, world[axis])
        return index
