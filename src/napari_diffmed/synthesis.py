"""Synthesis: sample new images or volumes from an image model, with classifier-free guidance.

All ``n`` samples are one batch through :func:`napari_diffmed.sampling.iter_denoise`.
Samples come back in model units mapped to [0, 1]: 0 and 1 are the lower and upper
ends of the card's intensity normalisation (the 0.5 and 99.5 percentiles of the
training scans for the shipped models), so 0 is background and 1 the brightest tissue.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from .progress import Progress, drive
from .settings import MAX_GUIDANCE, MAX_SAMPLES, SynthesisSettings  # noqa: F401 - public here

if TYPE_CHECKING:
    from .models import LoadedModel

INTENSITY_RANGE = (0.0, 1.0)
PREVIEW_SECONDS = 0.25

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


def check_settings(card, settings: SynthesisSettings, device: bool = False) -> None:
    """Raise ``ValueError`` naming the first setting ``card``'s model cannot run with; no network runs.
    ``device``: also check that the settings' device is available here."""
    from .device import select_device
    from .sampling import make_scheduler

    class_name = settings.class_name
    if card.task != "image":
        raise ValueError(f"model {card.name!r} is a {card.task} model; synthesis needs an image model")
    if card.conditional:
        card.class_index(0 if class_name is None else class_name)
    elif class_name is not None:
        raise ValueError(f"model {card.name!r} is not class-conditional; leave the class empty (got {class_name!r})")
    make_scheduler(card, settings.scheduler, settings.steps)
    if device:
        select_device(settings.device)


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
    model: str | os.PathLike | LoadedModel | None = None, *, settings: SynthesisSettings | None = None,
    preview: float | None = PREVIEW_SECONDS, **overrides: Any,
) -> Generator[Progress, None, SynthesisResult]:
    """Yield :class:`Progress` after each step; return the result. ``settings`` (default
    :data:`DEFAULTS`) with ``overrides`` (its fields) in place; ``model`` (a name, a path or a loaded
    model) takes the place of ``settings.model``. ``preview`` is the current x0 estimate on [0, 1] on
    the first and last steps and at most every ``preview`` seconds between (None: no previews; each
    preview is a copy off the device).

    Bad settings raise ``ValueError`` before any network runs.
    """
    import torch

    from .device import make_generator, resolve_seed
    from .models import load
    from .provenance import provenance
    from .sampling import iter_denoise, make_scheduler
    from .validation import check_finite_result

    s = SynthesisSettings.build(settings, **overrides)
    loaded = load("synthesis", s.model if model is None else model, s.device)
    card = loaded.card
    check_settings(card, s)
    n, steps, eta = int(s.n), s.steps, s.eta
    dev = next(loaded.network.parameters()).device
    cond, cls, w = _conditioning(card, s.class_name, s.guidance, n, dev)
    sched = make_scheduler(card, s.scheduler, steps, device=dev)
    seed = resolve_seed(s.seed)
    gen = make_generator(seed, dev)
    start = time.perf_counter()
    noise = torch.randn((n, card.in_channels, *card.image_size), generator=gen, device=gen.device).to(dev)
    loop = iter_denoise(loaded.network, sched, noise, cond=cond, generator=gen, eta=eta)
    evaluations, next_preview = 0, 0.0
    while True:
        try:
            step = next(loop)
        except StopIteration as stop:
            final = stop.value
            break
        evaluations = step.total
        due = preview is not None and (step.index in (1, step.total) or time.perf_counter() >= next_preview)
        next_preview = time.perf_counter() + preview if due else next_preview
        yield Progress(step.index, step.total, _unit(step.x0) if due else None, "denoising")
    check_finite_result("samples", final, loaded.model_id)
    samples = _unit(final)
    seconds = round(time.perf_counter() - start, 3)
    record = provenance(
        loaded, task="synthesis", n=n, scheduler=type(sched).__name__, steps=steps,
        network_evaluations=evaluations, batch=n * (2 if w is not None and w not in (0.0, 1.0) else 1),
        seed=int(seed), class_name=cls, guidance=w, eta=eta, device=str(dev), seconds=seconds,
        spacing=list(card.spacing), intensity_range=list(INTENSITY_RANGE),
        intensity=f"[0, 1] = the card's normalisation range {card.normalisation}",
    )
    return SynthesisResult(samples, tuple(float(s) for s in card.spacing), record)


def synthesize(
    model: str | os.PathLike | LoadedModel | None = None, *, settings: SynthesisSettings | None = None,
    callback: Callable[[Progress], Any] | None = None, **overrides: Any,
) -> SynthesisResult:
    """Sample ``n`` images (2D models) or volumes (3D models); see :func:`iter_synthesize`.
    ``callback(Progress)`` is called per step.

    >>> result = synthesize(n=4, steps=20, seed=1, class_name="healthy", guidance=2.0)  # doctest: +SKIP
    >>> result.samples.shape, result.spacing  # doctest: +SKIP
    ((4, 64, 64), (3.0, 3.0))
    """
    return drive(iter_synthesize(model, settings=settings, preview=None, **overrides), callback)


def iter_guidance_sweep(
    model: str | os.PathLike | LoadedModel | None = None, scales: Sequence[float] = SWEEP_SCALES, *,
    settings: SynthesisSettings | None = None, preview: float | None = PREVIEW_SECONDS, **overrides: Any,
) -> Generator[Progress, None, GuidanceSweep]:
    """The same noise (seed) denoised at each guidance scale in turn (``settings.guidance`` is not used);
    progress counts all runs."""
    from .device import resolve_seed
    from .models import load

    scales = tuple(float(s) for s in scales)
    if not scales:
        raise ValueError("give at least one guidance scale for the sweep")
    s = SynthesisSettings.build(settings, **overrides)
    runs = [s.replace(guidance=w) for w in scales]  # each scale checked before anything runs
    loaded = load("synthesis", s.model if model is None else model, s.device)
    if not loaded.card.conditional:
        raise ValueError(f"model {loaded.card.name!r} is not class-conditional, so it has no guidance to sweep")
    seed = resolve_seed(s.seed)
    results: list[SynthesisResult] = []
    for k, (w, run_settings) in enumerate(zip(scales, runs)):
        run = iter_synthesize(loaded, settings=run_settings.replace(seed=seed), preview=preview)
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
    model: str | os.PathLike | LoadedModel | None = None, scales: Sequence[float] = SWEEP_SCALES, *,
    settings: SynthesisSettings | None = None, callback: Callable[[Progress], Any] | None = None,
    **overrides: Any,
) -> GuidanceSweep:
    """Sample with the same seed at each of ``scales``; see :func:`iter_guidance_sweep`."""
    return drive(iter_guidance_sweep(model, scales, settings=settings, preview=None, **overrides), callback)
