"""The one denoising loop: a MONAI scheduler driving a ``DiffusionModelUNet``, as a generator.

Every task goes through :func:`iter_denoise`. It yields a :class:`Step` after each
network evaluation (so a consumer can show progress and previews, or stop, which
ends the loop at that yield), and returns the final sample. Tasks change only
what goes in: the starting sample and timestep, the image channels to condition
on, class labels with classifier-free guidance, a ``constraint`` applied after
each step (RePaint), and a custom ``schedule`` with jumps back up (RePaint). Each MONAI
scheduler is reached through its adapter (:mod:`napari_diffmed.schedulers`); DDIM inversion
(:func:`iter_invert`) runs beside the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Generator, Sequence

from .schedulers import SCHEDULER_NAMES  # noqa: F401 - the CLI's and widgets' choices
from .schedulers import adapt, alpha_bar, kind_of, q_sample, renoise

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


def make_scheduler(card, name: str | None, steps: int, device=None):
    """A MONAI scheduler for ``card``'s noise schedule with ``steps`` inference steps set.

    ``name`` is a MONAI class name or its short form (ddpm, ddim, pndm, rflow); None is the card's own.
    MONAI's ``DDPMScheduler.step`` always moves from t to t-1, so DDPM runs every
    training timestep; the others take any number of steps.
    """
    from .models.checkpoint import build_scheduler

    kind = kind_of(name or card.scheduler["name"])
    n_train = int(card.scheduler.get("num_train_timesteps", 1000))
    if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= n_train:
        raise ValueError(f"steps must be a whole number from 1 to {n_train}, got {steps!r}")
    if not kind.any_steps and steps != n_train:
        raise ValueError(
            f"{kind.name.upper()} steps one training timestep at a time, so it needs steps={n_train} (got {steps}); "
            "use DDIM or PNDM for fewer steps"
        )
    scheduler = build_scheduler(card, kind.monai)
    kind.set_timesteps(scheduler, steps, device, card.image_size)
    return scheduler


def predict_noise(network, sample, t: "int | float", cond: Conditioning):
    """One network evaluation, with guidance halves batched together when needed (``t`` fractional for RFlow)."""
    import torch

    n = sample.shape[0]
    x = sample if cond.image is None else torch.cat([sample, cond.image.to(sample.dtype)], dim=1)
    if isinstance(t, int):
        ts = torch.full((n,), t, device=sample.device, dtype=torch.long)
    else:
        ts = torch.full((n,), t, device=sample.device, dtype=torch.float32)
    labels, w = cond.labels, cond.guidance_scale
    if labels is None or w == 1.0:
        return network(x, timesteps=ts, class_labels=labels)
    null = torch.full_like(labels, int(cond.null_class))
    if w == 0.0:
        return network(x, timesteps=ts, class_labels=null)
    out = network(torch.cat([x, x]), timesteps=torch.cat([ts, ts]), class_labels=torch.cat([labels, null]))
    eps_c, eps_u = out[:n], out[n:]
    return eps_u + w * (eps_c - eps_u)


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
    loop walks the scheduler's timesteps (those <= ``start_timestep``). A
    ``schedule`` is a list of timesteps ending in -1 whose downward moves follow
    the scheduler's stride and whose upward moves re-noise (RePaint jumps).
    ``constraint(x, t)`` is applied to the sample whenever it reaches timestep
    ``t`` (-1 for the final sample). ``clip`` keeps x0 estimates on [-1, 1]
    consistently (see :func:`~napari_diffmed.schedulers.clip_noise`).
    """
    import torch

    adapter = adapt(scheduler, generator=generator, eta=eta, clip=clip, with_x0=with_x0)
    if schedule is None:
        ts = [t for t in adapter.timesteps() if start_timestep is None or t <= start_timestep]
        if not ts:
            raise ValueError(f"start_timestep {start_timestep} is below every scheduled timestep")
        path = ts + [-1]
        evaluations = len(ts)
    else:
        if not adapter.resamples:
            raise ValueError(f"a resampling schedule needs DDPMScheduler or DDIMScheduler, not {type(scheduler).__name__}")
        path = [int(t) for t in schedule]
        evaluations = sum(1 for a, b in zip(path, path[1:]) if b < a)
    adapter.start()
    x = sample
    index = 0
    for t, t_next in zip(path, path[1:]):
        if t_next > t:  # jump back up (RePaint resampling)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = renoise(scheduler, x, t, t_next, noise)
            continue
        with torch.inference_mode():
            x, x0 = adapter.step(predict_noise(network, x, t, cond), t, x, t_next)
            if constraint is not None:
                x = constraint(x, t_next)
        index += 1
        yield Step(index, evaluations, t, x0 if with_x0 else None, x)
    return x


def inversion_start(scheduler, depth: int) -> int:
    """The scheduled timestep that a sample noised or inverted to ``depth`` is decoded from."""
    return max(int(t) for t in scheduler.timesteps if int(t) <= depth)


def iter_invert(
    network, scheduler, sample: "torch.Tensor", depth: int, cond: Conditioning = Conditioning(), clip: bool = True
) -> Generator[Step, None, "torch.Tensor"]:
    """DDIM inversion: walk a clean ``sample`` up the scheduled timesteps to ``inversion_start(depth)``.

    The mirror of :func:`iter_denoise` (the same clipped-x0 epsilon, MONAI's ``reversed_step``);
    decode with ``iter_denoise(..., start_timestep=inversion_start(scheduler, depth))``.
    """
    import torch

    adapter = adapt(scheduler, clip=clip)
    if not adapter.inverts:
        raise ValueError(f"inversion needs DDIMScheduler, not {type(scheduler).__name__}")
    ts = sorted(t for t in adapter.timesteps() if t <= depth)
    x = sample
    for i, t in enumerate(ts[:-1]):
        with torch.inference_mode():
            x, x0 = adapter.invert(predict_noise(network, x, t, cond), t, x)
        yield Step(i + 1, len(ts) - 1, t, x0, x)
    return x


def known_region(scheduler, known, free, randn):
    """RePaint's constraint ``(x, t) -> x``: where ``free`` is 0, the sample takes ``known`` noised to
    ``t``, ``q(x_t | known)`` (exactly ``known`` at the end, ``t = -1``); ``randn(shape)`` draws the noise."""
    def paste(x, t):
        noised = known if t < 0 else q_sample(known, randn(x.shape), alpha_bar(scheduler, t))
        return free * x + (1 - free) * noised

    return paste
