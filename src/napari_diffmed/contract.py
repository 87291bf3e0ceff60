"""The machinery every task's settings share: a frozen dataclass checked once, when it is made, that
takes keyword overrides and round-trips through JSON (:class:`TaskSettings`). The four tasks' settings
are in :mod:`napari_diffmed.settings`.
"""

from __future__ import annotations

import dataclasses
import json
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, TypeVar

import numpy as np

from .validation import check_axis, check_seed

S = TypeVar("S", bound="TaskSettings")
PREPROCESS_WORDS = ("auto", "none")


@dataclass(frozen=True)
class TaskSettings:
    """The methods every task's settings share; subclasses are frozen dataclasses whose fields all have
    defaults. ``task`` names the task (as :mod:`napari_diffmed.batch` and the server know it)."""

    task: ClassVar[str] = ""

    def __post_init__(self) -> None:
        self._normalise()
        self.check()

    # --- building -----------------------------------------------------------------------------------

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def build(cls: type[S], settings: "S | Mapping[str, Any] | None" = None, **overrides: Any) -> S:
        """``settings`` (an instance, a mapping of fields, or None for the defaults) with ``overrides`` in place."""
        if settings is None:
            base = cls()
        elif isinstance(settings, cls):
            base = settings
        elif isinstance(settings, Mapping):
            base = cls.from_dict(settings)
        else:
            raise ValueError(f"settings must be a {cls.__name__}, a mapping of its fields or None, "
                             f"got {type(settings).__name__}")
        return base.replace(**overrides) if overrides else base

    def replace(self: S, **overrides: Any) -> S:
        """A copy with ``overrides`` (field names) in place; unknown names and bad values raise ``ValueError``."""
        unknown = sorted(set(overrides) - set(self.fields()))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; allowed: {sorted(self.fields())}")
        return dataclasses.replace(self, **overrides)

    # --- JSON -----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain JSON values (tuples as lists, preprocessing settings as a dict)."""
        out = {}
        for name in self.fields():
            value = getattr(self, name)
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """The inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{cls.__name__} needs a mapping of its fields, got {type(data).__name__}")
        unknown = sorted(set(data) - set(cls.fields()))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; allowed: {sorted(cls.fields())}")
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls: type[S], text: str) -> S:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.__name__}: not JSON: {err}") from None
        return cls.from_dict(data)

    # --- checks ---------------------------------------------------------------------------------------

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _normalise(self) -> None:
        """Equal values in one form: indices as a tuple of ints, a preprocessing dict as its settings object."""
        names = self.fields()
        for name in names:  # numpy scalars as Python numbers, so that the settings are JSON
            value = getattr(self, name)
            if isinstance(value, np.generic):
                self._set(name, value.item())
        if "indices" in names and self.indices is not None and not isinstance(self.indices, (str, bytes)):
            try:
                self._set("indices", tuple(int(i) if isinstance(i, numbers.Integral) and not isinstance(i, bool)
                                           else i for i in self.indices))
            except TypeError:
                pass  # not iterable: check() names it
        if "preprocess" in names and isinstance(self.preprocess, Mapping):
            from .preprocess.pipeline import PreprocessSettings

            try:
                self._set("preprocess", PreprocessSettings(**dict(self.preprocess)))
            except TypeError as err:
                raise ValueError(f"preprocess: {err}") from None

    def check(self) -> None:
        """Raise ``ValueError`` naming the first bad field (the fields every task may have)."""
        names = self.fields()
        if "model" in names and self.model is not None and not isinstance(self.model, str):
            raise ValueError(f"model must be a model name or a path to NAME.safetensors (or None for the default), "
                             f"got {type(self.model).__name__}")
        if "seed" in names:
            check_seed(self.seed)
        if "device" in names:
            from .device import DEVICE_CHOICES

            if not isinstance(self.device, str) or self.device.lower().split(":")[0] not in DEVICE_CHOICES:
                raise ValueError(f"device {self.device!r} is not one of {DEVICE_CHOICES}")
        if "scheduler" in names:
            from .schedulers import SCHEDULERS, kind_of

            if not isinstance(self.scheduler, str):
                raise ValueError(f"unknown scheduler {self.scheduler!r}; choose one of {sorted(SCHEDULERS)}")
            kind_of(self.scheduler)  # names the choices
        if "axis" in names:
            check_axis(self.axis, 3)
        if "indices" in names and self.indices is not None:
            items = self.indices if isinstance(self.indices, tuple) else ()
            if not items or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in items):
                raise ValueError(f"slice indices must be whole numbers >= 0 (at least one), got {self.indices!r}")
        if "preprocess" in names:
            from .preprocess.pipeline import PreprocessSettings

            p = self.preprocess
            if not (p is None or p in PREPROCESS_WORDS or isinstance(p, PreprocessSettings)):
                raise ValueError(f"preprocess must be None, 'auto', 'none' or a PreprocessSettings, got {p!r}")
        if "force" in names and not isinstance(self.force, bool):
            raise ValueError(f"force must be True or False, got {self.force!r}")
