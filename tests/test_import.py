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


VIEWER_ONLY = ("napari", "npe2", "magicgui", "qtpy", "superqt", "app_model", "vispy", "PyQt5", "PyQt6", "PySide2",
               "PySide6")
API_MODULES = ("napari_diffmed", "napari_diffmed.ensemble", "napari_diffmed.io", "napari_diffmed.synthesis",
               "napari_diffmed.inpainting", "napari_diffmed.anomaly", "napari_diffmed.cli",
               "napari_diffmed.distributed", "napari_diffmed.training.api", "napari_diffmed.evaluation.segmentation",
               "napari_diffmed.evaluation.anomaly", "napari_diffmed.evaluation.synthesis")


def test_the_python_api_and_command_line_run_without_napari_or_qt(tmp_path, tiny_seg_model):
    """``pip install napari-diffmed`` (no [napari] extra) is enough for scripts and servers: with napari, magicgui,
    qtpy and every Qt binding unimportable, the API imports and a segmentation runs from the command line."""
    import nibabel as nib
    import numpy as np

    scan = tmp_path / "scan.nii.gz"
    image = np.random.default_rng(0).random((24, 24, 3)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.diag([3.0, 3.0, 4.0, 1.0])), scan)
    code = (
        "import importlib, importlib.abc, sys\n"
        "class Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] in {VIEWER_ONLY!r}:\n"
        "            raise ImportError(f'{name} is not installed (blocked by the test)')\n"
        "sys.meta_path.insert(0, Blocked())\n"
        f"for name in {API_MODULES!r}:\n"
        "    importlib.import_module(name)\n"
        "from napari_diffmed.cli import main\n"
        f"sys.exit(main(['segment', {str(scan)!r}, '--out', {str(tmp_path / 'out')!r}, '--model', "
        f"{str(tiny_seg_model)!r}, '--members', '2', '--steps', '2', '--quiet', '--device', 'cpu']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "scan_seg_labels.nii.gz" in written and any(n.endswith(".json") for n in written), written


def test_preprocessing_without_simpleitk_names_the_extra():
    code = (
        "import importlib.abc, sys\n"
        "class Blocked(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'SimpleITK':\n"
        "            raise ImportError('No module named SimpleITK')\n"
        "sys.meta_path.insert(0, Blocked())\n"
        "import numpy as np\n"
        "from napari_diffmed.preprocess import to_model_space\n"
        "to_model_space(np.zeros((4, 4, 4), np.float32), (1.0, 1.0, 1.0), None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "ImportError: preprocessing needs SimpleITK: pip install 'napari-diffmed[preprocess]'")


def test_one_version_string():
    """pyproject takes its version from ``napari_diffmed.__version__``; the installed metadata says the same."""
    import importlib.metadata

    import napari_diffmed

    assert importlib.metadata.version("napari-diffmed") == napari_diffmed.__version__
