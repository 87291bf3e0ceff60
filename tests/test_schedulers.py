"""Scheduler adapters against MONAI's own steps, an RFlow run, DDIM inversion and the one scheduler table."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_diffmed.models import ModelCard, ModelCardError, build_network, save_model  # noqa: E402
from napari_diffmed.progress import drive  # noqa: E402
from napari_diffmed.sampling import Conditioning, iter_denoise, iter_invert, inversion_start, make_scheduler  # noqa: E402
from napari_diffmed.schedulers import SCHEDULERS, adapt  # noqa: E402

NET = dict(spatial_dims=2, in_channels=1, out_channels=1, channels=[8, 16], attention_levels=[False, False],
           num_res_blocks=1, norm_num_groups=8)
NOISE = {"name": "DDPMScheduler", "num_train_timesteps": 1000, "schedule": "linear_beta", "clip_sample": True}


def _card(scheduler: dict, name: str = "tiny") -> ModelCard:
    return ModelCard(name=name, task="image", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
                     network=dict(NET), scheduler=dict(scheduler))


def _network(card: ModelCard):
    torch.manual_seed(0)
    net = build_network(card)
    with torch.no_grad():  # MONAI zero-initialises the blocks' last layers: make the output depend on the input
        for param in net.parameters():
            if param.ndim > 1 and not param.any():
                param.normal_(0.0, 0.05)
    return net.eval()


FLOW = {"name": "RFlowScheduler", "num_train_timesteps": 1000}


@pytest.mark.parametrize("name, steps", [("ddpm", 1000), ("ddim", 10), ("pndm", 10), ("rflow", 10)])
def test_each_adapter_steps_as_monais_scheduler_does(name, steps):
    card = _card(FLOW if name == "rflow" else NOISE)
    ours, theirs = make_scheduler(card, name, steps), make_scheduler(card, name, steps)
    adapter = adapt(ours, generator=torch.Generator().manual_seed(3), eta=1.0, clip=False)
    gen = torch.Generator().manual_seed(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, 16, 16, generator=g)
    ts = adapter.timesteps()[:6]  # PNDM's multistep state builds up over the first four steps
    adapter.start()
    mine = theirs_x = x
    for t, t_next in zip(ts, ts[1:] + [-1]):
        out = torch.randn(2, 1, 16, 16, generator=g)
        mine, _ = adapter.step(out, t, mine, t_next)
        if name == "ddpm":
            ref = theirs.step(out, t, theirs_x, generator=gen)
        elif name == "ddim":
            ref = theirs.step(out, t, theirs_x, eta=1.0, generator=gen)
        elif name == "rflow":
            ref = theirs.step(out, t, theirs_x, max(t_next, 0))
        else:
            ref = theirs.step(out, t, theirs_x)
        theirs_x = ref[0]
        assert torch.equal(mine, theirs_x), (name, t)


def test_ddim_inversion_adapter_is_monais_reversed_step():
    sched = make_scheduler(_card(NOISE), "ddim", 20)
    g = torch.Generator().manual_seed(1)
    x, out = torch.randn(2, 1, 16, 16, generator=g), torch.randn(2, 1, 16, 16, generator=g)
    mine = adapt(sched, clip=False).invert(out, 100, x)
    ref = make_scheduler(_card(NOISE), "ddim", 20).reversed_step(out, 100, x)
    assert torch.equal(mine[0], ref[0]) and torch.equal(mine[1], ref[1])
    assert not adapt(make_scheduler(_card(NOISE), "pndm", 20)).inverts


def test_pndm_forgets_its_state_between_passes():
    """PNDM keeps past outputs in the scheduler: a second pass with the same scheduler (the next batch of
    slices) must start afresh, as the first did."""
    card = _card(NOISE)
    net, sched = _network(card), make_scheduler(card, "pndm", 8)
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    first = drive(iter_denoise(net, sched, noise.clone()))
    second = drive(iter_denoise(net, sched, noise.clone()))
    assert torch.equal(first, second)


@pytest.mark.parametrize("flow", [
    {}, {"use_discrete_timesteps": False, "use_timestep_transform": True, "base_img_size_numel": 64,
         "spatial_dim": 2}])
def test_rflow_model_samples_and_the_loop_follows_its_timesteps(tmp_path, flow):
    """An RFlow-scheduled model samples through the task (finite, the right shape); the loop gives the
    network exactly the scheduler's timesteps (fractional and uneven with the timestep transform) and
    ends where MONAI's own sampler does."""
    from monai.inferers import DiffusionInferer

    from napari_diffmed.synthesis import synthesize

    card = _card({**FLOW, **flow}, "tiny_flow")
    net = _network(card)
    result = synthesize(save_model(net, card, tmp_path / "tiny_flow"), n=2, steps=6, scheduler="rflow", seed=0,
                        device="cpu")
    assert result.samples.shape == (2, 16, 16) and np.isfinite(result.samples).all()
    assert result.provenance["scheduler"] == "RFlowScheduler" and result.provenance["network_evaluations"] == 6

    sched = make_scheduler(card, "rflow", 6)
    seen: list[float] = []
    hook = net.register_forward_pre_hook(lambda m, args, kwargs: seen.append(float(kwargs["timesteps"][0])),
                                         with_kwargs=True)
    noise = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    ours = drive(iter_denoise(net, sched, noise))
    hook.remove()
    assert seen == pytest.approx([float(t) for t in sched.timesteps])
    if flow:
        assert seen != pytest.approx([1000 * (1 - i / 6) for i in range(6)])  # uneven: the transform acts
    with torch.no_grad():
        theirs = DiffusionInferer(sched).sample(noise, net, sched, verbose=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_inversion_then_reconstruction_returns_the_sample():
    """DDIM inversion (eta 0) of a sample, decoded again, lands close to it: inversion goes the right way."""
    card = _card(NOISE)
    net, sched = _network(card), make_scheduler(card, "ddim", 200)
    x0 = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 1.6 - 0.8
    depth = inversion_start(sched, 100)
    xt = drive(iter_invert(net, sched, x0, depth))
    back = drive(iter_denoise(net, sched, xt, start_timestep=depth, eta=0.0))
    assert (xt - x0).abs().mean() > 0.05
    assert (back - x0).abs().mean() < 0.05 * (xt - x0).abs().mean()


def test_inversion_needs_ddim():
    card = _card(NOISE)
    with pytest.raises(ValueError, match="inversion needs DDIMScheduler, not PNDMScheduler"):
        next(iter_invert(_network(card), make_scheduler(card, "pndm", 10), torch.zeros(1, 1, 16, 16), 100,
                         Conditioning()))


def test_one_table_names_the_schedulers_everywhere():
    from monai.networks import schedulers

    from napari_diffmed.models.schema import SCHEDULER_KEYS

    assert sorted(SCHEDULER_KEYS) == sorted(kind.monai for kind in SCHEDULERS.values())
    for kind in SCHEDULERS.values():
        card = _card(FLOW if kind.flow else NOISE)
        steps = 1000 if not kind.any_steps else 10
        assert type(make_scheduler(card, kind.name, steps)).__name__ == kind.monai
        assert type(make_scheduler(card, kind.monai, steps)) is getattr(schedulers, kind.monai)
    with pytest.raises(ModelCardError, match=r"scheduler 'EulerScheduler' is not one of .*'RFlowScheduler'"):
        _card({"name": "EulerScheduler"})
    with pytest.raises(ValueError, match=r"unknown scheduler 'euler'; choose one of \['ddim', 'ddpm', 'pndm', 'rflow'\]"):
        make_scheduler(_card(NOISE), "euler", 10)
