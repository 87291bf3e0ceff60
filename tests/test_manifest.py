"""The napari manifest: valid for npe2, and every ``python_name`` in it imports."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

MANIFEST = Path(__file__).parents[1] / "napari.yaml"


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
