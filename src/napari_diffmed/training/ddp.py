"""Training on several processes (GPUs, or CPU processes with gloo) with DistributedDataParallel.

Launched by torchrun, which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous::

    torchrun --standalone --nproc-per-node 4 -m napari_diffmed.cli train --data scans/ --name mine --out models/

``--batch-size`` stays the global batch. Every rank draws the same global batch (same seed) and keeps
its own rows (:class:`RankShard`), and draws the same global noise, timesteps and condition dropout
and keeps its rows (:func:`rows`), so that N ranks see exactly the data one process would: DDP's
averaged gradient is the global batch's, and the loss curve matches a single process up to
floating-point reduction order. Preparing the whole global batch on every rank repeats the
augmentation, which is cheap next to the network. Rank 0 alone logs, validates and writes the
checkpoint, its card and the resume state.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "Ranks":
        """From torchrun's environment variables."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as err:
            raise ValueError(f"WORLD_SIZE, RANK and LOCAL_RANK must be whole numbers: {err}") from None
        if not 0 <= rank < world:
            raise ValueError(f"RANK {rank} must lie in 0..{world - 1} (WORLD_SIZE {world})")
        return cls(rank, world, local)


def is_main() -> bool:
    """True unless this is a torchrun process of rank > 0 (those must not log or write files)."""
    return Ranks.from_env().main


def start(ranks: Ranks, device: "torch.device") -> "torch.device":
    """Join the process group (NCCL on CUDA, gloo on CPU); the device of this rank."""
    import torch
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"training on several processes needs CUDA or the CPU, not {device.type!r}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=ranks.rank,
                                world_size=ranks.world)
    return device


def stop() -> None:
    """Wait for every rank, then leave the process group."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def mean_over_ranks(value: float, ranks: Ranks) -> float:
    """``value`` averaged over the ranks (each rank's loss of its rows -> the global batch's loss)."""
    if ranks.world == 1:
        return value
    import torch
    import torch.distributed as dist

    backend = dist.get_backend()
    tensor = torch.tensor([value], dtype=torch.float64, device="cuda" if backend == "nccl" else "cpu")
    dist.all_reduce(tensor)
    return float(tensor.item()) / ranks.world


def rows(tensor: "torch.Tensor", ranks: Ranks) -> "torch.Tensor":
    """This rank's equal share of a tensor drawn for the global batch (first dimension)."""
    if ranks.world == 1:
        return tensor
    n = tensor.shape[0] // ranks.world
    return tensor[ranks.rank * n:(ranks.rank + 1) * n]


class RankShard:
    """Batches of the global size cut to this rank's rows; keeps the source's ``rng`` for resume."""

    def __init__(self, batches: Iterator, ranks: Ranks, global_batch: int) -> None:
        if global_batch % ranks.world:
            raise ValueError(f"the batch size {global_batch} must be divisible by the {ranks.world} processes")
        self.batches, self.ranks = batches, ranks
        if hasattr(batches, "rng"):
            self.rng = batches.rng

    def __iter__(self):
        return self

    def __next__(self):
        x, extra = next(self.batches)
        return rows(x, self.ranks), rows(extra, self.ranks)
