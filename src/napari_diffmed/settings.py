"""One settings contract for every task: a frozen dataclass per task, checked once, when it is made.

Every front end (the functions, the command line, Dask, the server, the widgets) builds one of these and
hands it to the task: ``iter_<task>(image, spacing, model=..., settings=..., **overrides)``, where
``overrides`` are fields of the task's settings put in place with :meth:`TaskSettings.replace` (and checked
the same way). A bad value raises one ``ValueError`` that names the field. Settings travel as JSON
(:meth:`TaskSettings.to_json` / :meth:`TaskSettings.from_json` round-trip exactly) and pickle, so a Dask
task or a server request carries the object itself, not a re-parsed list of options.

What depends on a model or a scan (a class the card lacks, a slice past the volume's end, a scheduler the
model was not trained for) is checked by the task when it has both.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Any, ClassVar

from .contract import TaskSettings
from .validation import finite, whole

MAX_SAMPLES = 256
MAX_GUIDANCE = 20.0
MAX_MEMBERS = 64
RULES = ("majority", "mean")
METHODS = ("gaussian", "simplex", "ddim")
COMPARES = ("unguided", "scan")
ANOMALY_LIMITS = {"level": (1, 999), "depth": (1, 999), "guidance": (0.0, 20.0), "reconstructions": (1, 32),
                  "steps": (1, 1000), "smoothing": (0.0, 50.0), "batch_size": (1, 4096)}


@dataclass(frozen=True)
class SynthesisSettings(TaskSettings):
    """One synthesis run. The defaults take about a minute on 2 CPU cores with the shipped 2D model.

    ``model`` None is the shipped 2D image model; ``class_name`` None is the
    model's first class ("healthy" for the shipped model) on a conditional model
    (sample unconditionally with ``guidance=0``); unconditional models ignore
    ``class_name`` None and ``guidance``. ``seed`` None draws one and records it. ``eta`` 1
    (stochastic DDIM) is the default: the shipped 2D model's deterministic (eta 0) trajectories
    keep visible noise, the fresh noise of each stochastic step corrects them.
    """

    task: ClassVar[str] = "synthesis"

    model: str | None = None
    n: int = 12
    steps: int = 50
    scheduler: str = "ddim"
    seed: int | None = 0
    class_name: str | int | None = None
    guidance: float = 2.0
    device: str = "auto"
    eta: float = 1.0

    def check(self) -> None:
        super().check()
        n, guidance, eta = self.n, self.guidance, self.eta
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or not 1 <= n <= MAX_SAMPLES:
            raise ValueError(f"number of samples must be a whole number from 1 to {MAX_SAMPLES}, got {n!r}")
        if (isinstance(guidance, bool) or not isinstance(guidance, numbers.Real) or not math.isfinite(guidance)
                or not 0 <= guidance <= MAX_GUIDANCE):
            raise ValueError(f"guidance scale must be a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
        if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:
            raise ValueError(f"eta (DDIM stochasticity) must be from 0 to 1, got {eta!r}")
        whole("steps", self.steps, 1, 1000)
        _class_name(self.class_name)


@dataclass(frozen=True)
class EnsembleSettings(TaskSettings):
    """One ensemble run. Eight members with 10 DDIM steps take about a minute on 2 CPU cores for a
    12-slice slab with the shipped model (96 inputs x 10 steps). ``chunk`` counts network inputs
    (members x slices) per call: 16 used a CPU core best (59 s of CPU for that slab, against 67 s
    with 32 and 88 s with 96). ``max_bytes`` bounds the arrays of the result before any is allocated.
    ``rule``/``threshold`` make the consensus labels (:func:`~napari_diffmed.ensemble.fuse`).

    ``preprocess`` (every scan task): "auto" runs the model in its template's space (N4, registration,
    brain extraction where a skull is found, intensity matching) when its card names a template, as the
    command line and the widgets do; "none" or None runs it on the scan as it is; a
    :class:`~napari_diffmed.preprocess.PreprocessSettings` chooses the stages. ``force`` runs a scan the
    domain check refuses."""

    task: ClassVar[str] = "segmentation"

    model: str | None = None
    members: int = 8
    steps: int = 10
    scheduler: str = "ddim"
    seed: int | None = 0
    chunk: int = 16
    max_bytes: int = 4 * 2**30
    rule: str = "mean"
    threshold: float = 0.5
    axis: int = 0
    indices: tuple[int, ...] | None = None
    device: str = "auto"
    preprocess: Any = "auto"
    force: bool = False

    def check(self) -> None:
        super().check()
        whole("members", self.members, 1, MAX_MEMBERS)
        whole("steps", self.steps, 1, 1000)
        whole("chunk", self.chunk, 1, 65536)
        whole("max_bytes", self.max_bytes, 1, 2**62)
        if self.rule not in RULES:
            raise ValueError(f"unknown fusion rule {self.rule!r}; choose one of {list(RULES)}")
        finite("threshold", self.threshold, 0.0, 1.0)


@dataclass(frozen=True)
class RepaintSchedule:
    """The RePaint schedule: DDIM ``steps``, jumps of ``jump_length`` steps, each stretch run ``resamplings`` times."""

    steps: int
    jump_length: int
    resamplings: int
    eta: float = 1.0


# Fast: about a minute for a 12-slice slab with 3 proposals on 2 CPU cores (shipped 2D model).
MODES = {"fast": RepaintSchedule(20, 5, 2), "quality": RepaintSchedule(50, 5, 4)}


def settings_for(mode: str = "fast", steps: int | None = None, jump_length: int | None = None,
                 resamplings: int | None = None) -> RepaintSchedule:
    """A mode's preset with any explicitly given numbers in place of its own; checked."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {sorted(MODES)}")
    given = {k: v for k, v in dict(steps=steps, jump_length=jump_length, resamplings=resamplings).items()
             if v is not None}
    s = dataclasses.replace(MODES[mode], **given)
    for key in ("steps", "jump_length", "resamplings"):
        value = getattr(s, key)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{key} must be a whole number >= 1, got {value!r}")
    if not 2 <= s.steps <= 1000:
        raise ValueError(f"steps must be from 2 to 1000, got {s.steps}")
    if s.resamplings > 1 and s.jump_length >= s.steps:
        raise ValueError(f"jump_length must be from 1 to steps - 1 = {s.steps - 1}, got {s.jump_length}")
    return s


