"""The tasks a server runs: the package's own ``iter_`` functions, called with checked keyword arguments.

Nothing here re-implements a task: a request names one of :data:`TASKS` and gives its keyword
arguments; they are checked against the function's signature, arrays are swapped in, the model
must be one the server's registry knows, and the device is the server's.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, Callable

import numpy as np

# request name -> (module, function); the remote client sends exactly these names
TASKS = {
    "iter_synthesize": ("synthesis", "iter_synthesize"),
    "iter_guidance_sweep": ("synthesis", "iter_guidance_sweep"),
    "iter_segment_ensemble": ("ensemble", "iter_segment_ensemble"),
    "iter_inpaint": ("inpainting", "iter_inpaint"),
    "iter_anomaly_map": ("anomaly", "iter_anomaly_map"),
}
ARRAY_ARGUMENTS = ("image", "mask")


class RequestRefused(ValueError):
    """A request that names an unknown task, argument or model, or lacks an array: HTTP 422."""


def task_function(name: str) -> Callable[..., Any]:
    if name not in TASKS:
        raise RequestRefused(f"unknown task {name!r}; this server runs {sorted(TASKS)}")
    module, function = TASKS[name]
    return getattr(importlib.import_module(f"napari_diffmed.{module}"), function)


def accepted(function: Callable[..., Any]) -> set[str]:
    """Keyword names ``function`` takes (an anomaly map's ``**settings`` are :class:`AnomalySettings` fields)."""
    params = inspect.signature(function).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        from ..anomaly import AnomalySettings

        names |= set(AnomalySettings.__dataclass_fields__)
    return names


def known_models() -> dict[str, Any]:
    """The server's models by name (shipped and ``$NAPARI_DIFFMED_MODELS``)."""
    from ..models import list_models

    return {entry.name: entry for entry in list_models()}


def prepare_call(task: str, kwargs: dict[str, Any], arrays: dict[str, np.ndarray], device: str,
                 preview_interval: float) -> tuple[Callable[..., Any], dict[str, Any]]:
    """(the ``iter_`` function, its keyword arguments) for a request; :class:`RequestRefused` names the problem."""
    function = task_function(task)
    allowed = accepted(function)
    unknown = sorted((set(kwargs) | set(arrays)) - allowed)
    if unknown:
        raise RequestRefused(f"unknown settings {unknown} for {task}; allowed: {sorted(allowed)}")
    odd = sorted(set(arrays) - set(ARRAY_ARGUMENTS)) + sorted(set(kwargs) & set(ARRAY_ARGUMENTS))
    if odd:
        raise RequestRefused(f"{odd} must be sent as uploaded arrays ({list(ARRAY_ARGUMENTS)} only)")
    model = kwargs.get("model")
    if model is not None:
        names = known_models()
        if not isinstance(model, str) or model not in names:
            raise RequestRefused(f"unknown model {model!r}: a server runs only the models it knows, by name "
                                 f"(no paths or weights); it has {sorted(names)}")
    call = {**kwargs, **arrays, "device": device}
    params = inspect.signature(function).parameters
    if "max_bytes" in params:  # a client may lower the task's own memory bound, never raise it
        bound = params["max_bytes"].default
        call["max_bytes"] = min(_whole(call.get("max_bytes", bound), "max_bytes"), bound)
    if call.get("preview_interval") is not None:
        call["preview_interval"] = max(float(call["preview_interval"]), preview_interval)
    try:
        inspect.signature(function).bind(**call)
    except TypeError as err:
        raise RequestRefused(f"{task}: {err}") from None
    return function, call


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestRefused(f"{name} must be a whole number >= 1, got {value!r}")
    return value
