"""Screenshot of the preprocessing preview for docs/generalisation.md, in a real napari window.

    xvfb-run -a python docs/make_preprocess_screenshot.py [--out docs/images/preprocess_preview.png]

A T1 head made from the 1 mm MNI152 brain (turned 12 degrees in the axial plane, shifted, with CSF, bone
and scalp around it and a bias field) is opened as a scan; the Segment widget's preprocessing panel runs
"Preview registered scan" (N4, affine registration, brain extraction, intensity matching) and the window
shows the registered scan (magma) over the template | the head as it is, with the panel and its mark.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def head_scan() -> tuple[np.ndarray, tuple[float, float, float]]:
    from scipy import ndimage

    from napari_diffmed.preprocess.synthetic import add_skull
    from napari_diffmed.training.templates import load_mni152

    t = load_mni152(1)
    brain = ndimage.zoom(ndimage.rotate(t.t1, 12.0, axes=(1, 2), reshape=False, order=1), 1 / 1.5, order=1)
    head = add_skull(np.roll(brain, (4, -6), axis=(1, 2)), (1.5, 1.5, 1.5), seed=0)
    field = np.exp(0.3 * np.linspace(-1, 1, head.shape[2]))[None, None]
    return (head * field * 1000).astype(np.float32), (1.5, 1.5, 1.5)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "images" / "preprocess_preview.png")
    args = parser.parse_args(argv)
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_diffmed._qt.segmentation import SegmentationWidget

    scan, spacing = head_scan()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1600, 1000)
    viewer.add_image(scan, name="head T1", scale=spacing, metadata={"spacing": spacing}, colormap="gray")
    widget = SegmentationWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment (ensemble)", area="right")
    worker = widget.prep.preview()
    while worker is not None and widget.prep.worker is not None:
        QApplication.processEvents()
        time.sleep(0.05)
    head = viewer.layers["head T1"]  # grid cells take the layers in pairs from the bottom of the list:
    viewer.layers.move(viewer.layers.index(head), len(viewer.layers))  # the template and registered scan | the head
    grid = viewer.canvas.grid if hasattr(viewer, "canvas") else viewer.grid
    grid.enabled, grid.shape, grid.stride = True, (1, 2), 2
    viewer.dims.set_point(0, 100.0)  # mm: through the ventricles of the template and of the head
    for _ in range(20):
        QApplication.processEvents()
    viewer.reset_view()
    for _ in range(20):
        QApplication.processEvents()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.out), canvas_only=False, flash=False)
    print(f"wrote {args.out}: {widget.prep.mark.value}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
