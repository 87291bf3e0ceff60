"""``to_model_space``: bias correction, registration to the card's template, brain extraction and
intensity matching, each optional and recorded; the returned :class:`Transform` takes results back."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .transform import Transform

if TYPE_CHECKING:
    from ..models.card import ModelCard

REGISTER = ("affine", "deformable", "none")
SKULL = ("auto", "yes", "no")
TEMPLATES = {"MNI152NLin2009aSym": "nilearn's MNI152 2009a symmetric T1 (skull-stripped)"}
SKULL_RATIO = 0.15  # shell/brain intensity above which a scan is taken to have its skull


class RegistrationError(ValueError):
    """The scan could not be brought onto the model's template with enough similarity."""


@dataclass(frozen=True)
class PreprocessSettings:
    """Which stages run. ``register``: affine, deformable (affine then demons) or none (the scan is taken
    to be in the template's space already: only centred); ``skull_strip``: auto (detected), yes or no;
    ``standardise``: match intensities to the template inside the brain; ``min_similarity``: the
    correlation with the template (inside its brain) below which registration counts as failed;
    ``oriented``: whether the array's axes are known to be (z, y, x) = (I-S, P-A, L-R) as the reader
    gives them (False: all 48 axis orders and flips are tried)."""

    n4: bool = True
    register: str = "affine"
    skull_strip: str = "auto"
    standardise: bool = True
    min_similarity: float = 0.5
    oriented: bool = True

    def __post_init__(self) -> None:
        if self.register not in REGISTER:
            raise ValueError(f"register must be one of {REGISTER}, got {self.register!r}")
        if self.skull_strip not in SKULL:
            raise ValueError(f"skull_strip must be one of {SKULL}, got {self.skull_strip!r}")
        if not -1.0 <= float(self.min_similarity) <= 1.0:
            raise ValueError(f"min_similarity must be from -1 to 1, got {self.min_similarity!r}")


def in_template_space(card: "ModelCard") -> bool:
    """Whether the card says its model was trained in a template's space."""
    return bool((getattr(card, "domain", None) or {}).get("template"))


def resolve(preprocess: "None | str | PreprocessSettings", card: "ModelCard") -> PreprocessSettings | None:
    """``None``/"none" -> no preprocessing; "auto" -> the defaults where the card names a template (else
    none); a :class:`PreprocessSettings` as it is."""
    if preprocess is None or isinstance(preprocess, PreprocessSettings):
        if preprocess is not None and not in_template_space(card):
            raise ValueError(f"model {card.name!r} names no template in its card's domain; "
                             "preprocessing needs one (use preprocess=None)")
        return preprocess
    if preprocess == "none":
        return None
    if preprocess == "auto":
        return PreprocessSettings() if in_template_space(card) else None
    raise ValueError(f"preprocess must be None, 'auto', 'none' or a PreprocessSettings, got {preprocess!r}")


def load_template(card: "ModelCard") -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    """The card's template T1 (napari order), its spacing and its brain mask."""
    from scipy import ndimage

    from ..training.templates import load_mni152

    domain = card.domain or {}
    name = domain.get("template")
    if name not in TEMPLATES:
        raise ValueError(f"model {card.name!r}: template {name!r} is not one of {sorted(TEMPLATES)}")
    template = load_mni152(int(domain.get("template_resolution_mm", 1)))
    brain = ndimage.binary_fill_holes(template.t1 > 0.01)
    return template.t1, template.spacing, brain


