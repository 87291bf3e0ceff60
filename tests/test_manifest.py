"""The napari manifest: valid for npe2, and every ``python_name`` in it imports."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest

MANIFEST = Path(__file__).parents[1] / "src" / "napari_diffmed" / "napari.yaml"  # the one manifest, installed with the package


def _python_names() -> list[str]:
    return [command.python_name for command in PluginManifest.from_file(MANIFEST).contributions.commands]


def test_installed_manifest_is_this_one():
    installed = PluginManifest.from_distribution("napari-diffmed")
    assert installed.name == "napari-diffmed"
    assert installed.contributions == PluginManifest.from_file(MANIFEST).contributions


@pytest.mark.parametrize("python_name", _python_names())
def test_python_name_resolves(python_name):
    module_name, _, attr = python_name.partition(":")
    module = importlib.import_module(module_name)
    assert callable(getattr(module, attr)), f"{python_name} is not callable"


def test_every_contribution_points_at_a_command():
    manifest = PluginManifest.from_file(MANIFEST)
    ids = {command.id for command in manifest.contributions.commands}
    contrib = manifest.contributions
    groups = (contrib.readers, contrib.writers, contrib.widgets, contrib.sample_data)
    used = [c.command for group in groups for c in group or ()]
    assert set(used) <= ids and set(ids) <= set(used), f"unused {ids - set(used)}, undefined {set(used) - ids}"


def test_npe2_validate_passes():
    npe2 = shutil.which("npe2") or pytest.fail("the npe2 command is not on PATH")
    for args in ([npe2, "validate", "napari-diffmed"], [sys.executable, "-m", "npe2", "validate", str(MANIFEST)]):
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.gui
@pytest.mark.parametrize("display_name", ["Synthesize", "Segment (ensemble)", "Inpaint", "Anomaly map", "Label"])
def test_widget_opens_from_the_plugins_menu(make_napari_viewer, display_name):
    """What Plugins > napari-diffmed does: napari builds the widget and hands it the viewer."""
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 16, 16), np.float32), name="scan")
    dock, widget = viewer.window.add_plugin_dock_widget("napari-diffmed", display_name)
    assert [layer.name for layer in widget.viewer.layers] == ["scan"]  # napari passes a public proxy of it
    viewer.add_labels(np.zeros((4, 16, 16), np.uint8), name="mask")  # napari resets the choices on layer events
    classes = getattr(widget, "class_name", None)
    if classes is not None and getattr(widget, "_card", None) is not None and widget._card.conditional:
        assert list(classes.choices) == widget._card.class_names


def test_the_top_level_manifest_is_the_packaged_one():
    top = Path(__file__).parents[1] / "napari.yaml"  # where a reader of the repository looks first
    assert not top.is_symlink() and not MANIFEST.is_symlink()
    assert top.read_bytes() == MANIFEST.read_bytes(), "edit src/napari_diffmed/napari.yaml and copy it to napari.yaml"