@dataclass(frozen=True)
class InpaintSettings(TaskSettings):
    """One RePaint run. ``mode`` picks a preset schedule (:data:`~napari_diffmed.inpainting.MODES`); ``steps``,
    ``jump_length`` and ``resamplings`` (None: the mode's) override it; :attr:`schedule` is the result.
    ``dilate`` widens the region the model regenerates on its grid (the final paste stays exact)."""

    task: ClassVar[str] = "inpainting"

    model: str | None = "mni_t1_axial_64"
    class_name: str | int | None = "healthy"
    mode: str = "fast"
    steps: int | None = None
    jump_length: int | None = None
    resamplings: int | None = None
    eta: float = 1.0
    proposals: int = 3
    seed: int | None = 0
    axis: int = 0
    indices: tuple[int, ...] | None = None
    device: str = "auto"
    batch_size: int = 48
    dilate: int = 1
    preprocess: Any = "auto"
    force: bool = False

    @property
    def schedule(self):
        """The RePaint schedule (:class:`~napari_diffmed.inpainting.RepaintSchedule`) these settings give."""
        return dataclasses.replace(settings_for(self.mode, self.steps, self.jump_length, self.resamplings),
                                   eta=float(self.eta))

    def check(self) -> None:
        super().check()
        self.schedule  # noqa: B018 - checks mode, steps, jump_length and resamplings together
        finite("eta", self.eta, 0.0, 1.0)
        whole("proposals", self.proposals, 1, 64)
        whole("batch_size", self.batch_size, 1, 4096)
        whole("dilate", self.dilate, 0, 8)
        _class_name(self.class_name)


@dataclass(frozen=True)
class AnomalySettings(TaskSettings):
    """One anomaly run. The defaults (shared by the CLI and the widget) take about a minute on
    2 CPU cores for a 12-slice slab with the shipped 2D model.

    ``level`` (gaussian, simplex) and ``depth`` (ddim) are timesteps out of the card's 1000;
    ``steps`` is the number of DDIM steps over the whole schedule, so a run takes about
    ``steps * level / 1000`` network calls (twice that for ddim, and another ``steps * level / 1000``
    to compare with the unguided decoding); ``compare`` is what the reconstruction is compared
    with and ``negative`` the class the guidance contrasts with ("auto": ``lesion`` if the card has
    it, "none": the null class, or a class name; see :mod:`napari_diffmed.anomaly`); ``smoothing`` is
    the heatmap's Gaussian sigma in mm; ``batch_size`` counts model inputs per network call.
    """

    task: ClassVar[str] = "anomaly"

    model: str | None = None
    method: str = "ddim"
    level: int = 300
    depth: int = 300
    guidance: float = 5.0
    compare: str = "unguided"
    negative: str = "auto"
    reconstructions: int = 1
    steps: int = 50
    smoothing: float = 3.0
    seed: int | None = 0
    device: str = "auto"
    batch_size: int = 32
    axis: int = 0
    indices: tuple[int, ...] | None = None
    preprocess: Any = "auto"
    force: bool = False

    def check(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {list(METHODS)}")
        if self.compare not in COMPARES:
            raise ValueError(f"unknown compare {self.compare!r}; choose one of {list(COMPARES)}")
        if not isinstance(self.negative, str):
            raise ValueError(f"negative must be 'auto', 'none' or a class name, got {self.negative!r}")
        for name, (low, high) in ANOMALY_LIMITS.items():
            value = getattr(self, name)
            integral = isinstance(low, int)
            ok = isinstance(value, numbers.Integral) if integral else isinstance(value, numbers.Real)
            if isinstance(value, bool) or not ok or not math.isfinite(value) or not low <= value <= high:
                kind = "a whole number" if integral else "a number"
                raise ValueError(f"{name} must be {kind} from {low} to {high}, got {value!r}")
        super().check()

    @property
    def eta(self) -> float:
        return 1.0 if self.method == "ddim" and self.reconstructions > 1 else 0.0

    def paired(self, card) -> bool:
        """Whether the heatmap compares with an unguided decoding (there must be a pull to contrast)."""
        return self.compare == "unguided" and card.conditional and self.guidance != 0


def _class_name(value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (str, numbers.Integral))):
        raise ValueError(f"class_name must be a class name, a class index or None, got {value!r}")


SETTINGS: dict[str, type[TaskSettings]] = {cls.task: cls for cls in (
    SynthesisSettings, EnsembleSettings, InpaintSettings, AnomalySettings)}


def settings_class(task: str) -> type[TaskSettings]:
    """The settings class of ``task`` ("synthesis", "segmentation", "inpainting" or "anomaly")."""
    try:
        return SETTINGS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; choose one of {sorted(SETTINGS)}") from None
