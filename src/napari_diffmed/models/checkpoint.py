"""Save and load networks as safetensors weights plus a JSON model card."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import atomic_write
from .card import ModelCard, ModelCardError, sha256_file
from ..schedulers import kind_of
from .schema import NOISE_SCHEDULES

if TYPE_CHECKING:
    import torch


@dataclass
class LoadedModel:
    """A network ready for inference, with its card and where it came from.

    ``network`` predicts epsilon, whatever the card's ``prediction_type`` (see
    :mod:`.prediction`); ``trained`` is the network as trained (the same object for
    epsilon models), for losses in the card's own terms; ``fast``: the inference fast path's switches
    and checks (:func:`napari_diffmed.fastpath.accelerate`), None for the plain network.
    """

    network: "torch.nn.Module"
    card: ModelCard
    path: Path
    trained: "torch.nn.Module | None" = None
    fast: "dict | None" = None

    def __post_init__(self) -> None:
        if self.trained is None:
            self.trained = self.network

    @property
    def model_id(self) -> str:
        return f"{self.card.name}@{self.card.weights_sha256[:12]}"


def card_path(weights: Path) -> Path:
    return weights.with_suffix(".json")


def build_network(card: ModelCard, **overrides: Any) -> "torch.nn.Module":
    """Instantiate MONAI's ``DiffusionModelUNet`` from the card's kwargs (``overrides``: e.g. use_flash_attention)."""
    from monai.networks.nets import DiffusionModelUNet

    try:
        return DiffusionModelUNet(**{**card.network, **overrides})
    except (TypeError, ValueError, AssertionError) as err:
        raise ModelCardError(f"network kwargs of {card.name!r} are not valid for DiffusionModelUNet: {err}") from None


def build_scheduler(card: ModelCard, name: str | None = None, **overrides: Any):
    """A MONAI scheduler configured like the training one (or another of the same noise schedule).

    It steps on epsilon (MONAI's default ``prediction_type``): loaded networks give epsilon
    whatever they were trained to predict (:class:`~.prediction.EpsilonView`).
    """
    from monai.networks import schedulers

    kwargs = {k: v for k, v in card.scheduler.items() if k not in ("name", "prediction_type")}
    trained = kind_of(card.scheduler["name"])
    kind = kind_of(name) if name else trained
    if kind.flow != trained.flow:
        raise ValueError(f"scheduler {kind.monai!r} cannot sample model {card.name!r}, which was trained for "
                         f"{trained.monai!r}")
    accepted = kind.keys | NOISE_SCHEDULES.get(kwargs.get("schedule", "linear_beta"), set())
    kwargs = {**kind.defaults, **{k: v for k, v in kwargs.items() if k in accepted}}  # e.g. not DDPM's variance_type
    kwargs.update(overrides)
    return getattr(schedulers, kind.monai)(**kwargs)


def save_model(network: "torch.nn.Module", card: ModelCard, weights: str | Path, overwrite: bool = False) -> Path:
    """Write ``NAME.safetensors`` and ``NAME.json``; the card gets the weights' sha256."""
    from safetensors.torch import save_file

    weights = Path(weights).with_suffix(".safetensors")
    if not overwrite and (weights.exists() or card_path(weights).exists()):
        raise FileExistsError(f"{weights} or its card exists; pass overwrite=True to replace it")
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in network.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp, metadata={"name": card.name}))
    card.weights_sha256 = sha256_file(weights)
    card.validate()
    atomic_write(card_path(weights), lambda tmp: Path(tmp).write_text(card.to_json()))
    return weights


def _check_finite(state: dict, name: str) -> None:
    """Refuse weights holding NaN or infinite values: they would give all-NaN results, hash or no hash."""
    import torch

    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise ModelCardError(f"weights of {name!r} hold {bad} NaN or infinite values in tensor {key!r}: the "
                                 "file is damaged or was saved from a diverged training")


def load_model(weights: str | Path, device: "str | torch.device" = "cpu") -> LoadedModel:
    """Load a model from its safetensors file and card, checking schema, hash and shapes."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = Path(weights)
    if weights.suffix != ".safetensors":
        weights = weights.with_suffix(".safetensors")
    if not weights.is_file():
        raise FileNotFoundError(f"no weights file {weights}")
    card = ModelCard.read(card_path(weights))
    actual = sha256_file(weights)
    if card.weights_sha256 != actual:
        raise ModelCardError(
            f"sha256 of {weights.name} is {actual[:16]}..., but its card says "
            f"{card.weights_sha256[:16] or '(none)'}...: the weights were changed or belong to another card"
        )
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelCardError(f"{weights} is not a readable safetensors file: {err}") from None
    _check_finite(state, card.name)
    network = build_network(card)
    expected = network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ModelCardError(
            f"weights of {card.name!r} do not match the card's network: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
        )
    for key, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise ModelCardError(
                f"tensor {key!r} has shape {tuple(tensor.shape)} but the card's network expects "
                f"{tuple(expected[key].shape)}"
            )
    network.load_state_dict(state)
    network.to(device).eval()
    if card.prediction_type == "epsilon":
        return LoadedModel(network=network, card=card, path=weights)
    from .prediction import EpsilonView

    view = EpsilonView(network, card.prediction_type, build_scheduler(card).alphas_cumprod, card.out_channels)
    return LoadedModel(network=view.to(device).eval(), card=card, path=weights, trained=network)
