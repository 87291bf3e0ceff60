"""Networks that predict x0 or v: trained on the right target, sampled through an exact epsilon view."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_diffmed.models import ModelCard, ModelCardError, build_network, load_model, save_model
from napari_diffmed.models.checkpoint import build_scheduler


class _Oracle:
    """A "network" that returns a fixed output whatever it is given (the perfect prediction of one case)."""

    def __init__(self, output) -> None:
        self.output = output

    def __call__(self, x, timesteps, class_labels=None):
        return self.output


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample", "v_prediction"])
def test_a_perfect_prediction_of_any_type_gives_the_true_noise_and_x0(prediction_type):
    import torch

    from napari_diffmed.models.prediction import EpsilonView, training_target
    from napari_diffmed.schedulers import predict_x0

    scheduler = build_scheduler(ModelCard(
        name="m", task="image", spatial_dims=2, image_size=[8, 8], spacing=[1.0, 1.0],
        network=dict(spatial_dims=2, in_channels=1, out_channels=1, channels=[8, 16],
                     attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8),
        scheduler={"name": "DDPMScheduler", "num_train_timesteps": 1000, "prediction_type": prediction_type}))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand((3, 1, 8, 8), generator=gen) * 2 - 1
    noise = torch.randn((3, 1, 8, 8), generator=gen)
    t = torch.tensor([0, 400, 999])
    noisy = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
    a = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    target = training_target(prediction_type, x0, noise, a)
    if prediction_type == "v_prediction":  # the same velocity as MONAI's own definition
        torch.testing.assert_close(target, scheduler.get_velocity(x0, noise, t))
    view = EpsilonView(_Oracle(target), prediction_type, scheduler.alphas_cumprod, out_channels=1)
    eps = view(noisy, timesteps=t)
    torch.testing.assert_close(eps, noise, atol=2e-3, rtol=1e-3)
    for k in range(3):
        torch.testing.assert_close(predict_x0(scheduler, noisy[k:k + 1], eps[k:k + 1], int(t[k])), x0[k:k + 1],
                                   atol=1e-4, rtol=1e-4)


def _seg_card(prediction_type: str) -> ModelCard:
    return ModelCard(
        name="seg_x0", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, channels=[8, 16],
                     attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8),
        scheduler={"name": "DDPMScheduler", "num_train_timesteps": 1000, "prediction_type": prediction_type},
        condition_channels=1)


def test_an_x0_model_loads_as_an_epsilon_predictor_and_keeps_its_trained_network(tmp_path):
    import torch

    from napari_diffmed.models.prediction import to_epsilon

    card = _seg_card("sample")
    torch.manual_seed(0)
    weights = save_model(build_network(card), card, tmp_path / "seg_x0")
    loaded = load_model(weights)
    assert loaded.card.prediction_type == "sample" and loaded.trained is not loaded.network
    assert build_scheduler(loaded.card).prediction_type == "epsilon"  # samplers step on epsilon
    x, t = torch.randn(2, 2, 16, 16), torch.tensor([5, 900])
    with torch.no_grad():
        raw = loaded.trained(x, timesteps=t)
        a = build_scheduler(loaded.card).alphas_cumprod[t].view(-1, 1, 1, 1)
        torch.testing.assert_close(loaded.network(x, timesteps=t), to_epsilon("sample", raw, x[:, :1], a))


def test_an_unknown_prediction_type_is_refused_by_name(tmp_path):
    card = _seg_card("epsilon")
    weights = save_model(build_network(card), card, tmp_path / "seg")
    data = json.loads(weights.with_suffix(".json").read_text())
    data["scheduler"]["prediction_type"] = "score"
    weights.with_suffix(".json").write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match="prediction_type 'score'"):
        load_model(weights)


def test_x0_segmentation_training_learns_and_fine_tuning_starts_from_the_given_weights(tmp_path):
    """The x0 loss falls on an easy mask task; --init-style warm starts copy the weights, refuse others."""
    from safetensors.numpy import load_file

    from napari_diffmed.training.datasets import Batches, GridData
    from napari_diffmed.training.loop import TrainConfig, train

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    images, probs = [], []
    for _ in range(16):
        cy, cx, r = *rng.uniform(5, 11, 2), rng.uniform(3, 5)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32)
        images.append(disc * 0.8 + 0.1)
        probs.append(disc)
    data = GridData(np.stack(images), np.stack(probs), np.zeros(16, dtype=bool), (4.0, 4.0))
    config = TrainConfig(steps=30, batch_size=8, lr=3e-3, warmup=3, checkpoint_every=30, val_every=1000,
                         device="cpu")
    batches = lambda: Batches(data, 8, "segmentation", augment=False, seed=0)  # noqa: E731
    first = train(_seg_card("sample"), batches(), None, config, tmp_path / "a" / "seg_x0", log=lambda m: None)
    losses = np.array(first.losses)
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses.round(3)

    logs: list[str] = []
    tuned = _seg_card("sample")
    train(tuned, batches(), None, TrainConfig(steps=1, batch_size=8, lr=1e-12, warmup=1, checkpoint_every=1,
                                              val_every=1000, device="cpu"),
          tmp_path / "b" / "seg_x0", log=logs.append, init=tmp_path / "a" / "seg_x0.safetensors")
    assert any(m.startswith("starting from the weights of seg_x0@") for m in logs)
    assert tuned.training["init"]["steps"] == 30
    a, b = load_file(str(tmp_path / "a" / "seg_x0.safetensors")), load_file(str(tmp_path / "b" / "seg_x0.safetensors"))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6  # a step at lr 1e-12 moves nothing
    wider = _seg_card("sample")
    wider.network = {**wider.network, "channels": [16, 16]}
    with pytest.raises(ValueError, match="cannot start from seg_x0@.*its network is"):
        train(wider, batches(), None, config, tmp_path / "c" / "seg", log=lambda m: None,
              init=tmp_path / "a" / "seg_x0.safetensors")
