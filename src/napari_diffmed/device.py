"""Pick the compute device and seed generators."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def available_devices() -> list[str]:
    """Device names usable here, best first."""
    import torch

    names = []
    if torch.cuda.is_available():
        names.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names + ["cpu"]


def select_device(preference: "str | torch.device | None" = "auto") -> "torch.device":
    """CUDA, then MPS, then CPU for ``"auto"``; an explicit choice must be available."""
    import torch

    if isinstance(preference, torch.device):
        return preference
    pref = (preference or "auto").lower()
    base = pref.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"device {preference!r} is not one of {DEVICE_CHOICES}")
    available = available_devices()
    if base == "auto":
        return torch.device(available[0])
    if base not in available:
        raise ValueError(f"device {preference!r} is not available here; available: {available}")
    return torch.device(pref)


def resolve_seed(seed: int | None) -> int:
    """``seed`` as an int, or a fresh one from the OS's entropy when None (so a run can record it).

    Nothing global is touched: torch's and numpy's default generators keep their state.
    """
    import numpy as np

    return int(np.random.SeedSequence().entropy % 2**31) if seed is None else int(seed)


def make_generator(seed: int | None, device: "torch.device") -> "torch.Generator":
    """A torch generator on ``device`` (CPU for MPS, which lacks device generators), seeded with
    :func:`resolve_seed` of ``seed``."""
    import torch

    gen_device = device if device.type == "cuda" else torch.device("cpu")
    gen = torch.Generator(device=gen_device)
    gen.manual_seed(resolve_seed(seed))
    return gen


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads and return the number: ``threads``, else ``$OMP_NUM_THREADS`` when
    set (the user's choice), else the cores this process may use that other work is not already
    keeping busy (by the 1-minute load average; at least 1). On a quiet machine that is every core;
    on a busy one a second thread made each forward 3-30x slower (docs/performance.md). Processes
    that share the cores (Dask workers) pass their own share."""
    import os

    import torch

    if threads is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
        threads = int(env) if env.isdigit() and int(env) > 0 else max(1, usable - busy)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
