"""Synthesis: sample new images or volumes from an image model, with classifier-free guidance.

All ``n`` samples are one batch through :func:`napari_diffmed.sampling.iter_denoise`.
Samples come back in model units mapped to [0, 1]: 0 and 1 are the lower and upper
ends of the card's intensity normalisation (the 0.5 and 99.5 percentiles of the
training scans for the shipped models), so 0 is background and 1 the brightest tissue.
"""

from __future__ import annotations

import math
import numbers
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np

from .progress import Progress, drive

if TYPE_CHECKING:
    from .models import LoadedModel

INTENSITY_RANGE = (0.0, 1.0)
MAX_SAMPLES = 256
MAX_GUIDANCE = 20.0
PREVIEW_SECONDS = 0.25


@dataclass(frozen=True)
class SynthesisSettings:
    """One synthesis run. The defaults take about a minute on 2 CPU cores with the shipped 2D model.

    ``model`` None is the shipped 2D image model; ``class_name`` None is the
    model's first class ("healthy" for the shipped model) on a conditional model
    (sample unconditionally with ``guidance=0``); unconditional models ignore
    ``class_name`` None and ``guidance``. ``seed`` None draws one and records it. ``eta`` 1
    (stochastic DDIM) is the default: the shipped 2D model's deterministic (eta 0) trajectories
    keep visible noise, the fresh noise of each stochastic step corrects them.
    """

    model: str | None = None
    n: int = 12
    steps: int = 50
    scheduler: str = "ddim"
    seed: int | None = 0
    class_name: str | int | None = None
    guidance: float = 2.0
    device: str = "auto"
    eta: float = 1.0


DEFAULTS = SynthesisSettings()
SWEEP_SCALES = (0.0, 1.0, 2.0, 4.0)


@dataclass
class SynthesisResult:
    """``samples``: ``(n, *image_size)`` float32 on [0, 1]; ``spacing``: mm per pixel/voxel, napari order."""

    samples: np.ndarray
    spacing: tuple[float, ...]
    provenance: dict[str, Any]

    @property
    def spatial_dims(self) -> int:
        return len(self.spacing)


@dataclass
class GuidanceSweep:
    """The same seed and settings at several guidance scales: one :class:`SynthesisResult` per scale."""

    scales: tuple[float, ...]
    results: list[SynthesisResult]

    @property
    def samples(self) -> np.ndarray:
        """``(len(scales), n, *image_size)``."""
        return np.stack([r.samples for r in self.results])


def load_image_model(model: str | os.PathLike | LoadedModel | None = None, device: str = "auto") -> "LoadedModel":
    """A loaded image model: a name, a path to ``NAME.safetensors``, an already loaded model, or the default."""
    from .models import load_for_task

    return load_for_task(model, "image", device, "synthesis")


def _check_numbers(n: int, guidance: float, eta: float, seed: int | None = None) -> None:
    from .validation import check_seed

    check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_SAMPLES:
        raise ValueError(f"number of samples must be a whole number from 1 to {MAX_SAMPLES}, got {n!r}")
    if not isinstance(guidance, numbers.Real) or not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance scale must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    if not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:
        raise ValueError(f"eta (DDIM stochasticity) must be from 0 to 1, got {eta!r}")


def check_settings(card, n: int, steps: int, scheduler: str, class_name=None, guidance: float = 1.0,
                   eta: float = 0.0, device: str | None = None) -> None:
    """Raise ``ValueError`` naming the first setting ``card``'s model cannot run with; no network runs."""
    from .device import select_device
    from .sampling import make_scheduler

    _check_numbers(n, guidance, eta)
    if card.task != "image":
        raise ValueError(f"model {card.name!r} is a {card.task} model; synthesis needs an image model")
    if card.conditional:
        card.class_index(0 if class_name is None else class_name)
    elif class_name is not None:
        raise ValueError(f"model {card.name!r} is not class-conditional; leave the class empty (got {class_name!r})")
    make_scheduler(card, scheduler, steps)
    if device is not None:
        select_device(device)


def _conditioning(card, class_name, guidance: float, n: int, device):
    """(Conditioning, class name or None, guidance or None) for ``card``."""
    import torch

    from .sampling import Conditioning

    if not card.conditional:
        return Conditioning(), None, None
    index = card.class_index(0 if class_name is None else class_name)
    labels = torch.full((n,), index, dtype=torch.long, device=device)
    cond = Conditioning(labels=labels, null_class=card.null_class, guidance_scale=float(guidance))
    return cond, card.class_names[index], float(guidance)


def _unit(x) -> np.ndarray:
    """Model units [-1, 1] -> numpy on [0, 1], channel axis dropped."""
    return ((x[:, 0].float() + 1.0) / 2.0).clamp(0.0, 1.0).cpu().numpy()


