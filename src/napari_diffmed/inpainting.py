"""Inpainting of painted masks with RePaint (Lugmayr et al. 2022), several proposals per run.

Written from the paper: the model denoises the whole image; after every step
the known part (outside the mask) is replaced by the scan noised to the new
level, ``q(x_t | x0)``, and every ``jump_length`` steps the sample is diffused
back up ``jump_length`` steps and denoised again (``resamplings`` times in all)
so that the fill harmonises with its surroundings. Proposals (and, for 2D
models, the masked slices) are batched through the shared denoising loop.

Only slices that contain mask voxels are processed: a model sees a fixed
physical field of view, so cropping in-plane would not save any work. Every
output is composed on the input grid as ``np.where(mask, fill, image)``, so
voxels outside the mask are the input's, bit for bit.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generator, Sequence

import numpy as np
from scipy import ndimage

from .masks import as_binary_mask
from .progress import Progress, Reporter, drive
from .sampling import known_region
from .settings import MODES, InpaintSettings, RepaintSchedule, settings_for  # noqa: F401 - public here

if TYPE_CHECKING:
    from .models import LoadedModel


PREVIEW_SECONDS = 0.5
DEFAULTS = InpaintSettings()
DEFAULT_MODEL = DEFAULTS.model


@dataclass
class InpaintResult:
    """Arrays on the input grid; outside ``mask`` each proposal and ``mean`` equal the input exactly."""

    proposals: np.ndarray  # (P, *image.shape)
    mean: np.ndarray
    variance: np.ndarray
    mask: np.ndarray  # bool: the voxels that were filled
    provenance: dict[str, Any]
    messages: list[str]


def repaint_schedule(settings: "RepaintSchedule | InpaintSettings", num_train_timesteps: int = 1000) -> list[int]:
    """Timesteps visited, ending in -1, on MONAI's DDIM grid (multiples of ``num_train // steps``).

    After each ``jump_length``-th step (not the last) the path goes back up
    ``jump_length`` steps, ``resamplings - 1`` times, before moving on.
    """
    settings = getattr(settings, "schedule", settings)
    stride = num_train_timesteps // settings.steps
    grid = [k * stride for k in range(settings.steps - 1, -1, -1)] + [-1]
    jumps_left = {p: settings.resamplings - 1 for p in range(settings.jump_length, settings.steps,
                                                               settings.jump_length)}
    path, p = [grid[0]], 0
    while p < settings.steps:
        p += 1
        path.append(grid[p])
        if jumps_left.get(p, 0) > 0:
            jumps_left[p] -= 1
            p -= settings.jump_length
            path.append(grid[p])
    return path


def count_network_calls(schedule: Sequence[int]) -> int:
    """Network evaluations (per batch) of a schedule: its downward moves."""
    return sum(1 for a, b in zip(schedule, schedule[1:]) if b < a)


def seam_energy(output: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared difference between neighbouring voxels across the mask border."""
    total, count = 0.0, 0
    for ax in range(output.ndim):
        a, b = [np.take(output.astype(np.float64), np.arange(s, output.shape[ax] - 1 + s), axis=ax) for s in (0, 1)]
        ma, mb = [np.take(mask, np.arange(s, mask.shape[ax] - 1 + s), axis=ax) for s in (0, 1)]
        cross = ma != mb
        total, count = total + float(((a - b)[cross] ** 2).sum()), count + int(cross.sum())
    return total / max(count, 1)


def edge_energy(image: np.ndarray, quantile: float = 0.9) -> float:
    """Mean squared neighbour difference over the image's own edges (differences above ``quantile``)."""
    diffs = np.concatenate([np.abs(np.diff(image.astype(np.float64), axis=ax)).ravel() for ax in range(image.ndim)])
    edges = diffs[diffs >= np.quantile(diffs, quantile)]
    return float((edges**2).mean())


