"""Model cards, safetensors checkpoints and the registry of shipped and user models."""

from .card import ModelCard, ModelCardError
from .checkpoint import LoadedModel, build_network, build_scheduler, load_model, save_model
from .registry import default_model, get_model, list_models, load, load_for_task, resolve

__all__ = [
    "LoadedModel", "ModelCard", "ModelCardError", "build_network", "build_scheduler", "default_model",
    "get_model", "list_models", "load", "load_for_task", "load_model", "resolve", "save_model",
]
