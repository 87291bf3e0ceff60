"""Start napari with every napari-diffmed widget docked, as ``napari -w napari-diffmed __all__`` does,
check that each is there and its tab title is not cut off, and save a screenshot of the whole window.

    xvfb-run -a python scripts/launch_check.py --screenshot .ci/artifacts/napari_widgets.png

Exits 1 (naming the problem) when a widget is missing or a tab title is elided.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PLUGIN = "napari-diffmed"


def dock_all(viewer) -> list:
    """Dock every widget of the plugin's manifest, tabified, in manifest order; returns the dock widgets."""
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest(PLUGIN)
    names = [w.display_name for w in manifest.contributions.widgets]
    docks = [viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=True)[0] for name in names]
    docks[0].show()
    docks[0].raise_()
    return docks


def tab_titles(window) -> list[tuple[str, bool]]:
    """(title, drawn in full) for every tab of the main window's visible tab bars: a tab is drawn in full when
    it lies inside its bar and is as wide as its text plus the style's padding (Qt elides it otherwise)."""
    from qtpy.QtWidgets import QStyle, QTabBar

    shown = []
    for bar in window.findChildren(QTabBar):
        if not bar.isVisible():
            continue
        padding = bar.style().pixelMetric(QStyle.PixelMetric.PM_TabBarTabHSpace, None, bar)
        for i in range(bar.count()):
            rect, text = bar.tabRect(i), bar.tabText(i)
            fits = rect.width() >= bar.fontMetrics().horizontalAdvance(text) + padding
            shown.append((text, fits and bar.rect().contains(rect)))
    return shown


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshot", type=Path, default=Path(".ci/artifacts/napari_widgets.png"))
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("W", "H"),
                        help="window size (default: napari's own)")
    args = parser.parse_args(argv)
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(show=True)
    if args.size:
        viewer.window.resize(*args.size)
    docks = dock_all(viewer)
    for _ in range(20):
        QApplication.processEvents()
    window = viewer.window._qt_window
    problems = [f"missing widget {d.name!r}" for d in docks if d.widget() is None]
    titles = tab_titles(window)
    problems += [f"tab title {title!r} is cut off" for title, full in titles if not full]
    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(args.screenshot), canvas_only=False)
    size = window.size()
    print(f"napari {napari.__version__}: window {size.width()}x{size.height()}, "
          f"{len(docks)} widgets docked, tabs {[title for title, _ in titles]}")
    print(f"screenshot: {args.screenshot.resolve()}")
    viewer.close()
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