def to_model_space(
    scan: np.ndarray, spacing: Sequence[float] | None, card: "ModelCard",
    settings: PreprocessSettings | None = None, force: bool = False,
) -> tuple[np.ndarray, Transform]:
    """Bring a 3D scan onto the card's template grid; returns ``(model_scan, transform)``.

    Stages (each optional, each timed in ``transform.record``): N4 bias-field correction; affine
    (optionally deformable) registration to the template; brain extraction by the template's brain
    mask carried onto the scan (where a skull is found or asked for); quantile matching to the
    template inside the brain. A registration whose similarity stays under ``min_similarity`` raises
    :class:`RegistrationError` (with ``force``: a :class:`~napari_diffmed.domain.DomainWarning`)."""
    try:
        import SimpleITK as sitk
    except ImportError:
        raise ImportError("preprocessing needs SimpleITK: pip install 'napari-diffmed[preprocess]'") from None

    from . import register as reg
    from .images import n4_bias_field, resample, to_itk
    from .intensity import QuantileMap, skull_ratio

    settings = settings or PreprocessSettings()
    vol = np.asarray(scan, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"preprocessing needs a 3D volume, got an array of shape {vol.shape}")
    if spacing is None:
        raise ValueError("preprocessing needs the scan's spacing (mm); pass spacing= (or preprocess=None)")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing {spacing} does not fit a volume of shape {vol.shape}")
    template, t_spacing, brain = load_template(card)
    record: dict[str, Any] = {"settings": asdict(settings), "template": card.domain.get("template"), "stages": {}}
    stages = record["stages"]
    start = time.perf_counter()
    bias = None
    if settings.n4:
        bias = n4_bias_field(vol, spacing)
        stages["n4"] = {"seconds": _since(start), "field_range": [round(float(bias.min()), 3),
                                                                  round(float(bias.max()), 3)]}
    work = vol / bias if bias is not None else vol
    t0 = time.perf_counter()
    margin = _dilate(brain, t_spacing, 10.0)
    if settings.register == "none":
        forward = sitk.AffineTransform(3)
        forward.SetTranslation(tuple(reg._centre(work, spacing) - reg._centre(template, t_spacing)))
        metric = None
    else:
        forward, metric = reg.affine(template, t_spacing, work, spacing, search=not settings.oriented,
                                     template_mask=margin)
    stages["affine"] = {"seconds": _since(t0), "mattes_mi": None if metric is None else round(metric, 4),
                        "matrix": _matrix(forward)}
    reference = to_itk(template, t_spacing)
    moved = resample(work, spacing, reference, forward, 1)
    ratio = skull_ratio(moved, brain, t_spacing)
    skull = settings.skull_strip == "yes" or (settings.skull_strip == "auto" and ratio > SKULL_RATIO)
    stages["skull"] = {"shell_ratio": round(ratio, 3), "present": bool(ratio > SKULL_RATIO), "stripped": bool(skull)}
    inverse = forward.GetInverse()
    if settings.register == "deformable":
        t0 = time.perf_counter()
        matched = QuantileMap.fit(moved[brain], template[brain]).forward(moved)
        field, field_inv = reg.deformable(template, t_spacing, matched, brain)
        forward = sitk.CompositeTransform([forward, field])
        inverse = sitk.CompositeTransform([field_inv, inverse])
        moved = resample(work, spacing, reference, forward, 1)
        stages["deformable"] = {"seconds": _since(t0), "max_displacement_mm": round(reg.field_stats(field), 2)}
    keep = brain if skull else np.ones_like(brain)
    quantiles = None
    if settings.standardise:
        quantiles = QuantileMap.fit(moved[brain], template[brain])
        moved = quantiles.forward(moved)
        stages["standardise"] = {"method": "quantile matching inside the template's brain", "quantiles": 51}
    model_scan = np.where(keep, moved, 0.0).astype(np.float32)
    score = reg.similarity(model_scan, template, brain)
    record.update(similarity=round(score, 4), seconds=_since(start))
    if score < settings.min_similarity:
        message = (f"registration to {card.domain.get('template')} failed: correlation with the template "
                   f"{score:.2f} < min_similarity {settings.min_similarity:g} (a scan of another body part, "
                   "modality or orientation?)")
        if not force:
            raise RegistrationError(message + "; pass force=True (--force) to go on")
        from ..domain import DomainWarning

        warnings.warn(message, DomainWarning, stacklevel=3)
        record["warning"] = message
    transform = Transform(vol.shape, spacing, template.shape, t_spacing, forward, inverse, brain, bias, quantiles,
                          record)
    return model_scan, transform


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 3)


def _dilate(mask: np.ndarray, spacing: Sequence[float], mm: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=max(1, int(round(mm / min(spacing)))))


def _matrix(transform) -> list[list[float]]:
    """4x4 (template mm -> scan mm, ITK x, y, z order) of an affine transform."""
    m = np.array(transform.GetMatrix()).reshape(3, 3)
    c, t = np.array(transform.GetCenter()), np.array(transform.GetTranslation())
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = m, t + c - m @ c
    return np.round(out, 5).tolist()
