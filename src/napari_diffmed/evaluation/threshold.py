"""The default anomaly threshold of an image model, calibrated on healthy held-out slices.

For each method at the default settings, the heatmap of the lesion-free MNI152 template is computed
on the VALIDATION slab (held out of training, see :func:`~napari_diffmed.training.lesions.held_out_slabs`)
and the threshold is the value that only ``fraction`` of its brain voxels reach. It is then checked on
data it was not fitted to: the healthy EVALUATION slab (the fraction of its brain voxels flagged) and
the evaluation lesion cases (sensitivity: the fraction of lesion voxels flagged; lesions with any
voxel flagged; Dice). The figures go into the card under ``metrics["anomaly"]["threshold"][method]``,
where :func:`napari_diffmed.anomaly.anomaly_map` takes its default threshold from.

    python -m napari_diffmed.evaluation.threshold mni_t1_axial_64 --write
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

HEALTHY_FRACTION = 0.002  # of healthy brain voxels above the default threshold
CASES, STRIDE = 4, 3  # the lesion cases scored, as the card's evaluation scores them


def calibration_settings(method: str) -> dict[str, Any]:
    """The settings a method's threshold is calibrated at: the defaults, without seed, device or batch size."""
    from ..anomaly import DEFAULTS

    used = {k: v for k, v in asdict(DEFAULTS).items() if k not in ("seed", "device", "batch_size")}
    used.pop("level" if method == "ddim" else "depth")
    return {**used, "method": method}


def calibrate(model: Any = None, methods: Sequence[str] | None = None, fraction: float = HEALTHY_FRACTION,
              seed: int = 0, device: str = "cpu", log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """``{method: {"value", "healthy_fraction", "held_out_healthy_fraction", "sensitivity", ...}}``."""
    from ..anomaly import METHODS, anomaly_map
    from ..models import load
    from ..training.lesions import held_out_slabs, make_lesion_cases
    from .anomaly import dice
    from ..training.templates import load_mni152

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie between 0 and 1, got {fraction}")
    loaded = load("anomaly", model, device)
    card = loaded.card
    methods = [m for m in (methods or METHODS) if card.conditional or m != "ddim"]
    template = load_mni152(1)
    slabs = held_out_slabs()
    healthy = np.concatenate([slabs["validation"], slabs["evaluation"]])
    cases = make_lesion_cases("evaluation", CASES, seed=seed, pixel_mm=min(card.spacing), stride=STRIDE)
    out: dict[str, Any] = {}
    for method in methods:
        start = time.perf_counter()
        run = dict(method=method, seed=seed, device=device, preprocess="none")  # on the template itself
        clean = anomaly_map(template.t1, template.spacing, indices=healthy, model=loaded, **run)
        brain = {name: _on_slices(clean.brain_mask, slab) for name, slab in slabs.items()}
        value = float(np.quantile(clean.heatmap[brain["validation"]], 1 - fraction))
        held = float((clean.heatmap[brain["evaluation"]] >= value).mean())
        lesion = anomaly_map(cases.scan, cases.spacing, indices=cases.indices, model=loaded, **run)
        region = cases.region() & lesion.brain_mask
        flagged = (lesion.heatmap >= value) & region
        truth = cases.reference & region
        found, total = _lesions_found(truth, flagged)
        out[method] = {
            "value": round(value, 5), "healthy_fraction": fraction,
            "calibrated_on": f"validation slab, {len(slabs['validation'])} slices, "
                             f"{int(brain['validation'].sum())} brain voxels of the lesion-free template",
            "held_out_healthy_fraction": round(held, 5),
            "held_out_healthy_voxels": int(brain["evaluation"].sum()),
            "sensitivity": round(float(flagged[truth].mean()), 4),
            "lesions_found": f"{found}/{total}",
            "lesion_case_false_positive_fraction": round(float(flagged[region & ~truth].mean()), 5),
            "dice": round(dice(flagged, truth, region), 4),
            "settings": calibration_settings(method),
            "seconds": round(time.perf_counter() - start, 1),
        }
        log(f"{method}: {out[method]}")
    return out


def _on_slices(mask: np.ndarray, slab: np.ndarray) -> np.ndarray:
    keep = np.zeros(mask.shape, dtype=bool)
    keep[slab] = True
    return keep & mask


def _lesions_found(truth: np.ndarray, flagged: np.ndarray) -> tuple[int, int]:
    """(lesions with at least one flagged voxel, lesions): 3D connected parts of ``truth``."""
    from scipy import ndimage

    parts, n = ndimage.label(truth)
    hit = np.unique(parts[flagged & truth])
    return int((hit > 0).sum()), int(n)


def write_thresholds(weights_path: Any, thresholds: dict[str, Any]) -> Path:
    """Put ``thresholds`` into the card's ``metrics["anomaly"]["threshold"]`` (atomically; the weights must match)."""
    from ..io import atomic_write
    from ..models.card import ModelCard, ModelCardError, sha256_file
    from ..models.checkpoint import card_path
    from ..models.registry import resolve

    weights = resolve(weights_path)
    card_file = card_path(weights)
    card = ModelCard.read(card_file)
    if card.weights_sha256 != sha256_file(weights):
        raise ModelCardError(f"{weights.name} no longer matches its card; re-evaluate the current weights")
    anomaly = dict(card.metrics.get("anomaly", {}))
    anomaly["threshold"] = {**anomaly.get("threshold", {}), **thresholds}
    card.metrics = {**card.metrics, "anomaly": anomaly}
    card.validate()
    atomic_write(card_file, lambda tmp: Path(tmp).write_text(card.to_json()))
    return card_file


def main(argv: Sequence[str] | None = None) -> int:
    from ..anomaly import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a registry name or a path to NAME.safetensors")
    parser.add_argument("--fraction", type=float, default=HEALTHY_FRACTION,
                        help=f"fraction of healthy brain voxels the threshold may flag (default {HEALTHY_FRACTION})")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--write", action="store_true", help="write the thresholds into the model card")
    args = parser.parse_args(argv)
    found = calibrate(args.model, args.methods, args.fraction, device=args.device,
                      log=lambda text: print(text, file=sys.stderr, flush=True))
    print("| method | threshold | healthy held-out voxels flagged | lesion voxels flagged (sensitivity) | "
          "lesions found | Dice |\n|---|---|---|---|---|---|")
    for method, f in found.items():
        print(f"| {method} | {f['value']:.4f} | {100 * f['held_out_healthy_fraction']:.2f}% | "
              f"{100 * f['sensitivity']:.1f}% | {f['lesions_found']} | {f['dice']:.3f} |")
    print(json.dumps(found, indent=2))
    if args.write:
        print(f"wrote {write_thresholds(args.model, found)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
