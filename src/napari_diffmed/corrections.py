"""Voxels a person fixed, held in every member of a segmentation ensemble ("Propose again").

``fixed`` is an integer array of the image's shape: -1 where the model is free, 0 or 1 where a person
set the label. On the model grid a pixel is known when most of the input voxels feeding it are fixed;
its value is the majority of their labels, on the mask scale [-1, 1]. The ensemble then runs the
inpainting constraint of the one loop (:func:`~napari_diffmed.inpainting.known_region`) in label
space: known pixels are re-noised to the current step and pasted after every step, so the free part
of each member is sampled around them. On the input grid the fixed voxels are pasted exactly into
every member before the maps are computed: they carry no uncertainty.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def check_fixed(fixed: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``fixed`` as int8, or ValueError naming the shape or the values that are wrong."""
    arr = np.asarray(fixed)
    if arr.shape != tuple(shape):
        raise ValueError(f"fixed labels of shape {arr.shape} do not match the image's shape {tuple(shape)}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"fixed labels must be integers (-1 free, 0 or 1 fixed), got dtype {arr.dtype}")
    odd = np.setdiff1d(np.unique(arr), [-1, 0, 1])
    if odd.size:
        raise ValueError(f"fixed labels must be -1 (free), 0 or 1, got values {odd[:5].tolist()}")
    return arr.astype(np.int8)


@dataclass(frozen=True)
class Held:
    """Fixed voxels on the model grid (``known`` on [-1, 1], ``free`` 1 or 0, ``(N, *size)``) and on the
    chosen slices of the input grid (``on_input``: slicing axis first for 2D models)."""

    known: np.ndarray
    free: np.ndarray
    on_input: np.ndarray

    @classmethod
    def from_fixed(cls, fixed: np.ndarray, prepared) -> "Held":
        """Map ``fixed`` (checked, the image's shape) onto ``prepared``'s model grid."""
        vol = fixed.reshape(prepared.shape)
        sel = vol[None] if prepared.axis is None else np.moveaxis(vol, prepared.axis, 0)[prepared.indices]
        share = prepared.grid.to_model((sel >= 0).astype(np.float32), order=1, cval=0.0)
        ones = prepared.grid.to_model((sel == 1).astype(np.float32), order=1, cval=0.0)
        known_px = share > 0.5
        known = np.where(ones > share / 2, 1.0, -1.0).astype(np.float32)
        shape = prepared.data.shape
        return cls(known.reshape(shape), (~known_px).astype(np.float32).reshape(shape),
                   sel[0] if prepared.axis is None else sel)

    def constraint(self, rows: np.ndarray, scheduler, generator, device):
        """The loop's constraint for the network inputs of model slices ``rows`` (None when none is known)."""
        import torch

        from .inpainting import known_region

        def randn(shape):
            return torch.randn(shape, generator=generator, device=generator.device).to(device)

        if self.free[rows].all():
            return None
        known, free = (torch.from_numpy(a[rows]).unsqueeze(1).to(device) for a in (self.known, self.free))
        return known_region(scheduler, known, free, randn)

    def paste(self, slab: np.ndarray) -> np.ndarray:
        """Member probabilities ``(M, *on_input.shape)`` with the fixed voxels set to their labels."""
        hold = self.on_input >= 0
        slab[:, hold] = self.on_input[hold]
        return slab