def iter_synthesize(
    model: str | os.PathLike | LoadedModel | None = DEFAULTS.model, n: int = DEFAULTS.n, steps: int = DEFAULTS.steps,
    scheduler: str = DEFAULTS.scheduler, seed: int | None = DEFAULTS.seed,
    class_name: str | int | None = DEFAULTS.class_name, guidance: float = DEFAULTS.guidance,
    device: str = DEFAULTS.device, eta: float = DEFAULTS.eta,
) -> Generator[Progress, None, SynthesisResult]:
    """Yield :class:`Progress` after each step; return the result. ``preview`` is the current x0 estimate on
    [0, 1] on the first and last steps and at most every :data:`PREVIEW_SECONDS` between (None otherwise:
    each preview is a copy off the device).

    Bad settings raise ``ValueError`` before any network runs.
    """
    import torch

    from .device import make_generator, resolve_seed
    from .provenance import provenance
    from .sampling import iter_denoise, make_scheduler
    from .validation import check_finite_result

    _check_numbers(n, guidance, eta, seed)
    loaded = load_image_model(model, device)
    card = loaded.card
    check_settings(card, n, steps, scheduler, class_name, guidance, eta)
    dev = next(loaded.network.parameters()).device
    cond, cls, w = _conditioning(card, class_name, guidance, int(n), dev)
    sched = make_scheduler(card, scheduler, steps, device=dev)
    seed = resolve_seed(seed)
    gen = make_generator(seed, dev)
    start = time.perf_counter()
    noise = torch.randn((int(n), card.in_channels, *card.image_size), generator=gen, device=gen.device).to(dev)
    loop = iter_denoise(loaded.network, sched, noise, cond=cond, generator=gen, eta=eta)
    evaluations, next_preview = 0, 0.0
    while True:
        try:
            step = next(loop)
        except StopIteration as stop:
            final = stop.value
            break
        evaluations = step.total
        due = step.index in (1, step.total) or time.perf_counter() >= next_preview
        next_preview = time.perf_counter() + PREVIEW_SECONDS if due else next_preview
        yield Progress(step.index, step.total, _unit(step.x0) if due else None, "denoising")
    check_finite_result("samples", final, loaded.model_id)
    samples = _unit(final)
    seconds = round(time.perf_counter() - start, 3)
    record = provenance(
        loaded, task="synthesis", n=int(n), scheduler=type(sched).__name__, steps=steps,
        network_evaluations=evaluations, batch=int(n) * (2 if w is not None and w not in (0.0, 1.0) else 1),
        seed=int(seed), class_name=cls, guidance=w, eta=eta, device=str(dev), seconds=seconds,
        spacing=list(card.spacing), intensity_range=list(INTENSITY_RANGE),
        intensity=f"[0, 1] = the card's normalisation range {card.normalisation}",
    )
    return SynthesisResult(samples, tuple(float(s) for s in card.spacing), record)


def synthesize(
    model: str | os.PathLike | LoadedModel | None = DEFAULTS.model, n: int = DEFAULTS.n, steps: int = DEFAULTS.steps,
    scheduler: str = DEFAULTS.scheduler, seed: int | None = DEFAULTS.seed,
    class_name: str | int | None = DEFAULTS.class_name, guidance: float = DEFAULTS.guidance,
    device: str = DEFAULTS.device, eta: float = DEFAULTS.eta, callback=None,
) -> SynthesisResult:
    """Sample ``n`` images (2D models) or volumes (3D models); see :func:`iter_synthesize`.

    >>> result = synthesize(n=4, steps=20, seed=1, class_name="healthy", guidance=2.0)  # doctest: +SKIP
    >>> result.samples.shape, result.spacing  # doctest: +SKIP
    ((4, 64, 64), (3.0, 3.0))
    """
    return drive(iter_synthesize(model, n, steps, scheduler, seed, class_name, guidance, device, eta), callback)


def iter_guidance_sweep(
    model: str | os.PathLike | LoadedModel | None = DEFAULTS.model, scales: Sequence[float] = SWEEP_SCALES, n: int = DEFAULTS.n,
    steps: int = DEFAULTS.steps, scheduler: str = DEFAULTS.scheduler, seed: int | None = DEFAULTS.seed,
    class_name: str | int | None = DEFAULTS.class_name, device: str = DEFAULTS.device, eta: float = DEFAULTS.eta,
) -> Generator[Progress, None, GuidanceSweep]:
    """The same noise (seed) denoised at each guidance scale in turn; progress counts all runs."""
    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("give at least one guidance scale for the sweep")
    for w in scales:
        _check_numbers(n, w, eta, seed)
    from .device import resolve_seed

    loaded = load_image_model(model, device)
    if not loaded.card.conditional:
        raise ValueError(f"model {loaded.card.name!r} is not class-conditional, so it has no guidance to sweep")
    seed = resolve_seed(seed)
    results: list[SynthesisResult] = []
    for k, w in enumerate(scales):
        run = iter_synthesize(loaded, n, steps, scheduler, seed, class_name, w, device, eta)
        while True:
            try:
                event = next(run)
            except StopIteration as stop:
                results.append(stop.value)
                break
            total = event.total * len(scales)
            yield Progress(k * event.total + event.done, total, event.preview, f"guidance {w:g}")
    return GuidanceSweep(scales, results)


def guidance_sweep(
    model: str | os.PathLike | LoadedModel | None = DEFAULTS.model, scales: Sequence[float] = SWEEP_SCALES, n: int = DEFAULTS.n,
    steps: int = DEFAULTS.steps, scheduler: str = DEFAULTS.scheduler, seed: int | None = DEFAULTS.seed,
    class_name: str | int | None = DEFAULTS.class_name, device: str = DEFAULTS.device, eta: float = DEFAULTS.eta,
    callback=None,
) -> GuidanceSweep:
    """Sample with the same seed at each of ``scales``; see :func:`iter_guidance_sweep`."""
    return drive(iter_guidance_sweep(model, scales, n, steps, scheduler, seed, class_name, device, eta), callback)
