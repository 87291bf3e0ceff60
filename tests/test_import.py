"""``import napari_diffmed`` stays light: no torch, MONAI or Qt until a task runs (fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "monai", "napari", "qtpy", "magicgui", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")


def heavy_modules_after(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter; return the heavy top-level packages it imported."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    return [name for name in HEAVY if name in loaded]


def test_package_import_is_light():
    assert heavy_modules_after("import napari_diffmed") == []


def test_lazy_attributes_resolve_without_loading_torch():
    code = (
        "import napari_diffmed as nd\n"
        "from napari_diffmed.io import read_nifti\n"
        "from napari_diffmed.models import ModelCard\n"
        "assert nd.read_nifti is read_nifti and nd.ModelCard is ModelCard\n"
        "assert isinstance(nd.list_models(), list)\n"
    )
    assert heavy_modules_after(code) == []


LIGHT_MODULES = (
    "napari_diffmed.io", "napari_diffmed.models", "napari_diffmed.geometry", "napari_diffmed.volumes",
    "napari_diffmed.sampling", "napari_diffmed.device", "napari_diffmed.progress", "napari_diffmed.provenance",
    "napari_diffmed.distributed", "napari_diffmed.sample_data", "napari_diffmed._napari_io",
)


def test_foundation_and_reader_modules_are_light():
    """Opening a file or sample in napari does not wait for torch; the core modules import it lazily."""
    probe = (
        "import importlib, json, sys\n"
        f"heavy, blame = {HEAVY!r}, {{}}\n"
        f"for name in {LIGHT_MODULES!r}:\n"
        "    before = {m.split('.')[0] for m in sys.modules}\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as err:\n"
        "        blame[name] = repr(err)\n"
        "        continue\n"
        "    new = sorted({m.split('.')[0] for m in sys.modules} - before)\n"
        "    if any(h in new for h in heavy):\n"
        "        blame[name] = [h for h in heavy if h in new]\n"
        "print(json.dumps(blame))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {}


def test_unknown_attribute_is_an_attribute_error():
    import napari_diffmed

    with pytest.raises(AttributeError, match="no attribute 'synthesise'"):
        napari_diffmed.synthesise  # noqa: B018


@pytest.mark.parametrize("name", sorted(n for n in __import__("napari_diffmed").__all__ if n != "__version__"))
def test_every_advertised_name_resolves(name):
    import napari_diffmed

    assert callable(getattr(napari_diffmed, name))
