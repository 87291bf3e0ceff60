"""Provenance: what made a result (model, scheduler, steps, seed, guidance, device, time)."""

from __future__ import annotations

import platform
from typing import Any

from . import __version__
from .models.checkpoint import LoadedModel


def provenance(model: LoadedModel, **settings: Any) -> dict[str, Any]:
    """A JSON-able record of a run; ``settings`` are the task's own (steps, seed, ...)."""
    return {
        "model": model.card.name,
        "model_id": model.model_id,
        "model_sha256": model.card.weights_sha256,
        "model_path": str(model.path),
        "napari_diffmed": __version__,
        "python": platform.python_version(),
        **{k: _jsonable(v) for k, v in settings.items()},
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "item") and getattr(value, "size", 2) == 1:
        return value.item()
    return str(value)

