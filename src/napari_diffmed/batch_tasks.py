"""Each scan task's file run for :func:`napari_diffmed.batch.run_file`: its inputs checked before any model
loads, its output set named, its results and JSON record written in the scan's space."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .batch import SEGMENT_OUTPUTS, chosen_slices, read_mask, read_scan, write_sidecar

if TYPE_CHECKING:
    from .batch import _Job


def segment(job: "_Job", reference=None, series=None) -> list[Path]:
    from .io import write_nifti
    from .outputs import OutputSet

    s, log = job.settings, job.log
    scan, kwargs = read_scan(job.path, series)
    truth = None if reference is None else read_mask(Path(reference), scan.shape, "reference")
    s = s.replace(indices=chosen_slices(s, scan.shape))
    stem, out = kwargs["name"], job.out
    paths = {key: out / f"{stem}_{suffix}.nii.gz" for key, suffix in SEGMENT_OUTPUTS.items()}
    sidecar = out / f"{stem}_segment.json"
    outputs = OutputSet(out, paths.values(), sidecar, job.overwrite)
    loaded = job.load()
    log(f"segment: {job.path} {scan.shape}, model {loaded.model_id} ({loaded.path}), members={s.members}, "
        f"steps={s.steps}, scheduler={s.scheduler}, seed={s.seed}, axis={s.axis}, slices={_slices(s)}, "
        f"rule={s.rule}, threshold={s.threshold:g}, device={s.device}")
    meta, spacing = kwargs["metadata"], kwargs["metadata"]["spacing"]
    job.settings = s
    result = job.run("segment_ensemble", scan, spacing, loaded, metadata=meta)
    labels = result.labels(s.rule, s.threshold)
    with outputs.staging() as stage:
        for key, path in paths.items():
            data = labels if key == "labels" else getattr(result, key)
            write_nifti(stage(path), data, meta, labels=key == "labels", overwrite=job.overwrite)
            log(f"  wrote {path}")
        record = {**result.provenance, "scan": str(job.path), "rule": s.rule, "threshold": s.threshold,
                  "most_uncertain_slices": [int(i) for i in result.ranking()[:10]],
                  "files": {key: str(path) for key, path in paths.items()}, "messages": []}
        if truth is not None:
            from .evaluation.segmentation import segmentation_scores

            record["scores"] = segmentation_scores(result, truth, spacing, s.rule, s.threshold)
            log("  " + ", ".join(f"{key} {value:.3f}" for key, value in record["scores"].items()))
        write_sidecar(stage(sidecar), record, overwrite=job.overwrite)
    log(f"  most uncertain slices along axis {s.axis}: {record['most_uncertain_slices']}")
    log(f"  wrote {sidecar} ({result.provenance['seconds']:.0f} s of model time)")
    return sorted([*paths.values(), sidecar])


def anomaly(job: "_Job", mask=None, reference=None, threshold=None, series=None) -> list[Path]:
    from .io import write_nifti
    from .outputs import OutputSet
    from .validation import check_threshold

    s, log = job.settings, job.log
    if threshold is not None:
        check_threshold(threshold, "--threshold")
    scan, kwargs = read_scan(job.path, series)
    s = s.replace(indices=chosen_slices(s, scan.shape))
    masks = {name: read_mask(Path(path), scan.shape, name) for name, path in (("mask", mask), ("reference", reference))
             if path is not None}
    stem, out = kwargs["name"], job.out
    names = {"heatmap": "anomaly_heatmap", "reconstruction": "pseudo_healthy", "labels": "anomaly_mask",
             "brain": "brain_mask", **({"variance": "anomaly_variance"} if s.reconstructions > 1 else {})}
    paths = {key: out / f"{stem}_{suffix}.nii.gz" for key, suffix in names.items()}
    sidecar = out / f"{stem}_anomaly.json"
    outputs = OutputSet(out, paths.values(), sidecar, job.overwrite)
    shown = ["method", "guidance", "compare", "negative", "reconstructions", "steps", "smoothing", "seed", "device",
             "depth" if s.method == "ddim" else "level"]
    log(f"anomaly: {job.path} {scan.shape}, model {job.model or 'mni_t1_axial_64 (default)'}, "
        + ", ".join(f"{key}={getattr(s, key)}" for key in shown) + f", axis={s.axis}, slices={_slices(s)}")
    loaded = job.load()
    meta = kwargs["metadata"]
    job.settings = s
    result = job.run("anomaly_map", scan, meta["spacing"], loaded, mask=masks.get("mask"), metadata=meta)
    cut = result.threshold if threshold is None else float(threshold)
    for note in result.messages:
        log(f"  notice: {note}")
    with outputs.staging() as stage:
        arrays = {"heatmap": (result.heatmap, False), "reconstruction": (result.reconstruction, False),
                  "labels": (result.labels(cut), True), "brain": (result.brain_mask.astype(np.uint8), True),
                  "variance": (result.variance, False)}
        for key, path in paths.items():
            data, labels = arrays[key]
            write_nifti(stage(path), data, meta, labels=labels, overwrite=job.overwrite)
            log(f"  wrote {path}")
        record = {**result.provenance, "scan": str(job.path), "threshold": cut, "messages": result.messages,
                  "files": {key: str(path) for key, path in paths.items()}}
        if "reference" in masks:
            from .evaluation.anomaly import anomaly_scores

            try:
                record["scores"] = anomaly_scores(result.heatmap, masks["reference"], cut, result.brain_mask)
                log("  " + ", ".join(f"{key} {value:.3f}" for key, value in record["scores"].items()))
            except ValueError as err:  # e.g. no lesion inside the brain mask: keep the results, say why
                record["scores"] = f"not scored: {err}"
                log(f"  {record['scores']}")
        write_sidecar(stage(sidecar), record, overwrite=job.overwrite)
    log(f"  wrote {sidecar} ({result.provenance['seconds']:.0f} s of model time)")
    return sorted([*paths.values(), sidecar])


def inpaint(job: "_Job", mask: Path, prefix=None, series=None) -> list[Path]:
    from .device import select_device
    from .geometry import world_matrix
    from .inpainting import describe
    from .io import read_scan as read
    from .io import write_nifti
    from .masks import mask_on_grid
    from .outputs import OutputSet
    from .slices import describe as describe_slices

    s, say = job.settings, job.log
    scan, scan_kw = read_scan(job.path, series)
    try:
        region, mask_kw, _ = read(mask, as_labels=True)
    except ValueError as err:
        raise ValueError(f"{err}; a mask must be binary or integer labels (threshold it first)") from None
    region, notes = mask_on_grid(region, world_matrix(mask_kw, region.ndim), scan.shape,
                                 world_matrix(scan_kw, scan.ndim))
    _check_region(region, mask, s.axis, None if s.indices is None else list(s.indices))
    stem = prefix or scan_kw["name"]
    names = [f"proposal{k}" for k in range(s.proposals)] + ["mean", "variance", "mask"]
    targets = {n: job.out / f"{stem}_inpaint_{n}.nii.gz" for n in names}
    sidecar = job.out / f"{stem}_inpaint.json"
    outputs = OutputSet(job.out, targets.values(), sidecar, job.overwrite)
    for note in notes:
        say(f"notice: {note}")
    loaded = job.load()
    if not loaded.card.conditional:
        s = s.replace(class_name=None)
    say(f"model {loaded.model_id} ({loaded.card.spatial_dims}D, {loaded.path})")
    where = "all with mask voxels" if s.indices is None else describe_slices(s.indices)
    device = s.device if job.client is not None else select_device(s.device)
    say(f"inpainting with class {s.class_name}, mode {s.mode}: {describe(s)}; {s.proposals} proposals, "
        f"seed {s.seed}, device {device}, axis {s.axis}, slices {where}")
    job.settings = s
    result = job.run("inpaint", scan, region, scan_kw["metadata"]["spacing"], loaded, metadata=scan_kw["metadata"])
    for note in result.messages:
        say(f"notice: {note}")
    notes += result.messages
    with outputs.staging() as stage:
        meta = scan_kw["metadata"]
        for k in range(s.proposals):
            write_nifti(stage(targets[f"proposal{k}"]), result.proposals[k], meta, overwrite=job.overwrite)
        write_nifti(stage(targets["mean"]), result.mean, meta, overwrite=job.overwrite)
        write_nifti(stage(targets["variance"]), result.variance, meta, overwrite=job.overwrite)
        write_nifti(stage(targets["mask"]), result.mask, meta, labels=True, overwrite=job.overwrite)
        record = {"scan": str(job.path), "mask": str(mask), "files": [p.name for p in targets.values()],
                  **result.provenance, "messages": notes}
        write_sidecar(stage(sidecar), record, overwrite=job.overwrite)
    prov = result.provenance
    where = "the whole volume" if prov.get("slices") is None else f"slices {prov['slices']}"
    say(f"used {prov['network_calls']} network calls on {where}; {prov.get('seconds', 0):.1f} s")
    for path in [*targets.values(), sidecar]:
        say(f"wrote {path}")
    return sorted([*targets.values(), sidecar])


def _slices(settings) -> str:
    from .slices import describe

    return "all" if settings.indices is None else describe(settings.indices)


def _check_region(mask: np.ndarray, path: Path, axis: int, slices: list[int] | None) -> None:
    """Refuse an empty mask, slices outside the scan, and chosen slices without mask voxels (before any model)."""
    from .slices import check_slices, describe

    if not mask.any():
        raise ValueError(f"the mask {path} has no non-zero voxels on the scan's grid: nothing to inpaint")
    if slices is None:
        return
    if mask.ndim == 2 and axis != 0:
        raise ValueError(f"slicing axis must be 0 for a 2D scan, got {axis}")
    moved = np.moveaxis(mask if mask.ndim == 3 else mask[None], axis, 0)
    chosen = check_slices(slices, len(moved), axis)
    if not moved[chosen].any():
        holding = np.flatnonzero(moved.reshape(len(moved), -1).any(axis=1))
        raise ValueError(f"the mask has no voxels on slices {describe(chosen)} along axis {axis}; it has some on "
                         f"slices {describe(holding)}")
