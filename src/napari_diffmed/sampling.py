"""The one denoising loop: a MONAI scheduler driving a ``DiffusionModelUNet``, as a generator.

Every task goes through :func:`iter_denoise`. It yields a :class:`Step` after each
network evaluation (so a consumer can show progress and previews, or stop, which
ends the loop at that yield), and returns the final sample. Tasks change only
what goes in: the starting sample and timestep, the image channels to condition
on, class labels with classifier-free guidance, a ``constraint`` applied after
each step (RePaint), and a custom ``schedule`` with jumps back up (RePaint).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generator, Sequence

if TYPE_CHECKING:
    import torch


@dataclass
class Step:
    """Progress after one network evaluation."""

    index: int
    total: int
    timestep: int
    x0: "torch.Tensor | None" = None
    sample: "torch.Tensor | None" = field(default=None, repr=False)


@dataclass(frozen=True)
class Conditioning:
    """Class labels with classifier-free guidance, and/or image channels concatenated to the input.

    ``guidance_scale`` w gives ``eps_u + w * (eps_c - eps_u)``: 1 is the plain
    conditional model, 0 the unconditional one; other values run the conditional
    and unconditional halves in one batch.
    """

    labels: "torch.Tensor | None" = None
    null_class: int | None = None
    guidance_scale: float = 1.0
    image: "torch.Tensor | None" = None


SCHEDULER_NAMES = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "rflow": "RFlowScheduler"}


def make_scheduler(card, name: str | None, steps: int, device=None):
    """A MONAI scheduler for ``card``'s noise schedule with ``steps`` inference steps set.

    ``name`` is a MONAI class name or its short form (ddpm, ddim, pndm, rflow).
    MONAI's ``DDPMScheduler.step`` always moves from t to t-1, so DDPM runs every
    training timestep; DDIM and PNDM take any number of steps.
    """
    from .models.checkpoint import build_scheduler

    cls = SCHEDULER_NAMES.get(str(name).lower(), name) if name else card.scheduler["name"]
    if cls not in SCHEDULER_NAMES.values():
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULER_NAMES)}")
    n_train = int(card.scheduler.get("num_train_timesteps", 1000))
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= n_train:
        raise ValueError(f"steps must be a whole number from 1 to {n_train}, got {steps!r}")
    if cls == "DDPMScheduler" and steps != n_train:
        raise ValueError(
            f"DDPM steps one training timestep at a time, so it needs steps={n_train} (got {steps}); "
            "use DDIM or PNDM for fewer steps"
        )
    scheduler = build_scheduler(card, cls)
    scheduler.set_timesteps(steps, device=device)
    return scheduler


def alpha_bar(scheduler, t: int):
    """Cumulative signal fraction at timestep ``t`` (1 before the first step)."""
    import torch

    if t < 0:
        return torch.tensor(1.0)
    return scheduler.alphas_cumprod[int(t)]


def _roots(scheduler, t: int) -> tuple[float, float]:
    """(sqrt(a), sqrt(1 - a)) at ``t`` as Python numbers: no device copy or 0-d tensor op per step."""
    a = float(alpha_bar(scheduler, t))
    return math.sqrt(a), math.sqrt(1.0 - a)


def predict_x0(scheduler, sample, eps, t: int):
    """x0 estimate from an epsilon prediction: (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    root_a, root_1a = _roots(scheduler, t)
    return sample.add(eps, alpha=-root_1a).div_(root_a)


def renoise(scheduler, sample, t_from: int, t_to: int, generator=None):
    """Diffuse a sample forward from ``t_from`` to ``t_to`` > ``t_from``: q(x_to | x_from)."""
    import torch

    ratio = float(alpha_bar(scheduler, t_to)) / float(alpha_bar(scheduler, t_from))
    noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
    return noise.mul_(math.sqrt(1.0 - ratio)).add_(sample, alpha=math.sqrt(ratio))


def clip_noise(scheduler, sample, eps, t: int, low: float = -1.0, high: float = 1.0):
    """Re-derive epsilon from the clipped x0 estimate (GLIDE's "clipped model output").

    MONAI's schedulers clip x0 but keep the raw epsilon for the direction term;
    with an imperfect network the two disagree at high noise and samples wash
    out. Feeding the scheduler this consistent epsilon fixes that.
    """
    root_a, root_1a = _roots(scheduler, t)
    x0 = sample.add(eps, alpha=-root_1a).div_(root_a).clamp_(low, high)  # one buffer, reused
    return x0.mul_(-root_a).add_(sample).div_(root_1a)


def predict_noise(network, sample, t: int, cond: Conditioning):
    """One network evaluation, with guidance halves batched together when needed."""
    import torch

    n = sample.shape[0]
    x = sample if cond.image is None else torch.cat([sample, cond.image.to(sample.dtype)], dim=1)
    ts = torch.full((n,), int(t), device=sample.device, dtype=torch.long)
    labels, w = cond.labels, cond.guidance_scale
    if labels is None or w == 1.0:
        return network(x, timesteps=ts, class_labels=labels)
    null = torch.full_like(labels, int(cond.null_class))
    if w == 0.0:
        return network(x, timesteps=ts, class_labels=null)
    out = network(torch.cat([x, x]), timesteps=torch.cat([ts, ts]), class_labels=torch.cat([labels, null]))
    eps_c, eps_u = out[:n], out[n:]
    return eps_u + w * (eps_c - eps_u)


def _scheduler_step(scheduler, eps, t: int, sample, next_t: int | None, generator, eta: float):
    name = type(scheduler).__name__
    if name == "DDPMScheduler":
        return scheduler.step(eps, t, sample, generator=generator)
    if name == "DDIMScheduler":
        return scheduler.step(eps, t, sample, eta=eta, generator=generator)
    if name == "RFlowScheduler":
        return scheduler.step(eps, t, sample, next_t)
    return scheduler.step(eps, t, sample)  # PNDM: (prev, None)


def iter_denoise(
    network: "torch.nn.Module",
    scheduler,
    sample: "torch.Tensor",
    *,
    cond: Conditioning = Conditioning(),
    start_timestep: int | None = None,
    schedule: Sequence[int] | None = None,
    constraint: Callable[["torch.Tensor", int], "torch.Tensor"] | None = None,
    generator: "torch.Generator | None" = None,
    eta: float = 0.0,
    with_x0: bool = True,
    clip: bool = True,
) -> Generator[Step, None, "torch.Tensor"]:
    """Denoise ``sample`` (already at ``start_timestep``, or pure noise) and return x0.

    ``scheduler.set_timesteps`` must have been called. Without ``schedule`` the
    loop walks ``scheduler.timesteps`` (those <= ``start_timestep``). A
    ``schedule`` is a list of timesteps ending in -1 whose downward moves follow
    the scheduler's stride and whose upward moves re-noise (RePaint jumps).
    ``constraint(x, t)`` is applied to the sample whenever it reaches timestep
    ``t`` (-1 for the final sample). ``clip`` keeps x0 estimates on [-1, 1]
    consistently (see :func:`clip_noise`).
    """
    import torch

    name = type(scheduler).__name__
    if schedule is None:
        ts = [int(t) for t in scheduler.timesteps if start_timestep is None or int(t) <= start_timestep]
        if not ts:
            raise ValueError(f"start_timestep {start_timestep} is below every scheduled timestep")
        path = ts + [-1]
        evaluations = len(ts)
    else:
        if name not in ("DDPMScheduler", "DDIMScheduler"):
            raise ValueError(f"a resampling schedule needs DDPMScheduler or DDIMScheduler, not {name}")
        path = [int(t) for t in schedule]
        evaluations = sum(1 for a, b in zip(path, path[1:]) if b < a)
    x = sample
    index = 0
    for i, (t, t_next) in enumerate(zip(path, path[1:])):
        if t_next > t:  # jump back up (RePaint resampling)
            x = renoise(scheduler, x, t, t_next, generator)
            continue
        with torch.inference_mode():
            eps = predict_noise(network, x, t, cond)
            if clip and name != "RFlowScheduler":
                eps = clip_noise(scheduler, x, eps, t)
            nxt = t_next if name == "RFlowScheduler" and t_next >= 0 else None
            x_prev, x0 = _scheduler_step(scheduler, eps, t, x, nxt, generator, eta)
            if x0 is None and with_x0:  # PNDM returns no x0 estimate
                x0 = predict_x0(scheduler, x, eps, t)
            x = x_prev
            if constraint is not None:
                x = constraint(x, t_next)
        index += 1
        yield Step(index, evaluations, t, x0 if with_x0 else None, x)
    return x


def run(gen: Generator[Step, None, "torch.Tensor"], on_step: Callable[[Step], None] | None = None):
    """Drive an ``iter_*`` generator to the end and return its value."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_step is not None:
            on_step(step)
