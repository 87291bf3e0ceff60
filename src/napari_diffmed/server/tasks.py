"""The tasks a server runs: the package's own generator functions, called with the task's settings object.

Nothing here re-implements a task: a request names one of :data:`TASKS` and sends the task's settings as
JSON (``settings``, the fields of its :mod:`~napari_diffmed.settings` class; fields given among ``kwargs``
count as well); the server builds the settings object from them, checked as everywhere
(:meth:`~napari_diffmed.contract.TaskSettings.from_dict`), with its own device and at most its own memory
bound. The model must be one the server's registry knows. The plain forms (``segment_ensemble``,
``inpaint``, ``anomaly_map``) run the scan through :func:`napari_diffmed.runner.iter_run`, so the domain
check and the preprocessing the settings ask for happen on the server as they do on a user's computer.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

import numpy as np

# request name -> (module, generator function, the task whose settings it takes; a runner task for plain forms)
TASKS = {
    "iter_synthesize": ("synthesis", "iter_synthesize", "synthesis"),
    "iter_guidance_sweep": ("synthesis", "iter_guidance_sweep", "synthesis"),
    "iter_segment_ensemble": ("ensemble", "iter_segment_ensemble", "segmentation"),
    "iter_inpaint": ("inpainting", "iter_inpaint", "inpainting"),
    "iter_anomaly_map": ("anomaly", "iter_anomaly_map", "anomaly"),
    "synthesize": ("synthesis", "iter_synthesize", "synthesis"),
    "guidance_sweep": ("synthesis", "iter_guidance_sweep", "synthesis"),
    "segment_ensemble": ("runner", "iter_run", "segmentation"),
    "inpaint": ("runner", "iter_run", "inpainting"),
    "anomaly_map": ("runner", "iter_run", "anomaly"),
}
ARRAY_ARGUMENTS = ("image", "mask", "fixed")


class RequestRefused(ValueError):
    """A request that names an unknown task, argument or model, or lacks an array: HTTP 422."""


def task_function(name: str) -> Callable[..., Any]:
    """The generator function a request name runs (the runner's bound to its task)."""
    if name not in TASKS:
        raise RequestRefused(f"unknown task {name!r}; this server runs {sorted(TASKS)}")
    module, function, task = TASKS[name]
    found = getattr(importlib.import_module(f"napari_diffmed.{module}"), function)
    return functools.partial(found, task) if module == "runner" else found


def settings_class(name: str):
    from ..settings import settings_class as of_task

    return of_task(TASKS[name][2])


def accepted(name: str) -> set[str]:
    """Keyword names a request ``name`` may send: its function's parameters and its settings' fields."""
    params = inspect.signature(task_function(name)).parameters
    names = {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    return (names | set(settings_class(name).fields())) - {"settings"}


def known_models() -> dict[str, Any]:
    """The server's models by name (shipped and ``$NAPARI_DIFFMED_MODELS``)."""
    from ..models import list_models

    return {entry.name: entry for entry in list_models()}


def prepare_call(task: str, kwargs: dict[str, Any], arrays: dict[str, np.ndarray], device: str,
                 preview_interval: float, settings: dict[str, Any] | None = None,
                 ) -> tuple[Callable[..., Any], dict[str, Any]]:
    """(the generator function, its keyword arguments) for a request; :class:`RequestRefused` names the problem.
    The settings go to the function as its fields, each checked here first."""
    function = task_function(task)
    allowed = accepted(task)
    unknown = sorted((set(kwargs) | set(arrays)) - allowed)
    if unknown:
        raise RequestRefused(f"unknown settings {unknown} for {task}; allowed: {sorted(allowed)}")
    odd = sorted(set(arrays) - set(ARRAY_ARGUMENTS)) + sorted(set(kwargs) & set(ARRAY_ARGUMENTS))
    if odd:
        raise RequestRefused(f"{odd} must be sent as uploaded arrays ({list(ARRAY_ARGUMENTS)} only)")
    cls = settings_class(task)
    fields = set(cls.fields())
    if settings is not None and not isinstance(settings, dict):
        raise RequestRefused(f"settings must be a JSON object of {cls.__name__}'s fields")
    try:
        s = cls.from_dict({**(settings or {}), **{k: v for k, v in kwargs.items() if k in fields}})
        s = s.replace(device=device)  # the server's device, always
    except ValueError as err:
        raise RequestRefused(f"{task}: {err}") from None
    if s.model is not None:
        names = known_models()
        if s.model not in names:
            raise RequestRefused(f"unknown model {s.model!r}: a server runs only the models it knows, by name "
                                 f"(no paths or weights); it has {sorted(names)}")
    bound = getattr(cls(), "max_bytes", None)
    if bound is not None and s.max_bytes > bound:  # a client may lower the task's own memory bound, never raise it
        s = s.replace(max_bytes=bound)
    call = {**{k: v for k, v in kwargs.items() if k not in fields}, **arrays, **s.to_dict()}
    if call.get("preview") is not None:
        call["preview"] = max(float(call["preview"]), preview_interval)
    try:
        inspect.signature(function).bind(**call)
    except TypeError as err:
        raise RequestRefused(f"{task}: {err}") from None
    return function, call
