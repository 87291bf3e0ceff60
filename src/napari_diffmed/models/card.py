"""Model cards: JSON metadata beside safetensors weights, checked on load."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import schema

TASKS = ("image", "segmentation")
ARCHITECTURES = ("DiffusionModelUNet",)
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
    axis order; ``normalisation`` says how intensities map to the model range;
    ``domain`` (optional) describes the training scans: template and space, plane, modality and
    contrast signature, spacing, field of view, skull (see :mod:`napari_diffmed.domain`).
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
    domain: dict[str, Any] = field(default_factory=dict)
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
        """Raise :class:`ModelCardError` naming the first field that is wrong (types, ranges, sizes, memory)."""
        try:
            self._check_fields()
        except schema.SchemaError as err:
            raise ModelCardError(str(err)) from None
        self._check_consistency()

    def _check_fields(self) -> None:
        if self.card_version != CARD_VERSION:
            raise ModelCardError(f"card_version {self.card_version!r} is not supported (expected {CARD_VERSION})")
        if self.architecture not in ARCHITECTURES:
            raise ModelCardError(f"architecture {self.architecture!r} is not allowed; allowed: {ARCHITECTURES}")
        schema.text("name", self.name, 200)
        if not self.name.strip():
            raise schema.SchemaError("name must not be empty")
        if self.task not in TASKS:
            raise ModelCardError(f"task {self.task!r} is not one of {TASKS}")
        if isinstance(self.spatial_dims, bool) or self.spatial_dims not in (2, 3):
            raise ModelCardError(f"spatial_dims must be 2 or 3, got {self.spatial_dims!r}")
        for key in ("image_size", "spacing"):
            value = getattr(self, key)
            if not isinstance(value, list) or len(value) != self.spatial_dims:
                raise ModelCardError(f"{key} {schema._short(value)} does not have {self.spatial_dims} entries")
        size = schema.whole_list("image_size", self.image_size, 1, 65536, self.spatial_dims)
        for i, s in enumerate(self.spacing):
            schema.number(f"spacing[{i}]", s, 1e-4, 1e4)
        for key, low in (("in_channels", 1), ("out_channels", 1), ("condition_channels", 0)):
            schema.whole(key, getattr(self, key), low, 64)
        schema.check_network(self.network)
        factor = 2 ** (len(self.network["channels"]) - 1)
        if any(s % factor for s in size):
            raise schema.SchemaError(f"image_size {size} must be divisible by {factor} (the network halves it "
                                     f"{len(self.network['channels']) - 1} times)")
        schema.check_scheduler(self.scheduler, PREDICTION_TYPES)
        if not isinstance(self.class_names, list) or len(self.class_names) > 1000:
            raise schema.SchemaError(f"class_names must be a list of at most 1000 names, "
                                     f"got {schema._short(self.class_names)}")
        for i, name in enumerate(self.class_names):
            schema.text(f"class_names[{i}]", name, 200)
        if len(set(self.class_names)) != len(self.class_names):
            raise schema.SchemaError(f"class_names {self.class_names} must not repeat a name")
        if self.null_class is not None:
            schema.whole("null_class", self.null_class, 0, 10_000)
        schema.check_normalisation(self.normalisation)
        if self.slice_axis not in schema.SLICE_AXES:
            raise schema.SchemaError(f"slice_axis {self.slice_axis!r} is not one of {schema.SLICE_AXES}")
        schema.text("description", self.description, 100_000)
        if not isinstance(self.weights_sha256, str) or not re.fullmatch(r"([0-9a-f]{64})?", self.weights_sha256):
            raise schema.SchemaError(f"weights_sha256 must be 64 hexadecimal digits, got "
                                     f"{schema._short(self.weights_sha256)}")
        typed = {"name", "task", "spatial_dims", "image_size", "spacing", "network", "scheduler", "in_channels",
                 "out_channels", "condition_channels", "class_names", "null_class", "normalisation", "slice_axis",
                 "description", "weights_sha256", "architecture", "card_version"}
        for f in fields(self):  # training, metrics and any later free-form field (e.g. domain)
            value = getattr(self, f.name)
            if f.name not in typed and value is not None:
                schema.free_form(f.name, value)
        schema.check_memory(self.network, size)

    def _check_consistency(self) -> None:
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
            if self.null_class != len(self.class_names):
                raise ModelCardError(f"null_class must be {len(self.class_names)} (the embedding after the "
                                     f"{len(self.class_names)} classes), got {self.null_class}")
        elif n_embeds:
            raise ModelCardError("num_class_embeds is set but the card names no classes")
        elif self.null_class is not None:
            raise ModelCardError(f"null_class {self.null_class} is set but the card names no classes")

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
        except ModelCardError as err:
            raise ModelCardError(f"{source}: {err}") from None

    @classmethod
    def read(cls, path: str | Path) -> "ModelCard":
        path = Path(path)
        try:
            size = path.stat().st_size
            if size > schema.MAX_CARD_BYTES:
                raise ModelCardError(f"model card {path} is {size} bytes, more than the "
                                     f"{schema.MAX_CARD_BYTES} a card may have")
            text = path.read_bytes().decode("utf-8")
            if schema.json_depth(text) > schema.MAX_JSON_DEPTH:
                raise ModelCardError(f"model card {path} is nested more than {schema.MAX_JSON_DEPTH} levels deep")
            data = json.loads(text)
        except (OSError, ValueError, RecursionError) as err:  # ValueError: bad JSON, UTF-8 or a 5000-digit number
            if isinstance(err, ModelCardError):
                raise
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
