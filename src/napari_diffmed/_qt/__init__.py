"""Qt widgets for napari (the only place that imports napari Qt parts, magicgui or qtpy)."""