def describe(settings: "RepaintSchedule | InpaintSettings") -> str:
    """One line saying what a schedule costs, e.g. for a label before the run."""
    settings = getattr(settings, "schedule", settings)
    calls = count_network_calls(repaint_schedule(settings))
    return (f"DDIM {settings.steps} steps, jumps of {settings.jump_length} x{settings.resamplings}, "
            f"eta {settings.eta:g}: {calls} network calls per batch")


def _class(card, class_name, notes: list[str]) -> tuple[int | None, str | None]:
    """(label index, class name) for ``card``; unconditional models take no class."""
    if not card.conditional:
        if class_name not in (None, DEFAULTS.class_name):
            raise ValueError(f"model {card.name!r} is not class-conditional; leave the class empty (got {class_name!r})")
        if class_name is not None:
            notes.append(f"model {card.name!r} is unconditional: class {class_name!r} ignored")
        return None, None
    index = int(card.class_index(class_name))
    return index, card.class_names[index] if index < len(card.class_names) else None


def _select(mask3: np.ndarray, card, axis: int, indices, ndim: int) -> np.ndarray:
    """Indices of the slices (2D models) to process: chosen ones that hold mask voxels; [0] for 3D models."""
    if card.spatial_dims == 3:
        if ndim != 3:
            raise ValueError(f"model {card.name!r} is a 3D model; give a 3D volume, not a 2D image")
        if indices is not None:
            raise ValueError("slice indices apply to 2D models only; a 3D model sees the whole volume")
        return np.array([0]) if mask3.any() else np.array([], dtype=int)
    if axis not in (0, 1, 2) or (ndim == 2 and axis != 0):
        raise ValueError(f"slicing axis must be {'0' if ndim == 2 else '0, 1 or 2'} for a {ndim}D image, got {axis!r}")
    moved = np.moveaxis(mask3, axis, 0)
    keep = np.ones(len(moved), dtype=bool)
    if indices is not None:
        idx = np.asarray(list(indices), dtype=int).ravel()
        if idx.size == 0 or idx.min() < 0 or idx.max() >= len(moved):
            raise ValueError(f"slice indices must lie in 0..{len(moved) - 1}, got {idx.tolist()[:6]}")
        keep[:] = False
        keep[idx] = True
    return np.flatnonzero(keep & moved.reshape(len(moved), -1).any(axis=1))


def _grid_masks(prepared, fill3: np.ndarray, card, dilate: int) -> tuple[np.ndarray, np.ndarray]:
    """(unknown pixels on the model grid, input voxels the model grid covers)."""
    g = prepared.grid
    if card.spatial_dims == 2:
        sel = np.moveaxis(fill3, prepared.axis, 0)[prepared.indices].astype(np.float32)
        struct = ndimage.generate_binary_structure(2, 1)[None]
    else:
        sel = fill3.astype(np.float32)
        struct = ndimage.generate_binary_structure(3, 1)
    touched = g.to_model(sel, order=1, cval=0.0) > 1e-3  # any model pixel fed by a masked voxel
    unknown = ndimage.binary_dilation(touched, structure=struct, iterations=dilate) if dilate else touched
    inside = g.to_model(np.ones(g.in_shape, np.float32), order=1, cval=0.0) > 0.5
    covered = ~np.isnan(g.from_model(np.ones(g.out_shape, np.float32), order=1, cval=np.nan))
    unknown = (unknown | ~inside).reshape(prepared.data.shape)
    return unknown, covered


