"""Diffusion models for medical imaging in napari.

The task functions are plain Python over numpy arrays (no Qt, no napari) and
are imported lazily, so ``import napari_diffmed`` stays light: torch and MONAI
load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "synthesize": "synthesis", "iter_synthesize": "synthesis", "guidance_sweep": "synthesis",
    "segment_ensemble": "ensemble", "iter_segment_ensemble": "ensemble",
    "inpaint": "inpainting", "iter_inpaint": "inpainting",
    "anomaly_map": "anomaly", "iter_anomaly_map": "anomaly",
    "read_nifti": "io", "write_nifti": "io", "read_scan": "io",
    "list_models": "models", "get_model": "models", "load_model": "models", "save_model": "models",
    "ModelCard": "models", "select_device": "device",
    "SynthesisSettings": "settings", "EnsembleSettings": "settings", "InpaintSettings": "settings",
    "AnomalySettings": "settings",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'napari_diffmed' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
