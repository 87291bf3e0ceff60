"""Anomaly heatmaps: a scan against its pseudo-healthy reconstruction by a diffusion image model.

Methods (the reverse pass is DDIM through :func:`sampling.iter_denoise`, towards "healthy"
with classifier-free guidance on class-conditional models):

- ``gaussian``: noise the scan to timestep ``level`` with Gaussian noise and denoise it.
- ``simplex``: the same with multi-octave simplex noise (AnoDDPM, Wyatt et al. 2022). Only the
  noise that takes the scan to ``level`` is simplex: the DDIM reverse pass (eta=0) draws none.
- ``ddim``: DDIM inversion of the scan to timestep ``depth`` with the unconditional model, then
  guided decoding (Sanchez et al. 2022). Inversion is deterministic, so with several
  reconstructions the decoding is stochastic (eta=1) to make them differ.

The guidance ``eps_neg + w * (eps_healthy - eps_neg)`` contrasts "healthy" with the ``negative``
class, as a negative prompt does: by default the card's ``lesion`` class when it has one (the
guidance then pushes away from what the model learned lesions look like, not only towards
healthy), else the null class (plain classifier-free guidance).

The heatmap is computed in model units (1 = the card's whole normalisation range) on the model
grid, smoothed inside the brain mask, averaged over the reconstructions (their variance comes
with it) and mapped back onto the scan's grid. With ``compare="unguided"`` (the default for
class-conditional models) the same noised or inverted scan is decoded a second time, with the
same noise, but without the pull towards "healthy"; the two decodings share the model's
reconstruction errors, and the heatmap is how much further from the scan the healthy decoding
lands, ``max(|scan - healthy| - |scan - unguided|, 0) / 2``: what the guidance takes away from
the scan, the anomaly, without the errors both make or the changes that bring the healthy
decoding closer to the scan. With ``compare="scan"`` (and always for unconditional models or
guidance 0, which have no pull to contrast) it is ``|scan - healthy| / 2``.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from .heatmap import (THRESHOLD_PERCENTILE, default_rule, default_threshold, model_mask, on_input, residual,
                      smooth_inside)
from .masks import foreground_mask
from .progress import Progress, Reporter, drive
from .sampling import inversion_start, iter_invert
from .settings import ANOMALY_LIMITS, COMPARES, METHODS, AnomalySettings  # noqa: F401 - public here

if TYPE_CHECKING:
    import torch

    from .models import LoadedModel
    from .sampling import Conditioning

SIMPLEX = {"octaves": 6, "persistence": 0.8, "period": 16.0}  # AnoDDPM's, scaled from 256 to 64 px images
LIMITS = ANOMALY_LIMITS
# The fields a run's provenance records (the model, the slices, the domain check and preprocessing record their own).
RECORDED = tuple(f for f in AnomalySettings.fields() if f not in ("model", "axis", "indices", "preprocess", "force"))
DEFAULTS = AnomalySettings()


@dataclass
class AnomalyResult:
    """Arrays on the input's grid and shape.

    ``brain_mask``: the brain voxels that were analysed (chosen slices, inside the model's field of
    view); ``heatmap``: float32, 0 outside ``brain_mask``; ``reconstruction``: the pseudo-healthy scan in the
    input's intensities (the input itself where the model did not look); ``variance``: of the heatmap
    over reconstructions (None for one); ``threshold``: the default cut for :meth:`labels` (see
    :func:`default_rule`); ``messages``: notices about the run (also in the provenance).
    """

    heatmap: np.ndarray
    reconstruction: np.ndarray
    variance: np.ndarray | None
    brain_mask: np.ndarray
    threshold: float
    provenance: dict[str, Any]
    messages: list[str] = field(default_factory=list)

    def labels(self, threshold: float | None = None) -> np.ndarray:
        """Binary anomaly mask ``heatmap >= threshold`` inside the brain (no model call)."""
        from .validation import check_threshold

        t = self.threshold if threshold is None else check_threshold(threshold)
        return ((self.heatmap >= t) & self.brain_mask).astype(np.uint8)


def _calls_per_batch(sched, cfg: AnomalySettings, card) -> tuple[int, int, int]:
    """(inversion calls, calls of one decoding, all network calls) for one batch of inputs."""
    t_start = inversion_start(sched, cfg.depth if cfg.method == "ddim" else cfg.level)
    n_inv = sum(1 for t in sched.timesteps if int(t) < t_start) if cfg.method == "ddim" else 0
    n_dec = sum(1 for t in sched.timesteps if int(t) <= t_start)
    return n_inv, n_dec, n_inv + n_dec * (2 if cfg.paired(card) else 1)


def planned_calls(card, n_inputs: int, settings: AnomalySettings | None = None, **overrides: Any) -> int:
    """How many network calls a run over ``n_inputs`` model inputs (slices) makes: its progress total."""
    from .sampling import make_scheduler

    cfg = AnomalySettings.build(settings, **overrides)

    per_batch = _calls_per_batch(make_scheduler(card, "ddim", cfg.steps), cfg, card)[2]
    return per_batch * math.ceil(n_inputs / max(1, cfg.batch_size // cfg.reconstructions))


def negative_class(card, negative: str = "auto") -> int | None:
    """Index of the class the guidance towards ``healthy`` contrasts with (the null class for "none",
    and for "auto" on a card without a ``lesion`` class); None for an unconditional card."""
    if not card.conditional:
        return None
    if negative == "none" or (negative == "auto" and "lesion" not in card.class_names):
        return card.null_class
    name = "lesion" if negative == "auto" else negative
    if name not in card.class_names or name == "healthy":
        others = [c for c in card.class_names if c != "healthy"]
        raise ValueError(f"negative must be 'auto', 'none' or a class of model {card.name!r} other than "
                         f"'healthy' ({others}), got {negative!r}")
    return card.class_index(name)


def _conditioning(card, cfg: AnomalySettings, n: int, device) -> tuple["Conditioning", "Conditioning"]:
    """(guided towards healthy and away from the negative class, unconditional) conditioning for ``n`` inputs."""
    import torch

    from .sampling import Conditioning

    if not card.conditional:
        if cfg.method == "ddim":
            raise ValueError(f"method 'ddim' decodes towards the class 'healthy', but model {card.name!r} is "
                             "unconditional; use method 'gaussian' or 'simplex'")
        return Conditioning(), Conditioning()
    labels = torch.full((n,), card.class_index("healthy"), dtype=torch.long, device=device)
    healthy = Conditioning(labels=labels, null_class=negative_class(card, cfg.negative),
                           guidance_scale=float(cfg.guidance))
    return healthy, replace(healthy, null_class=card.null_class, guidance_scale=0.0)


def _reconstruct(net, sched, x0, noise, cfg: AnomalySettings, card, t_start: int, gen):
    """Yield Steps (inversion, decoding, unguided decoding when paired) for inputs ``x0`` (m, C, ...);
    return the (k*m, C, ...) reconstructions towards healthy, and the unguided ones (or None)."""
    import torch

    from .sampling import iter_denoise
    from .schedulers import alpha_bar, q_sample

    k, m = cfg.reconstructions, len(x0)
    healthy, uncond = _conditioning(card, cfg, k * m, x0.device)
    if cfg.method == "ddim":
        first = uncond if uncond.labels is None else replace(uncond, labels=uncond.labels[:m])
        xt = yield from iter_invert(net, sched, x0, t_start, first)
        xt = xt.repeat(k, *[1] * (xt.ndim - 1))
    else:
        xt = q_sample(x0[None], noise, alpha_bar(sched, t_start)).flatten(0, 1)
    twin = None
    if cfg.paired(card):  # the unguided decoding draws the same noise as the guided one
        twin = torch.Generator(device=gen.device)
        twin.set_state(gen.get_state())
    out = yield from iter_denoise(net, sched, xt, cond=healthy, start_timestep=t_start, generator=gen, eta=cfg.eta)
    if twin is None:
        return out, None
    return out, (yield from iter_denoise(net, sched, xt, cond=uncond, start_timestep=t_start, generator=twin,
                                         eta=cfg.eta))


def iter_anomaly_map(
    image: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: AnomalySettings | None = None,
    mask: np.ndarray | None = None, preview: float | None = None, **overrides: Any,
) -> Generator[Progress, None, AnomalyResult]:
    """Yield :class:`Progress` per network call and return an :class:`AnomalyResult`, on the scan as given.

    ``settings`` (default :data:`DEFAULTS`) with ``overrides`` (its fields) in place; ``model`` (a name, a
    path or a loaded model; None: ``settings.model``, else the shipped 2D image model) takes the place of
    ``settings.model``; ``settings.preprocess``/``force`` are applied by :func:`anomaly_map` and
    :func:`napari_diffmed.batch.run_file`, not here. ``mask`` is the brain mask (default
    :func:`foreground_mask`); ``axis``/``indices`` pick the slices a 2D model sees (slices are batched).
    With ``preview`` (seconds), events carry the reconstruction so far on the input grid, at most that
    often. Bad input raises ValueError before any network runs.
    """
    import torch

    from .device import make_generator, resolve_seed
    from .models import load
    from .sampling import make_scheduler
    from .simplex import simplex_noise
    from .validation import check_finite_result, check_task_inputs
    from .volumes import prepare

    cfg = AnomalySettings.build(settings, **overrides)
    axis, indices, preview_interval = cfg.axis, cfg.indices, preview
    check_task_inputs(image, spacing, mask=mask, axis=axis, indices=indices, seed=cfg.seed,
                      copies=8 + 2 * cfg.reconstructions, what=f"{cfg.reconstructions} reconstruction(s)")
    image = np.asarray(image)
    brain = foreground_mask(image) if mask is None else np.asarray(mask) > 0
    if brain.shape != image.shape or not brain.any():
        raise ValueError(f"the brain mask (shape {brain.shape}) must match the image's {image.shape} and not be empty")
    loaded = load("anomaly", cfg.model if model is None else model, cfg.device)
    card, net = loaded.card, loaded.network
    prepared = prepare(image, spacing, card, axis=axis, indices=indices)
    dev = next(net.parameters()).device
    sched = make_scheduler(card, "ddim", cfg.steps, device=dev)
    t_start = inversion_start(sched, cfg.depth if cfg.method == "ddim" else cfg.level)
    _conditioning(card, cfg, 1, dev)  # ddim with an unconditional model fails here, before any work
    seed = resolve_seed(cfg.seed)
    gen = make_generator(seed, dev)
    k, n = cfg.reconstructions, len(prepared.data)
    x0 = torch.from_numpy(prepared.data).to(dev, torch.float32)[:, None]
    shape = (k, n, card.in_channels, *card.image_size)
    if cfg.method == "simplex":
        noise = simplex_noise(shape, card.spatial_dims, generator=gen, device=dev, **SIMPLEX)
    else:
        noise = torch.randn(shape, generator=gen, device=gen.device).to(dev)
    n_inv, n_dec, per_batch = _calls_per_batch(sched, cfg, card)
    starts = range(0, n, max(1, cfg.batch_size // k))
    report, clock = Reporter(per_batch * len(starts), preview_interval), time.perf_counter()
    recon = x0[None].repeat(k, *[1] * x0.ndim)
    plain = recon.clone() if cfg.paired(card) else None
    phases = ("inverting",) * n_inv + ("denoising",) * n_dec + ("decoding without guidance",) * n_dec

    def show(part: slice, latest) -> np.ndarray:  # the scan on its way to healthy, on the input grid
        recon[:, part] = latest.reshape(-1, part.stop - part.start, *latest.shape[1:])
        return on_input(prepared, prepared.normaliser.inverse(_mean(recon)), image, fill=image)

    for s in starts:
        part = slice(s, min(n, s + starts.step))
        m = part.stop - part.start
        run = _reconstruct(net, sched, x0[part], noise[:, part], cfg, card, t_start, gen)
        for j in itertools.count():
            try:
                step = next(run)
            except StopIteration as stop:
                healthy, unguided = stop.value
                recon[:, part] = healthy.reshape(k, m, *healthy.shape[1:])
                if unguided is not None:
                    plain[:, part] = unguided.reshape(k, m, *unguided.shape[1:])
                break
            if j < n_inv + n_dec:
                latest = step.x0
            yield report.event(phases[j], lambda: show(part, latest))
    for name, values in (("reconstruction", recon), ("unguided decoding", plain)):
        if values is not None:
            check_finite_result(name, values, loaded.model_id)
    neg = negative_class(card, cfg.negative)
    record = {"start_timestep": t_start, "network_calls_per_batch": per_batch, "seed": seed,
              "negative_class": None if neg is None else dict(enumerate(card.class_names)).get(neg, "null"),
              "compared_with": "unguided decoding" if plain is not None else "scan",
              "seconds": round(time.perf_counter() - clock, 3)}
    unguided = None if plain is None else plain[:, :, 0].float().cpu().numpy()
    return _finish(image, prepared, brain, recon[:, :, 0].float().cpu().numpy(), unguided, loaded, cfg, record)


def _mean(recon: "torch.Tensor") -> np.ndarray:
    return recon[:, :, 0].float().mean(0).cpu().numpy()


def _finish(image, prepared, brain, recon: np.ndarray, unguided: np.ndarray | None, loaded, cfg: AnomalySettings,
            record) -> AnomalyResult:
    from .provenance import provenance

    card = loaded.card
    brain = brain & (on_input(prepared, np.ones(prepared.data.shape, np.float32), image, 0.0) > 0.5)  # analysed
    heats = smooth_inside(residual(prepared.data[None], recon, unguided), model_mask(prepared, brain),
                           [cfg.smoothing / s for s in card.spacing])
    heatmap = on_input(prepared, heats.mean(0), image, 0.0) * brain
    variance = on_input(prepared, heats.var(0), image, 0.0) * brain if len(heats) > 1 else None
    pseudo = np.where(brain, on_input(prepared, prepared.normaliser.inverse(recon.mean(0)), image, image), image)
    calibrated, notes = default_rule(card, cfg)
    threshold = default_threshold(heatmap, brain) if calibrated is None else float(calibrated["value"])
    rule = (f"{THRESHOLD_PERCENTILE:g}th percentile of the heatmap inside the brain mask" if calibrated is None else
            f"calibrated on healthy held-out slices: flags {100 * calibrated['healthy_fraction']:g}% of their "
            "brain voxels")
    used = {k: getattr(cfg, k) for k in RECORDED if k != ("level" if cfg.method == "ddim" else "depth")}
    prov = provenance(
        loaded, task="anomaly", **{**used, **record}, scheduler="DDIMScheduler", eta=cfg.eta,
        simplex=SIMPLEX if cfg.method == "simplex" else None, axis=prepared.axis,
        slices=[int(i) for i in prepared.indices], threshold=threshold, threshold_rule=rule,
        threshold_healthy_fraction=None if calibrated is None else calibrated["healthy_fraction"], messages=notes,
        heatmap_units=("max(|scan - reconstruction| - |scan - unguided decoding|, 0)" if unguided is not None
                       else "|scan - reconstruction|") + " / 2 in the card's normalised intensities (1 = their range)",
    )
    return AnomalyResult(heatmap.astype(np.float32), pseudo.astype(np.float32),
                         None if variance is None else variance.astype(np.float32), brain, threshold, prov, notes)


def anomaly_map(
    image: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: AnomalySettings | None = None,
    mask: np.ndarray | None = None, metadata: dict | None = None, callback: Callable[[Progress], Any] | None = None,
    **overrides: Any,
) -> AnomalyResult:
    """Anomaly heatmap of a 2D image or 3D volume; see :func:`iter_anomaly_map` and :class:`AnomalySettings`.
    ``callback(Progress)`` is called per network call. ``settings.preprocess``/``force`` and ``metadata``: the
    domain check and the template space, as in :func:`~napari_diffmed.ensemble.segment_ensemble`.

    >>> result = anomaly_map(scan, spacing=(1, 1, 1), method="gaussian", level=300, seed=0)  # doctest: +SKIP
    >>> result.heatmap.shape == scan.shape, int(result.labels().sum())  # doctest: +SKIP
    """
    from .runner import iter_run

    return drive(iter_run("anomaly", image, spacing, model, settings=settings, mask=mask, metadata=metadata,
                          **overrides), callback)
