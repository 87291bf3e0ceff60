"""Where models live: the shipped defaults, the user's folder (``$NAPARI_DIFFMED_MODELS``) and explicit paths."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .card import ModelCard, ModelCardError, sha256_file
from .checkpoint import LoadedModel, card_path, load_model

ENV_VAR = "NAPARI_DIFFMED_MODELS"
FAST_ENV = "NAPARI_DIFFMED_FAST"  # the inference fast path's switches: see napari_diffmed.fastpath
SHIPPED_DIR = Path(__file__).parent / "weights"
DEFAULTS = {
    ("image", 2): "mni_t1_axial_64",
    ("segmentation", 2): "mni_wm_seg_96",
    ("image", 3): "mni_t1_volume_32",
}
# Where one task's uses want different models: synthesis takes the sharper v-predicting model, while
# inpainting and anomaly maps keep the noise-predicting one, whose healthy guidance removes lesions.
PURPOSE_DEFAULTS = {("synthesis", 2): "mni_t1_axial_64_v"}
# The four tasks: the kind of model each needs, and how its errors name the task (None: the task checks the
# card itself, as the ensemble does, which also needs exactly one condition channel).
TASK_MODELS = {"synthesis": ("image", "synthesis"), "segmentation": ("segmentation", None),
               "inpainting": ("image", "inpainting"), "anomaly": ("image", "an anomaly map")}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    path: Path
    card: ModelCard
    source: str  # "shipped" or "user"


def model_dirs() -> list[tuple[Path, str]]:
    dirs = [(SHIPPED_DIR, "shipped")]
    for part in filter(None, os.environ.get(ENV_VAR, "").split(os.pathsep)):
        dirs.append((Path(part).expanduser(), "user"))
    return dirs


def list_models(task: str | None = None, spatial_dims: int | None = None) -> list[ModelEntry]:
    """Every readable model card with weights beside it; a broken card is skipped with a warning naming its file.

    Names are unique: the first folder of :func:`model_dirs` wins (shipped, then the user's in order),
    and a model hidden by an earlier one of the same name is named in a warning.
    """
    entries: dict[str, ModelEntry] = {}
    for folder, source in model_dirs():
        if not folder.is_dir():
            continue
        for card_file in sorted(folder.glob("*.json")):
            weights = card_file.with_suffix(".safetensors")
            if card_file.name.endswith(".resume.json") or not weights.exists():
                continue
            try:
                card = ModelCard.read(card_file)
            except (ModelCardError, OSError) as err:  # one bad user file must not hide every other model
                where = "" if str(card_file) in str(err) else f" {card_file}"
                warnings.warn(f"skipped the model card{where}: {err}", UserWarning, stacklevel=2)
                continue
            if (task is None or card.task == task) and (spatial_dims is None or card.spatial_dims == spatial_dims):
                first = entries.setdefault(card.name, ModelEntry(card.name, weights, card, source))
                if first.path != weights:
                    warnings.warn(f"model {card.name!r} at {weights} is hidden by the {first.source} model of that "
                                  f"name at {first.path}; rename it, or give its path instead of its name",
                                  stacklevel=2)
    return list(entries.values())


def resolve(model: str | os.PathLike) -> Path:
    """A model name from the registry, or a path to ``NAME.safetensors``/``NAME.json``."""
    text = str(model)
    path = Path(text).expanduser()
    if path.suffix in (".safetensors", ".json") or path.exists():
        weights = path.with_suffix(".safetensors")
        if not weights.exists():
            raise FileNotFoundError(f"no weights at {weights}")
        return weights
    for entry in list_models():
        if entry.name == text:
            return entry.path
    names = [e.name for e in list_models()]
    raise ValueError(f"unknown model {text!r}; known models: {names} (or give a path to NAME.safetensors)")


def default_model(task: str, spatial_dims: int = 2, purpose: str | None = None) -> str:
    """The shipped model a run uses when none is named (``purpose``: e.g. "synthesis")."""
    try:
        return PURPOSE_DEFAULTS.get((purpose, spatial_dims)) or DEFAULTS[(task, spatial_dims)]
    except KeyError:
        raise ValueError(f"no shipped default for a {spatial_dims}D {task} model") from None


@lru_cache(maxsize=8)
def _cached(path: str, content: tuple[str, str], device: str, fast: str) -> LoadedModel:
    from ..fastpath import accelerate, options_for

    return accelerate(load_model(path, device=device), options_for(device, fast))


def _content(weights: Path) -> tuple[str, str]:
    """sha256 of the weights and of their card: the cache key, so a changed file is never served from it,
    whatever its time stamp says."""
    card = card_path(weights)
    return sha256_file(weights), sha256_file(card) if card.exists() else ""


def load_for_task(model: "str | os.PathLike | LoadedModel | None", task: str, device: str = "auto",
                  purpose: str = "this task") -> LoadedModel:
    """A model for ``task``: a registry name, a path to ``NAME.safetensors``, a loaded model, or None (the 2D default)."""
    from ..device import select_device

    if isinstance(model, LoadedModel):
        if model.card.task != task:
            raise ValueError(f"model {model.card.name!r} is a {model.card.task} model; {purpose} needs {_a(task)} model")
        return model
    name = model if model not in (None, "") else default_model(task, 2, purpose)
    return get_model(name, device=str(select_device(device)), task=task, purpose=purpose)


def load(task: str, model: "str | os.PathLike | LoadedModel | None" = None, device: str = "auto") -> LoadedModel:
    """The model for one of :data:`TASK_MODELS`' tasks: a registry name, a path to ``NAME.safetensors``, an already
    loaded model, or None (the task's shipped 2D default). The one loader every task and front end uses."""
    from ..device import select_device

    if task not in TASK_MODELS:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(TASK_MODELS)}")
    kind, purpose = TASK_MODELS[task]
    if purpose is None and not isinstance(model, LoadedModel):
        name = model if model not in (None, "") else default_model(kind, 2, task)
        return get_model(name, device=str(select_device(device)))
    if purpose is None:
        return model
    if not isinstance(model, LoadedModel) and model in (None, ""):
        model = default_model(kind, 2, task)
    return load_for_task(model, kind, device, purpose)


def get_model(model: str | os.PathLike, device: str = "cpu", task: str | None = None,
              purpose: str = "this task") -> LoadedModel:
    """Load (once per content of weights and card, and device) and check the model suits ``task``."""
    path = resolve(model)
    loaded = _cached(str(path), _content(path), str(device), os.environ.get(FAST_ENV, "auto"))
    if task is not None and loaded.card.task != task:
        raise ValueError(
            f"model {loaded.card.name!r} is a {loaded.card.task} model; {purpose} needs {_a(task)} model "
            f"(choose one of {[e.name for e in list_models(task=task)]})"
        )
    return loaded


def _a(task: str) -> str:
    return f"an {task}" if task[0] in "aeiou" else f"a {task}"