def iter_inpaint(
    image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: InpaintSettings | None = None,
    preview: float | None = PREVIEW_SECONDS, **overrides: Any,
) -> Generator[Progress, None, InpaintResult]:
    """Yield :class:`Progress` per network call and return an :class:`InpaintResult`, on the scan as given.

    ``settings`` (default :data:`DEFAULTS`) with ``overrides`` (its fields) in place; ``model`` (a name, a
    path or a loaded model) takes the place of ``settings.model``; ``settings.preprocess``/``force`` are
    applied by :func:`inpaint` and :func:`napari_diffmed.batch.run_file`, not here. ``preview`` (seconds
    between previews, None for none) is proposal 0's current x0 estimate pasted into the image, on the
    input grid. ``mode`` picks a preset schedule (:data:`MODES`); ``steps``, ``jump_length`` and
    ``resamplings`` override it. ``axis`` and ``indices`` choose the slices a 2D model may work on;
    ``dilate`` widens the region the model regenerates on its grid (the final paste stays exact).
    """
    import torch

    from .device import make_generator, resolve_seed
    from .models import load
    from .provenance import provenance
    from .sampling import Conditioning, iter_denoise, make_scheduler
    from .validation import check_finite_result, check_task_inputs
    from .volumes import as_volume, prepare

    s = InpaintSettings.build(settings, **overrides)
    settings = s.schedule
    proposals, axis, indices, batch_size, dilate = s.proposals, s.axis, s.indices, s.batch_size, s.dilate
    check_task_inputs(image, spacing, mask=mask, axis=axis, indices=indices, seed=s.seed, copies=2 * proposals + 6,
                      what=f"{proposals} proposals")
    arr = np.asarray(image)
    as_volume(arr, spacing)  # checks dims, values and spacing
    dtype = np.result_type(arr.dtype, np.float32)
    source = arr.astype(dtype)
    fill, notes = as_binary_mask(mask, arr.shape)
    loaded = load("inpainting", s.model if model is None else model, s.device)
    card, net = loaded.card, loaded.network
    dev = next(net.parameters()).device
    label, cls = _class(card, s.class_name, notes)
    fill3 = fill if arr.ndim == 3 else fill[None]
    process = _select(fill3, card, axis, indices, arr.ndim)
    if card.spatial_dims == 2:
        moved = np.moveaxis(fill3, axis, 0)
        left = int(moved.sum()) - int(moved[process].sum())
        moved[np.setdiff1d(np.arange(len(moved)), process)] = False
        if left:
            notes.append(f"{left} mask voxels lie on slices outside the chosen range and were left as they are")
    seed = resolve_seed(s.seed)
    record: dict[str, Any] = dict(task="inpaint", class_name=cls, mode=s.mode, scheduler="DDIMScheduler", **vars(settings),
                                  proposals=int(proposals), seed=seed, axis=axis, device=str(dev))
    if not fill.any():
        notes.append("the mask is empty: the image is returned unchanged")
        copies = np.repeat(source[None], proposals, axis=0)
        return InpaintResult(copies, source.copy(), np.zeros_like(source), fill, provenance(
            loaded, **record, network_calls=0, slices=[], messages=notes), notes)
    if fill.all():
        notes.append("the mask covers the whole image: the proposals are samples with nothing kept from the input")
        warnings.warn(notes[-1], UserWarning, stacklevel=2)
    start = time.perf_counter()
    prepared = prepare(arr, spacing, card, axis=axis, indices=process if card.spatial_dims == 2 else None)
    unknown, covered = _grid_masks(prepared, fill3, card, dilate)
    view = np.moveaxis(fill3, axis, 0)[process] if card.spatial_dims == 2 else fill3
    outside = view & ~covered
    if outside.any():
        notes.append(f"{int(outside.sum())} mask voxels lie outside the model's field of view and keep their values")
        warnings.warn(notes[-1], UserWarning, stacklevel=2)
        view &= covered
        if card.spatial_dims == 2:
            np.moveaxis(fill3, axis, 0)[process] = view

    n = len(prepared.data)
    known_all = np.tile(prepared.data, (proposals,) + (1,) * (prepared.data.ndim - 1))
    free_all = np.tile(unknown, (proposals,) + (1,) * (unknown.ndim - 1))
    schedule = repaint_schedule(settings, int(card.scheduler.get("num_train_timesteps", 1000)))
    calls = count_network_calls(schedule)
    chunks = [np.arange(s, min(s + batch_size, len(known_all))) for s in range(0, len(known_all), batch_size)]
    total = calls * len(chunks)
    sched = make_scheduler(card, "ddim", settings.steps, device=dev)
    gen = make_generator(seed, dev)
    out = np.empty_like(known_all)
    shown, report = prepared.data.copy(), Reporter(total, preview)

    def randn(shape):
        return torch.randn(shape, generator=gen, device=gen.device).to(dev)

    def show(step, chunk, first, known, free) -> np.ndarray:  # proposal 0's x0 estimate pasted into the image
        x0 = (free * step.x0 + (1 - free) * known)[:, 0].float().cpu().numpy()
        shown[chunk[first]] = x0[first]
        return _compose(prepared, shown[None], fill3, source, dtype)[0]

    for c, chunk in enumerate(chunks):
        known = torch.from_numpy(known_all[chunk]).unsqueeze(1).to(dev)
        free = torch.from_numpy(free_all[chunk]).unsqueeze(1).to(dev, known.dtype)
        cond = Conditioning() if label is None else Conditioning(
            torch.full((len(chunk),), label, dtype=torch.long, device=dev), card.null_class)

        paste = known_region(sched, known, free, randn)
        x = paste(randn(known.shape), schedule[0])
        loop = iter_denoise(net, sched, x, cond=cond, schedule=schedule, constraint=paste, generator=gen,
                            eta=settings.eta)
        first = chunk < n  # proposal 0 of these slices
        final = yield from report.follow(loop, f"inpainting batch {c + 1}/{len(chunks)}", None if not first.any() else
                                         lambda step: show(step, chunk, first, known, free))
        out[chunk] = final[:, 0].float().cpu().numpy()

    check_finite_result("inpainted fill", out, loaded.model_id)
    props = _compose(prepared, out.reshape((proposals, n) + out.shape[1:]), fill3, source, dtype)
    fill = fill3 if arr.ndim == 3 else fill3[0]
    mean = np.where(fill, props.mean(axis=0, dtype=np.float64).astype(dtype), source)
    variance = np.where(fill, props.var(axis=0, dtype=np.float64).astype(dtype), dtype.type(0))
    record.update(network_calls=total, calls_per_batch=calls, batch_size=int(batch_size),
                  slices=[int(i) for i in process] if card.spatial_dims == 2 else None, dilate=dilate,
                  mask_voxels=int(fill.sum()), spacing=list(as_volume(arr, spacing)[1]), messages=notes,
                  seconds=round(time.perf_counter() - start, 3))
    return InpaintResult(props, mean, variance, fill, provenance(loaded, **record), notes)


def _compose(prepared, fills: np.ndarray, fill3: np.ndarray, source: np.ndarray, dtype) -> np.ndarray:
    """Model-grid fills ``(P, N, *size)`` -> ``(P, *source.shape)``: the fill inside the mask, the input outside."""
    back = prepared.restore(prepared.normaliser.inverse(fills), fill=0.0)
    back = back if source.ndim == 3 else back[:, 0]
    fill = fill3 if source.ndim == 3 else fill3[0]
    return np.where(fill[None], back.astype(dtype), source[None])


def inpaint(
    image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, *, settings: InpaintSettings | None = None,
    metadata: dict | None = None, callback: Callable[[Progress], Any] | None = None, **overrides: Any,
) -> InpaintResult:
    """Inpaint ``mask`` in ``image`` (see :func:`iter_inpaint`); ``callback(Progress)`` is called per step.
    ``settings.preprocess``/``force`` and ``metadata``: the domain check and the template space, as in
    :func:`~napari_diffmed.ensemble.segment_ensemble`."""
    from .runner import iter_run

    return drive(iter_run("inpainting", image, spacing, model, settings=settings, mask=mask, metadata=metadata,
                          **overrides), callback)
