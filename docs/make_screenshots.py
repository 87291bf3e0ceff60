"""Screenshots of the napari-diffmed widgets for the docs, taken in a real napari window.

    xvfb-run -a python docs/make_screenshots.py [--models DIR] [--out docs/images] [--only NAME ...]

Each shot opens the widget the way Plugins > napari-diffmed does, in a real ``napari.Viewer``
(OpenGL canvas, so it needs a display: Xvfb with Mesa is enough), sets small, fast settings,
presses Run, waits for the worker to finish and saves the whole window, dock widget included
(``viewer.screenshot(canvas_only=False)``):

- synthesis_widget.png     a guidance sweep (0, 1, 2, 4) of the 2D image model, side by side
- inpainting_widget.png    the MNI152 T1 with a planted dark white-matter lesion and the painted
                           mask's outline | the first proposal ("fast", current slice)
- anomaly_widget.png       the same lesioned scan | its pseudo-healthy reconstruction /
                           the heatmap | the anomaly mask, with the lesion as reference
- segmentation_widget.png  the MNI152 T1 | the members' mean / the entropy | the consensus,
                           at the most uncertain slice, the template's white matter as reference

``--models DIR`` puts DIR on ``NAPARI_DIFFMED_MODELS`` (before the widgets are imported), so
freshly trained models are used by name. Runs are seeded, so the shots are reproducible for
given weights. ``--threads`` limits torch's CPU threads.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

SHOTS = ("synthesis", "inpainting", "anomaly", "segmentation")
# Wider than xvfb-run's default 1280x1024 screen: Xvfb has no window manager to object,
# and the screenshot renders the whole window.
WINDOW = (1600, 1000)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", action="append", type=Path, default=[],
                   help="folder of NAME.safetensors + NAME.json (repeatable); put on NAPARI_DIFFMED_MODELS")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "images", help="folder for the PNGs")
    p.add_argument("--only", nargs="+", choices=SHOTS, default=list(SHOTS), help="take only these shots")
    p.add_argument("--device", default="auto", help="device for the widgets (auto, cpu, cuda, mps)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each run")
    p.add_argument("--seed", type=int, default=0, help="seed of the planted lesion search and of every run")
    return p.parse_args(argv)


# --- data --------------------------------------------------------------------------------------------

def lesioned_mni(seed: int = 0):
    """The 2 mm MNI152 T1 with one dark white-matter lesion planted (a T1 'black hole'), its mask and slice."""
    from scipy import ndimage

    from napari_diffmed.sample_data import mni152_sample
    from napari_diffmed.training.lesions import LesionStyle, plant_lesions
    from napari_diffmed.training.templates import load_mni152

    (t1, kwargs, _), *_ = mni152_sample()
    wm = load_mni152(resolution=2).wm
    top = float(np.percentile(t1[t1 > 0], 99.5))
    unit = np.clip(t1 / top, 0.0, 1.0)
    style = LesionStyle(shapes=("blob",), radius=(4.0, 5.0), contrast=(0.4, 0.5), polarity=("dark",), count=(1, 1))
    band = (int(0.50 * len(t1)), int(0.62 * len(t1)))  # axial slices through the lateral ventricles' level
    for s in range(seed, seed + 500):
        image, mask = plant_lesions(unit, unit > 0.15, np.random.default_rng(s), style)
        if mask.sum() < 20:
            continue
        centre = tuple(int(round(c)) for c in ndimage.center_of_mass(mask))
        if band[0] <= centre[0] < band[1] and wm[centre] > 0.8 and wm[mask].mean() > 0.6:
            break
    else:  # pragma: no cover - the template has plenty of white matter
        raise RuntimeError("no planted lesion landed in the white matter")
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    kwargs = {k: v for k, v in kwargs.items() if k in ("scale", "translate", "metadata")}
    return (image * top).astype(np.float32), mask.astype(np.uint8), kwargs, z


# --- viewer helpers ---------------------------------------------------------------------------------

def process(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.02)


def fresh(viewer, app) -> None:
    """An empty viewer: no layers, no dock widgets, 2D, no grid."""
    viewer.window.remove_dock_widget("all")
    viewer.layers.clear()
    viewer.canvas.grid.enabled = False
    viewer.dims.ndisplay = 2
    process(app)


def run_and_wait(widget, app, timeout: float, what: str) -> None:
    """Press Run like a user, then process Qt events until the widget's job has finished."""
    widget.run_button.native.click()
    process(app, 0.5)
    start = time.monotonic()
    while widget.runner.worker is not None:
        if time.monotonic() - start > timeout:
            widget.runner.cancel()
            raise TimeoutError(f"{what}: the run took longer than {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.05)
    process(app, 1.0)
    status = str(widget.status.value)
    print(f"  {what}: {status} ({time.monotonic() - start:.0f} s)", flush=True)
    if status.startswith("failed"):
        raise RuntimeError(f"{what}: {status}")


def show_slice(viewer, layer, z: int, zoom: float = 1.0) -> None:
    """2D view of axial slice ``z`` of the 3D ``layer``, fitted to the canvas and then zoomed.

    Result stacks (proposals, members) add leading world axes: the scan's z is the third from last.
    """
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(viewer.dims.ndim - 3, float(layer.data_to_world([z, 0, 0])[0]))
    viewer.reset_view()
    viewer.scene.camera.zoom *= zoom


def close_notifications(viewer, app) -> None:
    """Close napari's notification toasts, which would cover the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.close()
    process(app, 0.5)


def save(viewer, app, path: Path) -> None:
    process(app, 1.0)
    close_notifications(viewer, app)
    viewer.screenshot(str(path), canvas_only=False, flash=False)
    print(f"  wrote {path}", flush=True)


def open_widget(viewer, app, title: str, cls, left: int = 250):
    """Open the plugin's widget ``title`` as the Plugins menu does; dock it on the right at its smallest width.

    If napari cannot build it from the manifest (for instance because it does not recognise the
    ``viewer`` argument), say so loudly and build ``cls(viewer)`` directly so the other shots go on.
    """
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget

    try:
        _, widget = viewer.window.add_plugin_dock_widget("napari-diffmed", title)
    except Exception as err:  # noqa: BLE001 - report and carry on
        print(f"  WARNING: Plugins > napari-diffmed > {title} fails: {type(err).__name__}: {err}; "
              f"building {cls.__name__}(viewer) directly", flush=True)
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=title, area="right")
    process(app, 0.5)
    win = viewer.window._qt_window
    docks = [d for d in win.findChildren(QDockWidget) if d.isVisible()]
    area = {d: win.dockWidgetArea(d) for d in docks}
    lefts = [d for d in docks if area[d] == Qt.DockWidgetArea.LeftDockWidgetArea]
    rights = [d for d in docks if area[d] == Qt.DockWidgetArea.RightDockWidgetArea]
    widths = [left] * len(lefts) + [d.minimumSizeHint().width() for d in rights]
    win.resizeDocks(lefts + rights, widths, Qt.Orientation.Horizontal)
    process(app, 0.5)
    return widget


def refill_classes(widget) -> None:
    """Re-read the model card if napari's ``reset_choices`` (on docking, on new layers) emptied the class list."""
    card = getattr(widget, "_card", None)
    if card is not None and card.conditional and not widget.class_name.choices:
        print("  note: the class list was emptied by reset_choices; re-reading the model card", flush=True)
        widget._model_changed()


def pick(combo, name: str) -> None:
    """Choose ``name`` in a layer or model combo box (values may be names or layers)."""
    for choice in combo.choices:
        if choice == name or getattr(choice, "name", None) == name:
            combo.value = choice
            return
    raise ValueError(f"{name!r} is not among {combo.label!r} choices {list(combo.choices)}")


# --- shots -------------------------------------------------------------------------------------------

def shot_synthesis(viewer, app, args) -> None:
    from napari_diffmed._qt.synthesis import SynthesisWidget

    widget = open_widget(viewer, app, "Synthesize", SynthesisWidget)
    widget.device.value = args.device
    widget.steps.value, widget.n_samples.value, widget.seed.value = 20, 4, args.seed
    refill_classes(widget)
    if widget.class_name.choices:
        widget.class_name.value = "healthy" if "healthy" in widget.class_name.choices else widget.class_name.choices[0]
        widget.sweep.value = True  # the default scales, side by side
    run_and_wait(widget, app, args.timeout, "synthesis")
    refill_classes(widget)
    viewer.dims.set_current_step(0, 0)
    viewer.reset_view()
    viewer.scene.camera.zoom *= 0.95
    save(viewer, app, args.out / "synthesis_widget.png")


def shot_inpainting(viewer, app, args, scene) -> None:
    from scipy import ndimage

    from napari_diffmed._qt.inpainting import InpaintingWidget

    image, lesion, kwargs, z = scene
    scan = viewer.add_image(image, name="T1 with lesion", colormap="gray", **kwargs)
    painted = ndimage.binary_dilation(lesion, iterations=1).astype(np.uint8)  # what a user would paint
    viewer.add_labels(painted, name="painted mask", opacity=0.6, scale=kwargs["scale"], translate=kwargs["translate"])
    widget = open_widget(viewer, app, "Inpaint", InpaintingWidget)
    pick(widget.image, scan.name)
    pick(widget.mask, "painted mask")
    widget.device.value = args.device
    widget.mode.value = "fast"
    widget.proposals.value, widget.seed.value = 3, args.seed
    widget.region.value = "current slice"
    show_slice(viewer, scan, z)
    refill_classes(widget)
    run_and_wait(widget, app, args.timeout, "inpainting")
    refill_classes(widget)
    # Two panels: the scan with the painted outline | the first proposal (mean and variance hidden).
    viewer.layers["painted mask"].contour = 1
    for layer in viewer.layers:
        layer.visible = not layer.name.endswith((" inpaint mean", " inpaint variance"))
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.stride = 2
    viewer.canvas.grid.shape = (1, 2)
    viewer.layers.selection.active = widget.result_layer
    show_slice(viewer, scan, z, zoom=1.0)
    save(viewer, app, args.out / "inpainting_widget.png")


def shot_anomaly(viewer, app, args, scene) -> None:
    from napari_diffmed._qt.anomaly import AnomalyWidget

    image, lesion, kwargs, z = scene
    scan = viewer.add_image(image, name="T1 with lesion", colormap="gray", **kwargs)
    viewer.add_labels(lesion, name="planted lesion", scale=kwargs["scale"], translate=kwargs["translate"],
                      visible=False)
    widget = open_widget(viewer, app, "Anomaly map", AnomalyWidget)
    widget.reset_choices()
    pick(widget.image, scan.name)
    pick(widget.reference, "planted lesion")
    widget.method.value = "ddim"
    widget.seed.value = args.seed
    widget.slices.value = f"{z - 2}:{z + 3}"
    run_and_wait(widget, app, args.timeout, "anomaly")
    focus_on_slab(widget)
    # Four panels: the scan | its pseudo-healthy reconstruction / the heatmap | the anomaly mask.
    for layer in viewer.layers:
        layer.visible = not layer.name.endswith("variance") and layer.name != "planted lesion"
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.stride = 1
    viewer.canvas.grid.shape = (2, 2)
    viewer.layers.selection.active = widget.result_layers["heatmap"]
    show_slice(viewer, scan, z, zoom=1.0)
    save(viewer, app, args.out / "anomaly_widget.png")


def focus_on_slab(widget) -> None:
    """Heatmap contrast and threshold from the analysed slices only, as a user would set them by hand.

    The widget takes both from the whole brain mask; with a few slices analysed, the voxels
    of the other slices (heatmap 0) pull the percentiles down.
    """
    result, heat = widget.result, widget.result_layers["heatmap"]
    slab = np.zeros(result.heatmap.shape, bool)
    slab[result.provenance["slices"]] = True
    inside = result.heatmap[slab & result.brain_mask]
    low, high, cut = np.percentile(inside, [50, 99.5, 98])
    if (low, high) != tuple(heat.contrast_limits):
        print(f"  heatmap contrast {tuple(round(v, 4) for v in heat.contrast_limits)} -> ({low:.4f}, {high:.4f}), "
              f"threshold {widget.threshold.value:.4f} -> {cut:.4f} (98th percentile of the analysed slices)")
    heat.contrast_limits = (float(low), float(max(high, low + 1e-6)))
    widget.threshold.value = float(cut)


def shot_segmentation(viewer, app, args) -> None:
    try:
        from napari_diffmed._qt.segmentation import SegmentationWidget
    except ImportError as err:
        print(f"  segmentation: skipped ({err})", flush=True)
        return
    from napari_diffmed.sample_data import mni152_sample
    from napari_diffmed.training.templates import load_mni152

    (t1, kwargs, _), *_ = mni152_sample()
    kwargs = {k: v for k, v in kwargs.items() if k in ("scale", "translate", "metadata")}
    scan = viewer.add_image(t1, name="MNI152 T1", colormap="gray", **kwargs)
    wm = (load_mni152(resolution=2).wm > 0.5).astype(np.uint8)  # the template's own white matter, as reference
    viewer.add_labels(wm, name="white matter (template)", scale=kwargs["scale"], translate=kwargs["translate"],
                      visible=False)
    z = int(0.55 * len(t1))
    show_slice(viewer, scan, z)
    widget = open_widget(viewer, app, "Segment (ensemble)", SegmentationWidget)
    pick(widget.image, scan.name)
    widget.device.value = args.device
    widget.members.value, widget.steps.value, widget.seed.value = 6, 10, args.seed
    widget.region.value = "slice range"
    widget.first.value, widget.stop.value = z - 2, z + 3
    pick(widget.reference, "white matter (template)")
    run_and_wait(widget, app, args.timeout, "segmentation")
    top = widget.step(1)  # Next: the most uncertain slice of the run
    # Four panels: the scan | the members' mean probability / the entropy | the consensus labels.
    for layer in viewer.layers:
        layer.visible = not layer.name.endswith(("variance", "members")) and layer.name != "white matter (template)"
    viewer.canvas.grid.enabled = True
    viewer.canvas.grid.stride = 1
    viewer.canvas.grid.shape = (2, 2)
    show_slice(viewer, scan, z if top is None else top)
    save(viewer, app, args.out / "segmentation_widget.png")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.models:
        os.environ["NAPARI_DIFFMED_MODELS"] = os.pathsep.join(str(m.expanduser().resolve()) for m in args.models)
    import napari
    from qtpy.QtWidgets import QApplication

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from napari_diffmed.models import list_models

    names = [e.name for e in list_models()]
    print(f"models: {names} (NAPARI_DIFFMED_MODELS={os.environ.get('NAPARI_DIFFMED_MODELS', '')!r})", flush=True)
    if not names:
        print("no models found: give --models DIR", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-diffmed")
    app = QApplication.instance()
    viewer.window._qt_window.resize(*WINDOW)
    process(app, 1.0)
    scene = lesioned_mni(args.seed) if {"inpainting", "anomaly"} & set(args.only) else None
    failed = []
    for name in args.only:
        print(f"{name}:", flush=True)
        fresh(viewer, app)
        try:
            if name in ("inpainting", "anomaly"):
                globals()[f"shot_{name}"](viewer, app, args, scene)
            else:
                globals()[f"shot_{name}"](viewer, app, args)
        except Exception as err:  # one failed shot must not lose the others
            import traceback

            traceback.print_exc()
            failed.append(f"{name}: {err}")
    viewer.close()
    for line in failed:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
