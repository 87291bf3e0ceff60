"""MONAI's schedulers by name, one adapter each, and the noise arithmetic they share.

The denoising loop (:mod:`napari_diffmed.sampling`) sees every scheduler through one call,
``adapter.step(output, t, x, t_next) -> (x_next, x0)``. The adapters use MONAI's own ``step``
and only bridge what differs between them: DDIM's ``eta`` and inversion, DDPM's and DDIM's
generator, PNDM's multistep state and missing x0 estimate, RFlow's velocity output, explicit next
timestep and fractional timesteps. :data:`SCHEDULERS` is the one table of them: the model card's
schema, the checkpoint code and the sampler all read it. Importing this module imports neither
torch nor MONAI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch


def alpha_bar(scheduler, t: int) -> float:
    """Cumulative signal fraction at timestep ``t`` as a Python number (1 before the first step, ``t < 0``)."""
    return 1.0 if t < 0 else float(scheduler.alphas_cumprod[int(t)])


def _roots(scheduler, t: int) -> tuple[float, float]:
    """(sqrt(a), sqrt(1 - a)) at ``t``: Python numbers, so no device copy or 0-d tensor op per step."""
    a = alpha_bar(scheduler, t)
    return math.sqrt(a), math.sqrt(1.0 - a)


def q_sample(x: "torch.Tensor", noise: "torch.Tensor", a: float) -> "torch.Tensor":
    """Forward noising ``sqrt(a) x + sqrt(1 - a) noise`` to signal fraction ``a``; ``noise`` is overwritten."""
    return noise.mul_((1.0 - a) ** 0.5).add_(x * a ** 0.5)


def renoise(scheduler, x: "torch.Tensor", t_from: int, t_to: int, noise: "torch.Tensor") -> "torch.Tensor":
    """Diffuse ``x`` from timestep ``t_from`` up to ``t_to``, ``q(x_to | x_from)``; ``noise`` is overwritten.

    :func:`q_sample` at the ratio of the two signal fractions, but with a fused multiply-add (as
    RePaint's jumps always were): through ``q_sample`` the same seed would give inpainting results
    that differ from earlier ones by float rounding."""
    ratio = alpha_bar(scheduler, t_to) / alpha_bar(scheduler, t_from)
    return noise.mul_(math.sqrt(1.0 - ratio)).add_(x, alpha=math.sqrt(ratio))


def predict_x0(scheduler, sample, eps, t: int):
    """x0 estimate from an epsilon prediction: (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    root_a, root_1a = _roots(scheduler, t)
    return sample.add(eps, alpha=-root_1a).div_(root_a)


def clip_noise(scheduler, sample, eps, t: int, low: float = -1.0, high: float = 1.0):
    """Re-derive epsilon from the clipped x0 estimate (GLIDE's "clipped model output").

    MONAI's schedulers clip x0 but keep the raw epsilon for the direction term;
    with an imperfect network the two disagree at high noise and samples wash
    out. Feeding the scheduler this consistent epsilon fixes that.
    """
    root_a, root_1a = _roots(scheduler, t)
    x0 = sample.add(eps, alpha=-root_1a).div_(root_a).clamp_(low, high)  # one buffer, reused
    return x0.mul_(-root_a).add_(sample).div_(root_1a)


class Adapter:
    """A MONAI scheduler (``set_timesteps`` already called) as the loop sees it.

    ``clip`` keeps x0 estimates on [-1, 1] consistently (:func:`clip_noise`, noise schedulers only);
    ``with_x0`` asks for an x0 estimate where MONAI's step gives none; ``generator`` and ``eta``
    go to the schedulers that draw noise.
    """

    resamples = False  # RePaint's jumps back up its timestep grid (see :func:`renoise`)
    inverts = False  # has :meth:`invert` (DDIM inversion)

    def __init__(self, scheduler, *, generator: "torch.Generator | None" = None, eta: float = 0.0,
                 clip: bool = True, with_x0: bool = True) -> None:
        self.scheduler, self.generator, self.eta, self.clip, self.with_x0 = scheduler, generator, eta, clip, with_x0

    def timesteps(self) -> list:
        """The scheduled timesteps, first (noisiest) first."""
        return [int(t) for t in self.scheduler.timesteps]

    def start(self) -> None:
        """Called before each pass of the loop (a scheduler with state forgets the last pass)."""

    def epsilon(self, out, t: int, x):
        return clip_noise(self.scheduler, x, out, t) if self.clip else out

    def step(self, out: "torch.Tensor", t: int, x: "torch.Tensor", t_next: int) -> tuple[Any, Any]:
        """One step from ``t`` to ``t_next`` (-1: the end) given the network's output: ``(x_next, x0)``."""
        raise NotImplementedError


class DDPM(Adapter):
    resamples = True

    def step(self, out, t, x, t_next):
        return self.scheduler.step(self.epsilon(out, t, x), t, x, generator=self.generator)


class DDIM(Adapter):
    resamples = inverts = True

    def step(self, out, t, x, t_next):
        return self.scheduler.step(self.epsilon(out, t, x), t, x, eta=self.eta, generator=self.generator)

    def invert(self, out, t, x):
        """The step up from ``t`` to the next scheduled timestep: ``(x_up, x0)`` (MONAI's ``reversed_step``)."""
        return self.scheduler.reversed_step(self.epsilon(out, t, x), t, x)


class PNDM(Adapter):
    def start(self):
        self.scheduler.ets, self.scheduler.counter = [], 0  # what set_timesteps resets

    def step(self, out, t, x, t_next):
        eps = self.epsilon(out, t, x)
        x_next, _ = self.scheduler.step(eps, t, x)
        return x_next, predict_x0(self.scheduler, x, eps, t) if self.with_x0 else None


class RFlow(Adapter):
    """Rectified flow: the network's output is a velocity (not clipped), timesteps may be fractional,
    and each step goes to the next scheduled timestep (0 after the last), as MONAI's inferer does."""

    def timesteps(self):
        whole = self.scheduler.use_discrete_timesteps
        return [int(t) if whole else float(t) for t in self.scheduler.timesteps]

    def step(self, out, t, x, t_next):
        return self.scheduler.step(out, t, x, max(t_next, 0))


@dataclass(frozen=True)
class SchedulerKind:
    """One MONAI scheduler: its short name, class name, card keys and adapter.

    ``flow``: trained for rectified flow (its models cannot be sampled by a noise scheduler, or the
    reverse); ``any_steps``: samples with fewer steps than training timesteps; ``defaults``: keyword
    arguments this project sets unless the card does."""

    name: str
    monai: str
    adapter: type[Adapter]
    keys: frozenset[str]
    flow: bool = False
    any_steps: bool = True
    defaults: dict[str, Any] = field(default_factory=dict)

    def set_timesteps(self, scheduler, steps: int, device=None, image_size: Sequence[int] = ()) -> None:
        extra = {"input_img_size_numel": math.prod(image_size)} if self.flow and image_size else {}
        scheduler.set_timesteps(steps, device=device, **extra)


_COMMON = {"name", "num_train_timesteps", "prediction_type"}
_NOISE = {"schedule", "clip_sample", "clip_sample_min", "clip_sample_max"}
SCHEDULERS = {kind.name: kind for kind in (  # MONAI 1.4+ keyword arguments (a test checks them against MONAI's)
    SchedulerKind("ddpm", "DDPMScheduler", DDPM, frozenset(_COMMON | _NOISE | {"variance_type"}), any_steps=False),
    SchedulerKind("ddim", "DDIMScheduler", DDIM, frozenset(_COMMON | _NOISE | {"set_alpha_to_one", "steps_offset"})),
    SchedulerKind("pndm", "PNDMScheduler", PNDM,
                  frozenset(_COMMON | {"schedule", "skip_prk_steps", "set_alpha_to_one", "steps_offset"}),
                  defaults={"skip_prk_steps": True}),
    SchedulerKind("rflow", "RFlowScheduler", RFlow,
                  frozenset(_COMMON | {"use_discrete_timesteps", "sample_method", "loc", "scale", "steps_offset",
                                       "use_timestep_transform", "transform_scale", "base_img_size_numel",
                                       "spatial_dim"}), flow=True),
)}
SCHEDULER_NAMES = {kind.name: kind.monai for kind in SCHEDULERS.values()}  # short name -> MONAI class
MONAI_NAMES = tuple(SCHEDULER_NAMES.values())


def kind_of(name: str) -> SchedulerKind:
    """The table entry for a short name (``ddim``) or a MONAI class name (``DDIMScheduler``), any case."""
    key = str(name).lower()
    for kind in SCHEDULERS.values():
        if key in (kind.name, kind.monai.lower()):
            return kind
    raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")


def samplers_for(trained: str) -> list[str]:
    """Short names of the schedulers that can sample a model trained with ``trained``: the noise schedulers
    for a noise model, rectified flow for a flow model."""
    flow = kind_of(trained).flow
    return [kind.name for kind in SCHEDULERS.values() if kind.flow == flow]


def adapt(scheduler, **options: Any) -> Adapter:
    """The adapter for a MONAI scheduler object (``options``: see :class:`Adapter`)."""
    return kind_of(type(scheduler).__name__).adapter(scheduler, **options)
