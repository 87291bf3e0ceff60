"""What a network predicts (MONAI's ``prediction_type``), and an epsilon view of any of them.

A card's ``scheduler`` may name ``prediction_type``: ``epsilon`` (the default), ``sample`` (x0)
or ``v_prediction`` (Salimans & Ho 2022). Training regresses that target; every sampler in
this package (guidance, clipping, RePaint, DDIM inversion) works on epsilon, so a loaded
network that predicts x0 or v is wrapped in :class:`EpsilonView`, which converts its output
exactly with the training schedule's cumulative alphas.
"""

from __future__ import annotations

import torch

from .card import PREDICTION_TYPES


def check(prediction_type: str) -> str:
    """``prediction_type`` if it is one of :data:`PREDICTION_TYPES`, else a ValueError naming them."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r}; choose one of {list(PREDICTION_TYPES)}")
    return prediction_type


def training_target(prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor):
    """The regression target for noisy ``sqrt(a) x0 + sqrt(1 - a) noise`` (``alpha_bar`` broadcastable)."""
    if check(prediction_type) == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def to_epsilon(prediction_type: str, output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor):
    """Epsilon implied by a network ``output`` of ``prediction_type`` at noisy ``sample``."""
    if check(prediction_type) == "epsilon":
        return output
    if prediction_type == "sample":
        return (sample - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt()
    return (1 - alpha_bar).sqrt() * sample + alpha_bar.sqrt() * output


class EpsilonView(torch.nn.Module):
    """``network`` (predicting x0 or v) seen as an epsilon predictor with the same call signature.

    The noisy sample is the first ``out_channels`` input channels (image conditions follow it).
    """

    def __init__(self, network: torch.nn.Module, prediction_type: str, alphas_cumprod: torch.Tensor,
                 out_channels: int) -> None:
        super().__init__()
        self.network, self.prediction_type, self.out_channels = network, check(prediction_type), int(out_channels)
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone().float(), persistent=False)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, class_labels: torch.Tensor | None = None):
        out = self.network(x, timesteps=timesteps, class_labels=class_labels)
        a = self.alphas_cumprod[timesteps.long()].to(out.dtype).view(-1, *([1] * (out.ndim - 1)))
        return to_epsilon(self.prediction_type, out, x[:, : self.out_channels].to(out.dtype), a)
