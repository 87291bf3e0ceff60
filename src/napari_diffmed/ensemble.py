"""Segmentation ensembles with uncertainty maps (Wolleb et al. 2022, "Diffusion models for implicit
image segmentation ensembles").

A segmentation model denoises a mask in [-1, 1] (``mask * 2 - 1``) with the scan concatenated as
extra input channels (:class:`sampling.Conditioning` ``image``). Every member starts from its own
noise, so the members are samples of plausible masks; members and slices share one batch
dimension, cut into chunks of ``chunk`` network inputs so that memory stays bounded.

Each member is kept *soft*: its final x0 estimate mapped to a probability ``(x0 + 1) / 2``; its
mask is ``x0 > 0`` (probability > 0.5). From the members, on the input's grid:

- ``mean`` and ``variance`` of the members' soft probabilities;
- ``votes``: the fraction of member masks covering a voxel (the mean of the sampled masks, as in
  Wolleb et al.). A partly trained model can squeeze its soft outputs towards 0.5, and then
  ``votes`` is the better calibrated probability, while ``entropy`` (from the soft mean,
  which has no ties) is the better pointer to errors;
- ``entropy``: binary predictive entropy of ``mean``, in **bits** (0 to 1);
- ``mutual_information`` (bits): ``entropy`` minus the members' mean entropy (the BALD
  decomposition), the part of the uncertainty due to members disagreeing rather than each
  being unsure. It needs the soft members: with binary members it would equal the entropy;
- consensus labels by :func:`fuse` (``votes`` above a threshold, i.e. a majority vote, or
  ``mean`` above it), which re-fuses the stored members without any model call.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator, Sequence

import numpy as np
from scipy.special import xlogy

from .progress import Progress, drive

if TYPE_CHECKING:
    from .models import LoadedModel, ModelCard

RULES = ("majority", "mean")
ENTROPY_UNITS = "bits"
MAX_MEMBERS = 64


@dataclass(frozen=True)
class EnsembleSettings:
    """Defaults shared by the function, the CLI and the widget. Eight members with 10 DDIM steps take
    about a minute on 2 CPU cores for a 12-slice slab with the shipped model (96 inputs x 10 steps).
    ``chunk`` counts network inputs (members x slices) per call: 16 used a CPU core best (59 s of
    CPU for that slab, against 67 s with 32 and 88 s with 96). ``max_bytes`` bounds the arrays of
    the result before any is allocated."""

    members: int = 8
    steps: int = 10
    scheduler: str = "ddim"
    seed: int | None = 0
    chunk: int = 16
    max_bytes: int = 4 * 2**30
    rule: str = "majority"
    threshold: float = 0.5


DEFAULTS = EnsembleSettings()


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of a Bernoulli(p), elementwise (0 log 0 = 0)."""
    p = np.clip(np.asarray(p, dtype=np.float32), 0.0, 1.0)
    return (-(xlogy(p, p) + xlogy(1 - p, 1 - p)) / np.log(2)).astype(np.float32)


def summarise(members: np.ndarray) -> dict[str, np.ndarray]:
    """``mean``, ``votes``, ``variance``, ``entropy`` and ``mutual_information`` (bits) of ``(M, ...)``
    member probabilities (see the module's docstring). Identical binary members give 0 everywhere
    but ``mean`` and ``votes``; identical soft members leave only the entropy of their own doubt."""
    m = np.asarray(members, dtype=np.float32)
    if m.ndim < 2 or len(m) == 0:
        raise ValueError(f"expected a stack of members (M, ...), got shape {m.shape}")
    votes = np.zeros(m.shape[1:], dtype=np.float32)
    member_entropy = np.zeros(m.shape[1:], dtype=np.float32)
    for member in m:  # one member at a time: no (M, ...) temporaries
        votes += member > 0.5
        member_entropy += binary_entropy(member)
    mean = m.mean(axis=0, dtype=np.float64).astype(np.float32)
    entropy = binary_entropy(mean)
    return {"mean": mean, "votes": votes / len(m), "variance": m.var(axis=0, dtype=np.float64).astype(np.float32),
            "entropy": entropy, "mutual_information": np.clip(entropy - member_entropy / len(m), 0.0, None)}


