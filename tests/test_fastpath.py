"""The inference fast path: same outputs as the plain network, clean fallbacks, bf16 confined to the UNet."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from napari_diffmed import fastpath
from napari_diffmed.fastpath import FastOptions, accelerate, options_for, parse
from napari_diffmed.models import ModelCard, build_network, load_model, save_model

EXACT = FastOptions(fused_attention=True, channels_last=True)
BF16 = FastOptions(fused_attention=True, channels_last=True, bf16=True)


@pytest.fixture(scope="module")
def x0_model(tmp_path_factory):
    """A tiny segmentation model predicting x0 (so it is sampled through EpsilonView)."""
    card = ModelCard(
        name="seg_x0", task="segmentation", spatial_dims=2, image_size=[16, 16], spacing=[4.0, 4.0],
        network=dict(spatial_dims=2, in_channels=2, out_channels=1, channels=[8, 16],
                     attention_levels=[False, True], num_res_blocks=1, norm_num_groups=8, num_head_channels=8),
        scheduler={"name": "DDPMScheduler", "num_train_timesteps": 1000, "prediction_type": "sample"},
        condition_channels=1)
    torch.manual_seed(0)
    net = build_network(card)
    with torch.no_grad():
        for p in net.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.05)
    return save_model(net, card, tmp_path_factory.mktemp("models") / "seg_x0")


def _outputs(loaded, t: int):
    from napari_diffmed.fastpath import probe_inputs

    x, _, labels = probe_inputs(loaded.card, "cpu")
    with torch.inference_mode():
        return loaded.network(x, timesteps=torch.full((2,), t), class_labels=labels)


def test_switch_names_parse_and_bad_ones_are_named(monkeypatch):
    assert parse("off") == FastOptions() and parse("auto") is None and parse("") is None
    assert parse("bf16, channels_last") == FastOptions(channels_last=True, bf16=True)
    with pytest.raises(ValueError, match=r"unknown switch 'fp8'; use 'auto', 'off' or a comma list of \["):
        parse("channels_last,fp8")
    assert options_for("cpu") == EXACT and options_for("cuda:1") == EXACT and not options_for("mps").any
    monkeypatch.setenv(fastpath.ENV_VAR, "fused_attention")
    assert options_for("cpu") == FastOptions(fused_attention=True)


@pytest.mark.parametrize("fixture", ["tiny_image_model", "tiny_volume_model", "x0_model"])
def test_exact_switches_keep_the_output(request, fixture):
    plain = load_model(request.getfixturevalue(fixture))
    fast = accelerate(plain, EXACT)
    assert fast.fast["switches"] == ["fused_attention", "channels_last"] and fast.fast["exact_difference"] < 1e-5
    assert fast.trained is plain.trained and fast.network is not plain.network
    for t in (999, 300, 2):
        torch.testing.assert_close(_outputs(fast, t), _outputs(plain, t), rtol=1e-5, atol=1e-5)
    assert accelerate(plain, FastOptions()) is plain


def test_bf16_stays_inside_the_unet_so_the_x0_to_epsilon_conversion_is_float32(x0_model):
    plain = load_model(x0_model)
    fast = accelerate(plain, BF16)
    assert fast.fast["switches"][-1] == "bf16" and 0 < fast.fast["bf16_difference"] < 0.1
    assert fast.network.alphas_cumprod.dtype == torch.float32
    for t in (999, 10, 0):  # near t = 0, 1 - alpha_bar is 1e-4: bf16 there (the trap) gives inf or garbage
        out, ref = _outputs(fast, t), _outputs(plain, t)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert float((out - ref).abs().max() / ref.abs().max()) < 0.1


def test_an_unsupported_switch_falls_back_with_a_warning(tiny_image_model, monkeypatch):
    from napari_diffmed.models import checkpoint
    from napari_diffmed.models.card import ModelCardError

    plain, real = load_model(tiny_image_model), checkpoint.build_network

    def older_monai(card, **overrides):
        if overrides:
            raise ModelCardError("unexpected keyword argument 'use_flash_attention'")
        return real(card)

    monkeypatch.setattr(checkpoint, "build_network", older_monai)
    with pytest.warns(RuntimeWarning, match="fused attention unavailable"):
        fast = accelerate(plain, EXACT)
    assert fast.fast["switches"] == ["channels_last"]
    torch.testing.assert_close(_outputs(fast, 500), _outputs(plain, 500), rtol=1e-5, atol=1e-5)


def test_a_switch_that_moves_the_output_is_dropped(tiny_image_model, monkeypatch):
    plain = load_model(tiny_image_model)
    monkeypatch.setattr(fastpath, "difference", lambda a, b: 0.5)
    with pytest.warns(RuntimeWarning, match="using the plain network"):
        assert accelerate(plain, EXACT) is plain


def test_the_registry_serves_the_fast_path_unless_turned_off(tiny_image_model, monkeypatch):
    from napari_diffmed.models import get_model

    assert get_model(tiny_image_model, "cpu").fast["switches"] == ["fused_attention", "channels_last"]
    monkeypatch.setenv(fastpath.ENV_VAR, "off")
    assert get_model(tiny_image_model, "cpu").fast is None


def test_tasks_give_the_same_results_on_the_fast_path(tiny_seg_model, tiny_image_model, small_volume):
    from napari_diffmed.ensemble import segment_ensemble
    from napari_diffmed.synthesis import synthesize

    seg = load_model(tiny_seg_model)
    runs = [segment_ensemble(small_volume.image, small_volume.spacing, m, members=4, steps=3, indices=[2, 3])
            for m in (seg, accelerate(seg, EXACT))]
    np.testing.assert_allclose(runs[1].members, runs[0].members, atol=1e-4)
    assert np.array_equal(runs[1].labels(), runs[0].labels())
    image = load_model(tiny_image_model)
    samples = [synthesize(m, n=2, steps=4, seed=0, guidance=2.0, device="cpu").samples
               for m in (image, accelerate(image, EXACT))]
    np.testing.assert_allclose(samples[1], samples[0], atol=1e-4)


def test_the_loop_does_monais_arithmetic_without_clipping(tiny_image_model):
    """iter_denoise with clip=False and eta 0 gives DiffusionInferer.sample's output, guided or not."""
    from monai.inferers import DiffusionInferer

    from napari_diffmed.progress import drive as run
    from napari_diffmed.sampling import Conditioning, iter_denoise, make_scheduler

    loaded = load_model(tiny_image_model)
    card, net = loaded.card, loaded.network

    def view(x, timesteps, context=None):  # MONAI's inferer hands class labels over as ``context``
        return net(x, timesteps=timesteps.expand(x.shape[0]), class_labels=context.long())

    noise = torch.randn((3, 1, 16, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 0])
    for w in (None, 3.0):
        cond = Conditioning(labels, card.null_class, 1.0 if w is None else w)
        ours = run(iter_denoise(net, make_scheduler(card, "ddim", 5), noise, cond=cond, clip=False))
        monai = DiffusionInferer(make_scheduler(card, "ddim", 5)).sample(
            noise, view, verbose=False, conditioning=labels.float(), cfg=w, cfg_fill_value=float(card.null_class))
        torch.testing.assert_close(ours, monai, rtol=1e-5, atol=1e-5)
    clipped = run(iter_denoise(net, make_scheduler(card, "ddim", 5), noise, cond=cond))
    assert not torch.allclose(clipped, ours), "clipping is a real difference, so the comparison above is too"


