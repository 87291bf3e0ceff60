"""Model cards: JSON metadata beside safetensors weights, checked on load."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

TASKS = ("image", "segmentation")
ARCHITECTURES = ("DiffusionModelUNet",)
SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "RFlowScheduler")
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")  # MONAI's names: noise, x0, velocity
CARD_VERSION = 1


class ModelCardError(ValueError):
    """A model card or its weights are malformed, tampered with, or do not match."""


@dataclass
class ModelCard:
    """Everything needed to rebuild, run and judge a model.

    ``network`` holds the keyword arguments of MONAI's ``DiffusionModelUNet``;
    ``scheduler`` holds ``{"name": ..., **kwargs}`` for the training scheduler (its
    ``prediction_type`` says what the network predicts);
    ``spacing`` is the physical pixel/voxel size (mm) the model sees, in napari
    axis order; ``normalisation`` says how intensities map to the model range.
    """

    name: str
    task: str
    spatial_dims: int
    image_size: list[int]
    spacing: list[float]
    network: dict[str, Any]
    scheduler: dict[str, Any]
    in_channels: int = 1
    out_channels: int = 1
    condition_channels: int = 0
    class_names: list[str] = field(default_factory=list)
    null_class: int | None = None
    normalisation: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile", "lower": 0.5, "upper": 99.5}
    )
    slice_axis: str | None = "axial"
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str = ""
    architecture: str = "DiffusionModelUNet"
    card_version: int = CARD_VERSION

    def __post_init__(self) -> None:
        self.validate()

    @property
    def conditional(self) -> bool:
        """Whether the model takes a class label (and so supports guidance)."""
        return bool(self.class_names)

    @property
    def prediction_type(self) -> str:
        """What the network predicts: ``epsilon`` (noise), ``sample`` (x0) or ``v_prediction``."""
        return self.scheduler.get("prediction_type", "epsilon")

    def class_index(self, name: str | int | None) -> int | None:
        """Index of a class given by name or index; ``None`` means unconditional."""
        if name is None:
            return self.null_class if self.conditional else None
        if not self.conditional:
            raise ValueError(f"model {self.name!r} is not class-conditional; got class {name!r}")
        if isinstance(name, int) and 0 <= name < len(self.class_names):
            return name
        if name in self.class_names:
            return self.class_names.index(name)
        raise ValueError(f"class {name!r} is not one of model {self.name!r}'s classes {self.class_names}")

    def validate(self) -> None:
        """Raise :class:`ModelCardError` naming the first field that is wrong."""
        if self.card_version != CARD_VERSION:
            raise ModelCardError(f"card_version {self.card_version} is not supported (expected {CARD_VERSION})")
        if self.architecture not in ARCHITECTURES:
            raise ModelCardError(f"architecture {self.architecture!r} is not allowed; allowed: {ARCHITECTURES}")
        if self.task not in TASKS:
            raise ModelCardError(f"task {self.task!r} is not one of {TASKS}")
        if self.spatial_dims not in (2, 3):
            raise ModelCardError(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        for key in ("image_size", "spacing"):
            if len(getattr(self, key)) != self.spatial_dims:
                raise ModelCardError(f"{key} {getattr(self, key)} does not have {self.spatial_dims} entries")
        if self.scheduler.get("name") not in SCHEDULERS:
            raise ModelCardError(f"scheduler {self.scheduler.get('name')!r} is not one of {SCHEDULERS}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ModelCardError(f"scheduler prediction_type {self.prediction_type!r} is not one of {PREDICTION_TYPES}")
        net = self.network
        expected_in = self.in_channels + self.condition_channels
        if net.get("spatial_dims") != self.spatial_dims or net.get("in_channels") != expected_in:
            raise ModelCardError(
                f"network kwargs (spatial_dims={net.get('spatial_dims')}, in_channels={net.get('in_channels')}) "
                f"disagree with the card (spatial_dims={self.spatial_dims}, in_channels={expected_in})"
            )
        if net.get("out_channels") != self.out_channels:
            raise ModelCardError(f"network out_channels {net.get('out_channels')} != card {self.out_channels}")
        if self.task == "segmentation" and self.condition_channels < 1:
            raise ModelCardError("a segmentation model needs condition_channels >= 1 (the image)")
        n_embeds = net.get("num_class_embeds")
        if self.conditional:
            if self.null_class is None or n_embeds != len(self.class_names) + 1:
                raise ModelCardError(
                    f"class-conditional card needs num_class_embeds = {len(self.class_names) + 1} "
                    f"(classes + null) and a null_class; got {n_embeds} and {self.null_class}"
                )
        elif n_embeds:
            raise ModelCardError("num_class_embeds is set but the card names no classes")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card") -> "ModelCard":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"{source}: unknown fields {unknown}")
        try:
            return cls(**data)
        except TypeError as err:  # missing required fields
            raise ModelCardError(f"{source}: {err}") from None

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ModelCardError(f"cannot read model card {path}: {err}") from None
        if not isinstance(data, dict):
            raise ModelCardError(f"model card {path} is not a JSON object")
        return cls.from_dict(data, source=str(path))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