def fuse(members: np.ndarray, rule: str = DEFAULTS.rule, threshold: float = DEFAULTS.threshold) -> np.ndarray:
    """Consensus labels (uint8 0/1) from member probabilities ``(M, ...)``; no model call.

    ``majority``: the fraction of members whose mask (probability > 0.5) is set (the result's
    ``votes``) exceeds ``threshold`` (0.5 = a strict majority); ``mean``: the members' mean
    probability exceeds ``threshold``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; choose one of {list(RULES)}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.floating)) or not 0 <= threshold <= 1:
        raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}")
    m = np.asarray(members)
    score = (m > 0.5).mean(axis=0) if rule == "majority" else m.mean(axis=0, dtype=np.float64)
    return (score > threshold).astype(np.uint8)


def slice_scores(uncertainty: np.ndarray, axis: int = 0) -> np.ndarray:
    """Total uncertainty of each slice along ``axis`` (a 2D map is one slice)."""
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.ndim == 2:
        return np.array([u.sum()])
    if axis not in range(u.ndim):
        raise ValueError(f"axis must be one of {list(range(u.ndim))} for a map of shape {u.shape}, got {axis!r}")
    return np.moveaxis(u, axis, 0).reshape(u.shape[axis], -1).sum(axis=1)


def slice_ranking(uncertainty: np.ndarray, axis: int = 0, keep_zero: bool = False) -> np.ndarray:
    """Slice indices along ``axis``, most disagreement (summed uncertainty) first; slices with none
    are left out unless ``keep_zero``. Ties keep slice order."""
    scores = slice_scores(uncertainty, axis)
    order = np.argsort(-scores, kind="stable")
    return order if keep_zero else order[scores[order] > 0]


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


def _whole(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value <= high:
        raise ValueError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def segmentation_model(model: "str | os.PathLike | LoadedModel | None" = None, device: str = "auto") -> "LoadedModel":
    """A loaded segmentation model: a name, a path to ``NAME.safetensors``, a loaded model, or the default."""
    from .device import select_device
    from .models import LoadedModel, default_model, get_model

    if isinstance(model, LoadedModel):
        loaded = model
    else:
        name = model if model not in (None, "") else default_model("segmentation", 2)
        loaded = get_model(name, device=str(select_device(device)))
    check_segmentation_card(loaded.card)
    return loaded


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


def planned_calls(card, n_inputs: int, members: int = DEFAULTS.members, steps: int = DEFAULTS.steps,
                  scheduler: str = DEFAULTS.scheduler, chunk: int = DEFAULTS.chunk) -> int:
    """Network calls of a run over ``n_inputs`` slices (1 for a 3D model): its progress total."""
    from .sampling import make_scheduler

    return len(make_scheduler(card, scheduler, steps).timesteps) * math.ceil(n_inputs * members / chunk)


def iter_segment_ensemble(
    image: np.ndarray, spacing: Sequence[float] | None = None,
    model: "str | os.PathLike | LoadedModel | None" = None, members: int = DEFAULTS.members,
    steps: int = DEFAULTS.steps, scheduler: str = DEFAULTS.scheduler, seed: int | None = DEFAULTS.seed,
    axis: int = 0, indices: Sequence[int] | None = None, device: str = "auto", chunk: int = DEFAULTS.chunk,
    max_bytes: int = DEFAULTS.max_bytes, preview: bool = True, fixed: np.ndarray | None = None,
) -> Generator[Progress, None, EnsembleResult]:
    """Yield :class:`Progress` per network call and return an :class:`EnsembleResult`.

    ``preview`` (throttled) is the current mean probability over members on the input grid.
    ``axis``/``indices`` pick the slices a 2D model segments (slices and members are batched).
    ``fixed`` (the image's shape: -1 free, 0/1 set by a person) holds those labels in every member
    (:mod:`~napari_diffmed.corrections`). Bad input raises ValueError before any network runs.
    """
    import torch

    from .device import make_generator, resolve_seed
    from .provenance import provenance
    from .sampling import Conditioning, iter_denoise, make_scheduler
    from .validation import check_finite_result, check_task_inputs
    from .volumes import as_volume, prepare

    members = _whole("members", members, 1, MAX_MEMBERS)
    chunk = _whole("chunk", chunk, 1, 65536)
    check_task_inputs(image, spacing, axis=axis, indices=indices, seed=seed, copies=0, values=False)
    arr = np.asarray(image)
    if fixed is not None:
        from .corrections import Held, check_fixed
        fixed = check_fixed(fixed, arr.shape)
    loaded = segmentation_model(model, device)
    card, net = loaded.card, loaded.network
    if card.spatial_dims == 3 and (arr.ndim != 3 or indices is not None):
        raise ValueError(f"model {card.name!r} is a 3D model: give a 3D volume and no slice indices")
    if card.spatial_dims == 2 and axis not in ((0,) if arr.ndim == 2 else (0, 1, 2)):
        raise ValueError(f"slicing axis must be {'0' if arr.ndim == 2 else '0, 1 or 2'} for a {arr.ndim}D image, "
                         f"got {axis!r}")
    depth = arr.shape[axis] if arr.ndim == 3 else 1
    n_inputs = 1 if card.spatial_dims == 3 else len(set(indices)) if indices is not None else depth
    need = estimate_bytes(arr.shape, n_inputs, members, card.image_size)
    if need > max_bytes:  # checked before the scan is even copied
        raise ValueError(f"{members} members over an image of shape {arr.shape} need about {need / 2**30:.2f} GiB, "
                         f"more than max_bytes={max_bytes / 2**30:.2f} GiB; use fewer members or slices, "
                         "or raise max_bytes")
    _, vol_spacing = as_volume(arr, spacing)
    dev = next(net.parameters()).device
    sched = make_scheduler(card, scheduler, steps, device=dev)
    prepared = prepare(arr, spacing, card, axis=axis, indices=indices)
    held = None if fixed is None else Held.from_fixed(fixed, prepared)
    seed = resolve_seed(seed)
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
            if preview and (time.perf_counter() >= next_preview or done == total):
                t0 = time.perf_counter()
                flat[part] = _probability(step.x0)
                picture = _on_input(prepared, _restored(prepared, soft.mean(axis=1)), arr.shape)
                next_preview = time.perf_counter() + max(0.5, 10 * (time.perf_counter() - t0))
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
    model: "str | os.PathLike | LoadedModel | None" = None, members: int = DEFAULTS.members,
    steps: int = DEFAULTS.steps, scheduler: str = DEFAULTS.scheduler, seed: int | None = DEFAULTS.seed,
    axis: int = 0, indices: Sequence[int] | None = None, device: str = "auto", chunk: int = DEFAULTS.chunk,
    max_bytes: int = DEFAULTS.max_bytes, callback=None, fixed: np.ndarray | None = None, preprocess=None,
    force: bool = False, metadata: dict | None = None,
) -> EnsembleResult:
    """Segment a 2D image or 3D volume with an ensemble; see :func:`iter_segment_ensemble`.

    The scan is first checked against the model's training domain (:mod:`napari_diffmed.domain`);
    ``preprocess`` ("auto" or a :class:`~napari_diffmed.preprocess.PreprocessSettings`) runs the model in
    its template's space and maps every result back onto the scan's grid.

    >>> result = segment_ensemble(scan, spacing=(1, 1, 1), members=8, indices=range(80, 92))  # doctest: +SKIP
    >>> labels, ranked = result.labels(), result.ranking()  # doctest: +SKIP
    """
    from .preprocess.run import iter_task

    loaded = segmentation_model(model, device)
    make = lambda img, sp, ax, idx, held: iter_segment_ensemble(  # noqa: E731
        img, sp, loaded, members, steps, scheduler, seed, ax, idx, device, chunk, max_bytes, preview=False,
        fixed=held)
    return drive(iter_task("segmentation", make, image, spacing, loaded.card, preprocess=preprocess, force=force,
                           axis=axis, indices=indices, mask=fixed, metadata=metadata), callback)