def test_threads_follow_the_argument_then_the_environment(monkeypatch):
    from napari_diffmed.device import configure_threads

    before = torch.get_num_threads()
    try:
        assert configure_threads(1) == 1 == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert configure_threads() == 2 == torch.get_num_threads()
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
        monkeypatch.setattr("os.getloadavg", lambda: (0.2, 0.0, 0.0))
        assert configure_threads() == 4  # a quiet machine: every core
        monkeypatch.setattr("os.getloadavg", lambda: (2.6, 0.0, 0.0))
        assert configure_threads() == 1  # three cores busy elsewhere
        monkeypatch.setattr("os.getloadavg", lambda: (9.0, 0.0, 0.0))
        assert configure_threads() == 1
        with pytest.raises(ValueError, match="threads must be a whole number >= 1, got 0"):
            configure_threads(0)
    finally:
        torch.set_num_threads(before)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("name", ["mni_t1_axial_64_v", "mni_wm_seg_96", "mni_t1_volume_32"])
def test_shipped_models_on_the_gpu_fast_path(name):
    from napari_diffmed.models import resolve

    plain = load_model(resolve(name), "cuda")
    fast = accelerate(plain, BF16)
    print(name, fast.fast)
    assert fast.fast["exact_difference"] < 5e-3 and fast.fast["bf16_difference"] < 0.05
    assert {"fused_attention", "channels_last", "bf16"} <= set(fast.fast["switches"])


@pytest.mark.gpu
@needs_cuda
def test_gpu_ensemble_labels_with_bf16_match_float32():
    """The trap in MEASURED.md: bf16 around the x0 -> epsilon conversion gave Dice 0.41; confined, ~1."""
    from napari_diffmed.ensemble import segment_ensemble
    from napari_diffmed.evaluation.segmentation import dice
    from napari_diffmed.models import resolve
    from napari_diffmed.training.templates import load_mni152

    t = load_mni152(resolution=2)
    plain = load_model(resolve("mni_wm_seg_96"), "cuda")
    runs = {k: segment_ensemble(t.t1, t.spacing, m, indices=range(40, 52), device="cuda")
            for k, m in (("plain", plain), ("exact", accelerate(plain, EXACT)), ("bf16", accelerate(plain, BF16)))}
    ref = runs["plain"].labels()
    exact, bf16 = dice(runs["exact"].labels(), ref), dice(runs["bf16"].labels(), ref)
    print(f"Dice against float32: exact switches {exact:.4f}, bf16 {bf16:.4f}")
    assert exact > 0.999 and bf16 > 0.99


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("switch", ["compile", "graphs"])
def test_gpu_compiled_forward_matches_or_falls_back(switch, tiny_image_model):
    from napari_diffmed.synthesis import synthesize

    plain = load_model(tiny_image_model, "cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a missing compiler falls back to eager, with a warning
        fast = accelerate(plain, FastOptions(channels_last=True, **{switch: True}))
    assert fast.fast is not None and fast.fast.get("compiled_difference", 0.0) < 5e-3
    a = synthesize(plain, n=2, steps=4, seed=0, device="cuda").samples
    b = synthesize(fast, n=2, steps=4, seed=0, device="cuda").samples
    np.testing.assert_allclose(b, a, atol=5e-3)
