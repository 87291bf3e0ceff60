"""What the widgets share about their place in the napari window: a short tab title, and an image choice
that follows the scan the user is working on."""

from __future__ import annotations

from typing import Any, Callable

from napari.layers import Image
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QDockWidget

MADE_HERE = ("provenance", "preview", "preprocess")  # metadata keys of the layers this plugin adds (results,
# running previews, the registered-scan preview and its template)


def short_tab_title(widget, title: str) -> None:
    """Once napari has docked ``widget``, give its dock the tab title ``title``.

    napari names a plugin's dock "Title (napari-diffmed)"; four of those tabified do not fit the window and
    are cut off. The dock's own title bar keeps napari's full name.
    """
    native = widget.native

    def apply() -> None:
        parent = native.parentWidget()
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parentWidget()
        if parent is not None:
            parent.setWindowTitle(title)

    QTimer.singleShot(0, apply)


class FollowImage:
    """Keep ``combo`` (a magicgui ComboBox of image layers or their names) on the newest scan added, or the
    image layer selected in the layer list, until the user picks one in the combo box itself.

    Layers this plugin made (results with provenance, running previews) are not followed. ``on_follow`` runs
    after the choice moved. A picked layer that is removed frees the choice again.
    """

    def __init__(self, viewer, combo, on_follow: Callable[[], Any] | None = None) -> None:
        self.viewer, self.combo, self.on_follow = viewer, combo, on_follow
        self.picked = None  # the layer (or name) the user chose by hand
        combo.native.activated.connect(self._user_picked)  # only emitted for a choice made by hand
        viewer.layers.events.inserted.connect(lambda event: self._follow(event.value))
        viewer.layers.events.removed.connect(self._removed)
        viewer.layers.selection.events.active.connect(lambda event: self._follow(event.value))

    def _user_picked(self, *_: Any) -> None:
        self.picked = self.combo.value

    def _removed(self, event) -> None:
        if self.picked is event.value or self.picked == getattr(event.value, "name", None):
            self.picked = None

    def _follow(self, layer) -> None:
        if self.picked is not None or not isinstance(layer, Image) or any(key in layer.metadata for key in MADE_HERE):
            return
        self.combo.reset_choices()
        choices = self.combo.choices
        value = layer if layer in choices else layer.name if layer.name in choices else None
        if value is None or self.combo.value is value or self.combo.value == value:
            return
        self.combo.value = value
        if self.on_follow is not None:
            self.on_follow()
