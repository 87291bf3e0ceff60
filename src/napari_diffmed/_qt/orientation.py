"""Show each plane the way readers of scans expect, with orientation letters at the canvas edges.

napari draws the first displayed axis downwards and the second to the right, so an
axial slice of a RAS+ scan (napari axes (z, y, x) = (S, A, R)) shows anterior at the
bottom and the patient's right on the right. Here only the camera turns: anterior or
superior goes up, the patient's left goes to the screen's right in the radiological
convention (the default) or the right in the neurological one, and sagittal slices face
left. Layers (data, scale, translate, affine) and what the writers save never change.
"""

from __future__ import annotations

import weakref
from typing import Any

import napari
from magicgui.widgets import ComboBox, Container, Label
from napari.components.overlays import TextOverlay

from .dock import short_tab_title

CONVENTIONS = ("radiological", "neurological", "napari")
OPPOSITE = {"S": "I", "I": "S", "A": "P", "P": "A", "R": "L", "L": "R"}
EDGES = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
KEY = "diffmed_orientation_{}"
_GUIDES: dict[int, OrientationGuide] = {}


def _unwrap(viewer: Any) -> Any:
    """The viewer itself, not the public proxy napari hands to plugin widgets."""
    return getattr(viewer, "__wrapped__", viewer)


def world_letters(viewer: Any) -> list[str | None]:
    """The anatomical direction (S, A or R) in which each world axis of the viewer grows, None if not anatomical.

    Scans opened by napari-diffmed have world axes (..., S, A, R) in mm; axes squeezed away from a
    2D scan are taken from its metadata. Without such a layer the last three axes are taken as (S, A, R)
    and a 2D viewer as (A, R).
    """
    ndim = viewer.dims.ndim
    for layer in viewer.layers:
        meta = layer.metadata or {}
        if "axcodes" in meta and "source_shape" in meta:
            lead = layer.ndim - (3 - len(meta.get("squeezed", ())))
            kept = [letter for i, letter in enumerate("SAR") if lead + i not in meta.get("squeezed", ())]
            letters = [None] * max(lead, 0) + kept
            return ([None] * (ndim - len(letters)) + letters)[-ndim:]
    anatomy = ["S", "A", "R"] if ndim >= 3 else ["A", "R"]
    return [None] * (ndim - len(anatomy)) + anatomy[-ndim:]


def screen_directions(vertical: str | None, horizontal: str | None, convention: str) -> tuple[str, str]:
    """napari's ``camera.orientation2d`` putting superior/anterior up and left-right per ``convention``."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown display convention {convention!r}; choose from {CONVENTIONS}")
    if convention == "napari":
        return "down", "right"
    up = "up" if vertical in ("S", "A") else "down"
    if horizontal == "R":
        side = "left" if convention == "radiological" else "right"
    else:  # sagittal slices face left (anterior on the left), whatever the left-right convention
        side = "left" if horizontal == "A" else "right"
    return up, side


def edge_letters(vertical: str | None, horizontal: str | None, directions: tuple[str, str]) -> dict[str, str]:
    """The anatomical letter at each canvas edge for the given displayed axes and screen directions."""
    if vertical is None or horizontal is None:
        return {}
    up, side = directions
    top = vertical if up == "up" else OPPOSITE[vertical]
    right = horizontal if side == "right" else OPPOSITE[horizontal]
    return {"top": top, "bottom": OPPOSITE[top], "right": right, "left": OPPOSITE[right]}


def apply_convention(viewer: Any, convention: str = "radiological") -> dict[str, str]:
    """Turn the camera of ``viewer`` to ``convention`` and label the canvas edges; returns the edge letters.

    Only the camera and the canvas overlays change; in 3D the letters are hidden and napari's own camera
    orientation is restored.
    """
    viewer = _unwrap(viewer)
    letters = world_letters(viewer)
    directions = screen_directions(None, None, convention)  # validates the convention
    shown: dict[str, str] = {}
    if viewer.dims.ndisplay == 2 and viewer.layers:
        vertical, horizontal = (letters[axis] for axis in viewer.dims.displayed)
        directions = screen_directions(vertical, horizontal, convention)
        if convention != "napari":
            shown = edge_letters(vertical, horizontal, directions)
    viewer.camera.orientation2d = directions
    for edge, position in EDGES.items():
        key = KEY.format(edge)
        if key not in viewer.canvas.overlays:
            viewer.canvas.overlays[key] = TextOverlay(position=position, font_size=14, color="yellow")
        overlay = viewer.canvas.overlays[key]
        overlay.text = shown.get(edge, "")
        overlay.visible = edge in shown
    return shown


class OrientationGuide:
    """Keeps a viewer in one convention as layers come and go and the displayed plane changes."""

    def __init__(self, viewer: Any, convention: str = "radiological") -> None:
        screen_directions(None, None, convention)
        viewer = _unwrap(viewer)
        self._viewer = weakref.ref(viewer)
        self.convention = convention
        for emitter in (viewer.dims.events.order, viewer.dims.events.ndisplay, viewer.dims.events.ndim,
                        viewer.layers.events.inserted, viewer.layers.events.removed):
            emitter.connect(self.update)
        self.update()

    def set_convention(self, convention: str) -> None:
        screen_directions(None, None, convention)
        self.convention = convention
        self.update()

    def update(self, event: Any = None) -> None:
        viewer = self._viewer()
        if viewer is not None:
            apply_convention(viewer, self.convention)


def guide_for(viewer: Any, convention: str = "radiological") -> OrientationGuide:
    """The viewer's guide, made with ``convention`` the first time (later calls keep the user's choice)."""
    viewer = _unwrap(viewer)
    for key in [k for k, g in _GUIDES.items() if g._viewer() is None]:  # closed viewers
        del _GUIDES[key]
    guide = _GUIDES.get(id(viewer))
    if guide is None or guide._viewer() is not viewer:
        guide = _GUIDES[id(viewer)] = OrientationGuide(viewer, convention)
    return guide


class OrientationWidget(Container):
    """View: scan orientation. Radiological (patient's left on screen right), neurological, or napari's own."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__(labels=True)
        self.guide = guide_for(viewer)
        self.convention = ComboBox(label="convention", choices=list(CONVENTIONS), value=self.guide.convention,
                                   tooltip="radiological: patient's left on screen right; neurological: left on left; "
                                           "napari: the camera as napari sets it. Anterior/superior are up in both.")
        self.note = Label(value="the layers and saved files do not change")
        self.convention.changed.connect(self.guide.set_convention)
        self.extend([self.convention, self.note])
        short_tab_title(self, "Orientation")
