"""Multi-octave simplex noise in torch: batched, 2D and 3D, seeded, on any device.

AnoDDPM (Wyatt et al. 2022) noises scans with simplex noise instead of white
Gaussian noise: its energy sits at low spatial frequencies, so partial noising
hides whole lesions rather than only fine texture. This is Gustavson's simplex
noise written with tensor operations: every sample of a batch gets its own random
gradient table and, per octave, its own random offset, all drawn from one
``torch.Generator``. The octaves are summed with weights ``persistence**k`` at
periods ``period / 2**k`` pixels, and each sample is standardised to zero mean
and unit variance so that it can stand in for the unit Gaussian noise that a
diffusion schedule expects.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    import torch

TABLE = 256  # gradient table size per sample (coordinates wrap every TABLE lattice cells)


def _uniform(shape: Sequence[int], generator, device) -> "torch.Tensor":
    """Uniform [0, 1) numbers drawn on the generator's device, then moved to ``device``."""
    import torch

    where = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=where).to(device)


def _lattice_hash(perm: "torch.Tensor", cells: "torch.Tensor") -> "torch.Tensor":
    """Per-sample hash of integer lattice points ``cells`` (B, P, D) -> table indices (B, P)."""
    import torch

    h = torch.zeros(cells.shape[:2], dtype=torch.long, device=cells.device)
    for d in range(cells.shape[-1] - 1, -1, -1):
        h = torch.gather(perm, 1, (cells[..., d] + h) % TABLE)
    return h


def _simplex(points: "torch.Tensor", perm: "torch.Tensor", grads: "torch.Tensor") -> "torch.Tensor":
    """Simplex noise at ``points`` (B, P, D) with per-sample tables; about [-1, 1]."""
    import torch

    dims = points.shape[-1]
    skew = (math.sqrt(dims + 1) - 1) / dims
    unskew = (1 - 1 / math.sqrt(dims + 1)) / dims
    base = torch.floor(points + points.sum(-1, keepdim=True) * skew)
    local = points - (base - base.sum(-1, keepdim=True) * unskew)
    # The simplex holding the point: step along axes in decreasing order of the local coordinate.
    order = torch.argsort(local, dim=-1, descending=True)
    radius2 = 0.5 if dims == 2 else 0.6
    total = torch.zeros(points.shape[:2], dtype=points.dtype, device=points.device)
    corner = torch.zeros_like(base)
    for k in range(dims + 1):
        if k > 0:
            corner = corner.scatter_add(-1, order[..., k - 1 : k], torch.ones_like(local[..., :1]))
        offset = local - corner + k * unskew
        g = grads[torch.arange(len(perm), device=perm.device)[:, None], _lattice_hash(perm, (base + corner).long())]
        t = (radius2 - (offset**2).sum(-1)).clamp(min=0)
        total = total + t**4 * (g * offset).sum(-1)
    return total * (70.0 if dims == 2 else 32.0)


def simplex_noise(
    shape: Sequence[int], spatial_dims: int = 2, *, octaves: int = 6, persistence: float = 0.8,
    period: float = 16.0, generator: "torch.Generator | None" = None, device=None, dtype=None,
) -> "torch.Tensor":
    """Standardised multi-octave simplex noise of ``shape``; its last ``spatial_dims`` (2 or 3) axes are spatial.

    Every leading index (batch, channel) is an independent field with zero mean
    and unit variance over its pixels. ``period`` is the wavelength of the first
    octave in pixels; octave ``k`` has period ``period / 2**k`` and weight
    ``persistence**k``. The same generator state gives the same noise.
    """
    import torch

    shape = tuple(int(s) for s in shape)
    if spatial_dims not in (2, 3) or len(shape) < spatial_dims or min(shape, default=0) < 1:
        raise ValueError(f"need spatial_dims 2 or 3 and a shape ending in that many axes, got {spatial_dims} and {shape}")
    if not isinstance(octaves, int) or isinstance(octaves, bool) or not 1 <= octaves <= 12:
        raise ValueError(f"octaves must be a whole number from 1 to 12, got {octaves!r}")
    if not 0 < float(persistence) <= 1:
        raise ValueError(f"persistence must lie in (0, 1], got {persistence!r}")
    if not float(period) > 0:
        raise ValueError(f"period must be a positive number of pixels, got {period!r}")
    device = torch.device(device) if device is not None else (generator.device if generator is not None else "cpu")
    spatial = shape[len(shape) - spatial_dims:]
    fields = math.prod(shape[: len(shape) - spatial_dims])
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in spatial]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, spatial_dims)
    perm = _uniform((fields, TABLE), generator, device).argsort(dim=1)
    angle = 2 * math.pi * _uniform((fields, TABLE), generator, device)
    if spatial_dims == 2:
        grads = torch.stack([angle.cos(), angle.sin()], -1)
    else:  # directions uniform on the sphere
        z = 2 * _uniform((fields, TABLE), generator, device) - 1
        rho = (1 - z**2).clamp(min=0).sqrt()
        grads = torch.stack([rho * angle.cos(), rho * angle.sin(), z], -1)
    out = torch.zeros((fields, grid.shape[1]), dtype=torch.float32, device=device)
    for k in range(octaves):
        shift = _uniform((fields, 1, spatial_dims), generator, device) * TABLE
        out += float(persistence) ** k * _simplex(grid * (2.0**k / float(period)) + shift, perm, grads)
    out = out - out.mean(dim=1, keepdim=True)
    out = out / out.std(dim=1, keepdim=True).clamp(min=1e-12)
    return out.reshape(shape).to(dtype or torch.float32)
