"""Segmentation ensembles with uncertainty maps (Wolleb et al. 2022, "Diffusion models for implicit
image segmentation ensembles").

A segmentation model denoises a mask in [-1, 1] (``mask * 2 - 1``) with the scan concatenated as
extra input channels (:class:`sampling.Conditioning` ``image``). Every member starts from its own
noise, so the members are samples of plausible masks; members and slices share one batch
dimension, cut into chunks of ``chunk`` network inputs so that memory stays bounded.

The members' maps (mean, votes, variance, entropy, mutual information) and the consensus labels
are computed in :mod:`napari_diffmed.uncertainty`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np

from .progress import Progress, drive
from .settings import MAX_MEMBERS, EnsembleSettings  # noqa: F401 - public here
from .uncertainty import RULES, binary_entropy, fuse, slice_ranking, slice_scores, summarise  # noqa: F401

if TYPE_CHECKING:
    from .models import LoadedModel, ModelCard

ENTROPY_UNITS = "bits"
PREVIEW_SECONDS = 0.5
DEFAULTS = EnsembleSettings()


@dataclass
class EnsembleResult:
    """Arrays on the input's grid; ``members`` is ``(M, *image.shape)`` float32 probabilities.

    ``covered`` marks the voxels the model saw (chosen slices inside its field of view); elsewhere
    every map is 0. ``axis`` is the slicing axis (None for 3D models).
    """

    members: np.ndarray
    mean: np.ndarray
    votes: np.ndarray
    variance: np.ndarray
    entropy: np.ndarray
    mutual_information: np.ndarray
    covered: np.ndarray
    axis: int | None
    provenance: dict[str, Any]

    def labels(self, rule: str = DEFAULTS.rule, threshold: float = DEFAULTS.threshold) -> np.ndarray:
        """Consensus labels by :func:`fuse` from the stored members (no model call)."""
        return fuse(self.members, rule, threshold)

    def ranking(self, measure: str = "entropy") -> np.ndarray:
        """Slices along the slicing axis, most uncertain first (see :func:`slice_ranking`)."""
        return slice_ranking(getattr(self, measure), self.axis or 0)


def check_segmentation_card(card: "ModelCard") -> None:
    """Refuse, by name, a model the ensemble cannot feed (another task, classes, extra condition channels)."""
    if card.task != "segmentation":
        raise ValueError(f"model {card.name!r} is made for task {card.task!r}; a segmentation ensemble needs a "
                         "model for task 'segmentation' (the image as a condition channel)")
    if card.condition_channels != 1 or card.conditional:
        raise ValueError(f"model {card.name!r} takes {card.condition_channels} condition channels and classes "
                         f"{card.class_names}; the ensemble feeds exactly one image channel and no class")


def estimate_bytes(shape: Sequence[int], n_inputs: int, members: int, image_size: Sequence[int]) -> int:
    """Bytes of the arrays a run holds at its peak: soft members on the model grid, members on the
    input grid (twice, while resampling) and the derived maps."""
    voxels, grid = math.prod(shape), math.prod(image_size)
    return 4 * (n_inputs * members * grid + 3 * members * voxels + 8 * voxels)


def planned_calls(card, n_inputs: int, settings: EnsembleSettings | None = None, **overrides: Any) -> int:
    """Network calls of a run over ``n_inputs`` slices (1 for a 3D model): its progress total."""
    from .sampling import make_scheduler

    s = EnsembleSettings.build(settings, **overrides)
    return len(make_scheduler(card, s.scheduler, s.steps).timesteps) * math.ceil(n_inputs * s.members / s.chunk)


def load_model(model: "str | os.PathLike | LoadedModel | None", device: str = "auto") -> "LoadedModel":
    """:func:`napari_diffmed.models.load` for the ensemble, with the card checked by
    :func:`check_segmentation_card`."""
    from .models import load

    loaded = load("segmentation", model, device)
    check_segmentation_card(loaded.card)
    return loaded


def iter_segment_ensemble(
    image: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: EnsembleSettings | None = None,
    fixed: np.ndarray | None = None, preview: float | None = PREVIEW_SECONDS, **overrides: Any,
) -> Generator[Progress, None, EnsembleResult]:
    """Yield :class:`Progress` per network call and return an :class:`EnsembleResult`, on the scan as given.

    ``settings`` (default :data:`DEFAULTS`) with ``overrides`` (its fields) in place; ``model`` (a name, a
    path or a loaded model) takes the place of ``settings.model``; ``settings.preprocess``/``force`` are
    applied by :func:`segment_ensemble` and :func:`napari_diffmed.batch.run_file`, not here.
    ``preview`` (seconds between previews, None for none) is the current mean probability over members
    on the input grid. ``axis``/``indices`` pick the slices a 2D model segments (slices and members are
    batched). ``fixed`` (the image's shape: -1 free, 0/1 set by a person) holds those labels in every member
    (:mod:`~napari_diffmed.corrections`). Bad input raises ValueError before any network runs.
    """
    import torch

    from .device import make_generator, resolve_seed
    from .provenance import provenance
    from .sampling import Conditioning, iter_denoise, make_scheduler
    from .validation import check_finite_result, check_task_inputs
    from .volumes import as_volume, prepare

    s = EnsembleSettings.build(settings, **overrides)
    members, steps, scheduler, chunk, axis, indices = s.members, s.steps, s.scheduler, s.chunk, s.axis, s.indices
    check_task_inputs(image, spacing, axis=axis, indices=indices, seed=s.seed, copies=0, values=False)
    arr = np.asarray(image)
    if fixed is not None:
        from .corrections import Held, check_fixed
        fixed = check_fixed(fixed, arr.shape)
    loaded = load_model(s.model if model is None else model, s.device)
    card, net = loaded.card, loaded.network
    if card.spatial_dims == 3 and (arr.ndim != 3 or indices is not None):
        raise ValueError(f"model {card.name!r} is a 3D model: give a 3D volume and no slice indices")
    if card.spatial_dims == 2 and axis not in ((0,) if arr.ndim == 2 else (0, 1, 2)):
        raise ValueError(f"slicing axis must be {'0' if arr.ndim == 2 else '0, 1 or 2'} for a {arr.ndim}D image, "
                         f"got {axis!r}")
    depth = arr.shape[axis] if arr.ndim == 3 else 1
    n_inputs = 1 if card.spatial_dims == 3 else len(set(indices)) if indices is not None else depth
    need = estimate_bytes(arr.shape, n_inputs, members, card.image_size)
    if need > s.max_bytes:  # checked before the scan is even copied
        raise ValueError(f"{members} members over an image of shape {arr.shape} need about {need / 2**30:.2f} GiB, "
                         f"more than max_bytes={s.max_bytes / 2**30:.2f} GiB; use fewer members or slices, "
                         "or raise max_bytes")
    _, vol_spacing = as_volume(arr, spacing)
    dev = next(net.parameters()).device
    sched = make_scheduler(card, scheduler, steps, device=dev)
    prepared = prepare(arr, spacing, card, axis=axis, indices=indices)
    held = None if fixed is None else Held.from_fixed(fixed, prepared)
    seed = resolve_seed(s.seed)
    gen = make_generator(seed, dev)
    start = time.perf_counter()
    n = len(prepared.data)
    items = np.arange(n * members)  # slice-major: input i is slice i // members, member i % members
    chunks = [items[s:s + chunk] for s in range(0, len(items), chunk)]
    total, done, next_preview = len(sched.timesteps) * len(chunks), 0, 0.0
    soft = np.zeros((n, members, *card.image_size), dtype=np.float32)
    flat = soft.reshape(n * members, *card.image_size)
    for c, part in enumerate(chunks):
        cond = Conditioning(image=torch.from_numpy(prepared.data[part // members]).unsqueeze(1).to(dev))
        noise = torch.randn((len(part), card.in_channels, *card.image_size), generator=gen, device=gen.device).to(dev)
        paste = None if held is None else held.constraint(part // members, sched, gen, dev)
        if paste is not None:  # RePaint's known region, in label space
            noise = paste(noise, int(sched.timesteps[0]))
        loop = iter_denoise(net, sched, noise, cond=cond, generator=gen, constraint=paste)
        while True:
            try:
                step = next(loop)
            except StopIteration as stop:
                flat[part] = _probability(stop.value)
                break
            done += 1
            picture = None
            if preview is not None and (time.perf_counter() >= next_preview or done == total):
                t0 = time.perf_counter()
                flat[part] = _probability(step.x0)
                picture = _on_input(prepared, _restored(prepared, soft.mean(axis=1)), arr.shape)
                next_preview = time.perf_counter() + max(preview, 10 * (time.perf_counter() - t0))
            yield Progress(done, total, picture, f"ensemble batch {c + 1}/{len(chunks)}")
    check_finite_result("ensemble members", soft, loaded.model_id)
    slab = _restored(prepared, np.moveaxis(soft, 1, 0))  # the maps are computed on the seen slices only
    if held is not None:  # the final paste is exact on the input grid
        slab = held.paste(slab)
    seen = _restored(prepared, np.ones(soft.shape[:1] + soft.shape[2:], np.float32), nan=-1.0) >= 0
    record = dict(task="segmentation", members=members, steps=steps, scheduler=type(sched).__name__, seed=seed,
                  axis=prepared.axis, slices=[int(i) for i in prepared.indices] if prepared.axis is not None else None,
                  chunk=chunk, device=str(dev), network_calls=total, spacing=list(vol_spacing),
                  entropy_units=ENTROPY_UNITS, member_mask="x0 > 0 (probability (x0 + 1) / 2 > 0.5)",
                  seconds=round(time.perf_counter() - start, 3))
    if fixed is not None:
        record["fixed_voxels"] = int((fixed >= 0).sum())
    maps = {key: _on_input(prepared, value, arr.shape) for key, value in summarise(slab).items()}
    return EnsembleResult(_on_input(prepared, slab, (members, *arr.shape)), **maps,
                          covered=_on_input(prepared, seen, arr.shape), axis=prepared.axis,
                          provenance=provenance(loaded, **record))


def _probability(x) -> np.ndarray:
    """Model output ``(k, 1, ...)`` on [-1, 1] -> probabilities ``(k, ...)`` on [0, 1]."""
    return ((x[:, 0].float().clamp(-1.0, 1.0) + 1.0) / 2.0).cpu().numpy()


def _restored(prepared, arr: np.ndarray, nan: float = 0.0) -> np.ndarray:
    """Model grid ``(..., N, *size)`` -> the input grid, on [0, 1]: for 2D models only the N chosen slices
    ``(..., N, *in-plane)`` (slicing axis first), for 3D models the whole volume; ``nan`` where the model
    did not look."""
    back = prepared.restore(arr, fill=nan) if prepared.axis is None else prepared.grid.from_model(arr, cval=np.nan)
    return np.clip(np.nan_to_num(back, nan=nan), min(nan, 0.0), 1.0)


def _on_input(prepared, part: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """:func:`_restored` slices -> arrays of ``shape`` (the input's, with leading axes), 0 on other slices."""
    if prepared.axis is None:
        return part.reshape(shape)
    lead = part.shape[: part.ndim - 3]
    full = np.zeros(lead + prepared.shape, dtype=part.dtype)
    np.moveaxis(full, len(lead) + prepared.axis, len(lead))[..., prepared.indices, :, :] = part
    return full.reshape(shape)


def segment_ensemble(
    image: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: EnsembleSettings | None = None,
    fixed: np.ndarray | None = None, metadata: dict | None = None,
    callback: Callable[[Progress], Any] | None = None, **overrides: Any,
) -> EnsembleResult:
    """Segment a 2D image or 3D volume with an ensemble; see :func:`iter_segment_ensemble`.
    ``callback(Progress)`` is called per network call.

    The scan is first checked against the model's training domain (:mod:`napari_diffmed.domain`; refused
    outside it unless ``settings.force``); ``settings.preprocess`` ("auto" or a
    :class:`~napari_diffmed.preprocess.PreprocessSettings`) runs the model in its template's space and
    maps every result back onto the scan's grid; ``metadata`` (the reader's) helps the domain check.

    >>> result = segment_ensemble(scan, spacing=(1, 1, 1), members=8, indices=range(80, 92))  # doctest: +SKIP
    >>> labels, ranked = result.labels(), result.ranking()  # doctest: +SKIP
    """
    from .runner import iter_run

    return drive(iter_run("segmentation", image, spacing, model, settings=settings, fixed=fixed, metadata=metadata,
                          **overrides), callback)
