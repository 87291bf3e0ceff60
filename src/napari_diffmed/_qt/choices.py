"""Choices the task widgets share: a napari layer picker, and the slices a 2D model runs on."""

from __future__ import annotations

from typing import Any

import numpy as np
from magicgui.widgets import ComboBox, SpinBox
from magicgui.widgets.bases import CategoricalWidget

from ..slices import check_slices


class LayerPicker(ComboBox):
    """A layer picker as magicgui makes them for napari (the layers themselves are the values, shown by name),
    bound to ``viewer`` so that it is current before the widget is docked. A layer's name is accepted as a value.

    ``newest_first`` lists the layer added last first (a mask just painted).
    """

    def __init__(self, viewer, kinds: type | tuple[type, ...], label: str, nullable: bool = False,
                 newest_first: bool = False, tooltip: str | None = None) -> None:
        self._viewer, self._kinds, self._newest_first = viewer, kinds, newest_first
        start = {"value": None} if nullable else {}
        super().__init__(label=label, choices=self._layers, nullable=nullable, tooltip=tooltip, **start)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed):
            event.connect(lambda *_: self.reset_choices())

    def _layers(self, *_: Any) -> list[tuple[str, Any]]:
        found = [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, self._kinds)]
        return found[::-1] if self._newest_first else found

    @property
    def value(self) -> Any:
        return CategoricalWidget.value.fget(self)

    @value.setter
    def value(self, value: Any) -> None:
        if isinstance(value, str):
            if value not in self._viewer.layers:
                raise ValueError(f"there is no layer named {value!r}")
            value = self._viewer.layers[value]
        if value is not None and value not in self.choices:
            self.reset_choices()
        CategoricalWidget.value.fset(self, value)


REGIONS = ("whole volume", "current slice", "slice range")


class SliceChoice:
    """Which slices a 2D model runs on: the whole volume, the viewer's current slice, or first, ..., stop - 1
    (as ``--slices FIRST:STOP``) along the slice axis. ``widgets`` go into the widget's form; the range fields
    show only for a slice range."""

    def __init__(self, viewer, region: str = REGIONS[0], axis: int = 0, stop: int = 1) -> None:
        self.viewer = viewer
        self.region = ComboBox(label="region", choices=list(REGIONS), value=region)
        self.axis = SpinBox(label="slice axis", min=0, max=2, value=axis)
        self.first = SpinBox(label="first slice", min=0, max=100_000, value=0)
        self.stop = SpinBox(label="stop slice (excluded)", min=1, max=100_000, value=stop,
                            tooltip="the range is first, first + 1, ..., stop - 1, as --slices FIRST:STOP")
        self.widgets = [self.region, self.axis, self.first, self.stop]
        self.region.changed.connect(self.show_range)
        self.show_range()

    def show_range(self, *_: Any) -> None:
        for field in (self.first, self.stop):
            field.visible = self.region.value == "slice range"

    def enable(self, enabled: bool) -> None:
        """Slices apply to 2D models only."""
        for field in self.widgets:
            field.enabled = enabled

    def current(self, image) -> int:
        """The viewer's current slice of ``image`` along the slice axis."""
        axis = min(self.axis.value, image.ndim - 1)
        index = np.asarray(image.world_to_data(self.viewer.dims.point[-image.ndim:]))[axis]
        return int(np.clip(round(float(index)), 0, image.data.shape[axis] - 1))

    def centre(self, image, slab: int) -> None:
        """A range of ``slab`` slices around the current one, clipped to the volume."""
        if image is None or image.ndim != 3:
            return
        depth = image.data.shape[self.axis.value]
        start = int(np.clip(self.current(image) - slab // 2, 0, max(0, depth - slab)))
        self.first.value, self.stop.value = start, min(depth, start + slab)

    def indices(self, image) -> list[int] | None:
        """The chosen slices of ``image`` (None: every slice)."""
        if not self.region.enabled or self.region.value == "whole volume" or image.ndim == 2:
            return None
        if self.region.value == "current slice":
            return [self.current(image)]
        return list(range(self.first.value, self.stop.value))

    def checked(self, image) -> list[int] | None:
        """:meth:`indices`, checked against the volume (a clear ``ValueError`` otherwise)."""
        depth = image.data.shape[self.axis.value] if image.ndim == 3 else 1
        return check_slices(self.indices(image), depth, self.axis.value)
