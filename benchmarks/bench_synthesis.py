"""Synthesis speed by scheduler and step count, measured side by side in one process.

    python benchmarks/bench_synthesis.py                       # shipped 2D model, 4 samples
    python benchmarks/bench_synthesis.py --runs ddim:10,50 pndm:10,50 ddpm:1000 --n 12

Prints one row per (scheduler, steps): wall seconds, network calls (forward passes,
each on the whole batch: 2n with classifier-free guidance), and seconds per call.
On a shared machine take the best of a few repeats (``--repeat 3``).
"""

from __future__ import annotations

import argparse
import os
import time

from napari_diffmed.models import load
from napari_diffmed.synthesis import DEFAULTS, synthesize


def parse_runs(items: list[str]) -> list[tuple[str, int]]:
    runs = []
    for item in items:
        name, _, steps = item.partition(":")
        runs += [(name, int(s)) for s in steps.split(",")]
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--runs", nargs="+", default=["ddim:10,25,50,100", "pndm:10,25,50"])
    parser.add_argument("--guidance", type=float, default=DEFAULTS.guidance)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs per row")
    args = parser.parse_args()

    import torch

    loaded = load("synthesis", args.model, args.device)
    calls = []
    handle = loaded.network.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    kwargs = dict(n=args.n, seed=0, guidance=args.guidance, device=args.device)
    synthesize(loaded, steps=2, **kwargs)  # warm-up: allocator, kernels
    print(f"model {loaded.model_id}, n={args.n}, guidance {args.guidance:g}, device "
          f"{next(loaded.network.parameters()).device}, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}")
    print(f"| {'scheduler':<9} | {'steps':>5} | {'seconds':>8} | {'network calls':>13} | {'batch':>5} | "
          f"{'s/call':>7} |")
    print(f"|{'-' * 11}|{'-' * 7}|{'-' * 10}|{'-' * 15}|{'-' * 7}|{'-' * 9}|")
    for name, steps in parse_runs(args.runs):
        times = []
        for _ in range(args.repeat):
            calls.clear()
            start = time.perf_counter()
            synthesize(loaded, scheduler=name, steps=steps, **kwargs)
            times.append(time.perf_counter() - start)
        seconds = min(times)
        batch = max(calls) if calls else 0
        print(f"| {name:<9} | {steps:>5} | {seconds:>8.2f} | {len(calls):>13} | {batch:>5} | "
              f"{seconds / max(1, len(calls)):>7.3f} |", flush=True)
    handle.remove()


if __name__ == "__main__":
    main()
