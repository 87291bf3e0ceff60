"""The project's loop and tasks against MONAI's ``DiffusionInferer.sample`` and against the bare network.

    python benchmarks/bench_loop.py                 # a few minutes on 2 CPU cores
    python benchmarks/bench_loop.py --write         # also put the tables into docs/performance.md
    python benchmarks/bench_loop.py --threads 1     # torch threads (default: every usable core)

Everything runs in one process, repetitions interleaved, medians reported, on the device present:

1. synthesis against MONAI: the same network (the shipped v model as an epsilon predictor), DDIM
   scheduler, steps, seed and noise, batch 1 and 8, with and without guidance (class labels reach
   MONAI's inferer as ``context`` through a thin view). ``loop`` is :func:`sampling.iter_denoise`
   with ``clip=False`` and eta 0, the arithmetic MONAI does, and its output is checked against
   MONAI's; ``task`` is :func:`synthesize` (clipped x0, eta 0) on the same plain network, ``fast``
   the same on the fast path (:mod:`napari_diffmed.fastpath`).
2. bookkeeping per step with the network replaced by a constant (what the loop costs by itself).
3. every task at its defaults but on fewer slices/samples (said in the table): time, network calls,
   overhead ratio = task time / sum over its calls of one bare forward at that batch, time to the
   first preview, peak RSS (and CUDA peak allocated).
4. ensemble members and slices batched against one input per call.
5. the fast path: bare forwards plain/fast/bf16, and the ensemble's labels plain/fast/bf16.
6. torch threads: one against every core, bare forward.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Sequence

import numpy as np
from _benchutil import PeakMemory, cores, interleaved, machine, table, write_section

IMAGE, SEG = "mni_t1_axial_64_v", "mni_wm_seg_96"
TASKS = ("synthesis", "ensemble", "inpainting", "anomaly")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def forward_call(network, card, batch: int):
    """One forward of ``network`` at ``batch`` on fixed inputs, as a callable."""
    import torch

    dev = next(network.parameters()).device
    x = torch.randn((batch, card.network["in_channels"], *card.image_size), device=dev)
    ts = torch.full((batch,), 500, device=dev, dtype=torch.long)
    labels = torch.zeros(batch, dtype=torch.long, device=dev) if card.conditional else None

    def call():
        with torch.inference_mode():
            network(x, timesteps=ts, class_labels=labels)
        _sync()

    return call


def bare_forward(network, card, batch: int, repeats: int = 5, clock=time.perf_counter) -> float:
    """Median seconds of one forward at ``batch`` (after one warm-up), on ``clock``."""
    call, times = forward_call(network, card, batch), []
    for _ in range(repeats + 1):
        start = clock()
        call()
        times.append(clock() - start)
    return statistics.median(times[1:])


def monai_view(network):
    """The network as MONAI's inferer calls it: class labels arrive as ``context``."""
    import torch

    class View(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = network

        def forward(self, x, timesteps, context=None):
            labels = None if context is None else context.long()
            return self.net(x, timesteps=timesteps.expand(x.shape[0]), class_labels=labels)

    return View()


def versus_monai(plain, fast, steps: int, repeats: int) -> list[list]:
    import torch
    from monai.inferers import DiffusionInferer

    from napari_diffmed.device import make_generator
    from napari_diffmed.progress import drive as run
    from napari_diffmed.sampling import Conditioning, iter_denoise, make_scheduler
    from napari_diffmed.synthesis import synthesize

    card, dev = plain.card, next(plain.network.parameters()).device
    view, rows = monai_view(plain.network), []
    for n in (1, 8):
        for w in (None, 2.0):
            noise = torch.randn((n, 1, *card.image_size), generator=make_generator(0, dev), device=dev)
            labels = torch.zeros(n, dtype=torch.long, device=dev)
            cond = Conditioning(labels, card.null_class, 1.0 if w is None else w)

            def monai():
                inferer = DiffusionInferer(make_scheduler(card, "ddim", steps, dev))
                return inferer.sample(noise, view, verbose=False, conditioning=labels.float(), cfg=w,
                                      cfg_fill_value=float(card.null_class))

            def loop():
                return run(iter_denoise(plain.network, make_scheduler(card, "ddim", steps, dev), noise, cond=cond,
                                        eta=0.0, clip=False))

            def task(model):
                return lambda: synthesize(model, n=n, steps=steps, seed=0, guidance=1.0 if w is None else w,
                                          device=str(dev), eta=0.0).samples

            times, out = interleaved({"monai": monai, "loop": loop, "task": task(plain), "fast": task(fast)}, repeats)
            agree = float((out["monai"] - out["loop"]).abs().max())
            rows.append([n, "none" if w is None else f"{w:g}", f"{times['monai']:.2f}", f"{times['loop']:.2f}",
                         f"{times['task']:.2f}", f"{times['fast']:.2f}", f"{times['loop'] / times['monai']:.3f}",
                         f"{times['monai'] / times['fast']:.2f}", f"{agree:.1e}"])
            print(rows[-1], flush=True)
    return rows


def bookkeeping(card, steps: int, repeats: int, dev: str = "cpu") -> list[list]:
    """ms per step of the loop and of MONAI's sample with a network that costs nothing."""
    import torch
    from monai.inferers import DiffusionInferer

    from napari_diffmed.progress import drive as run
    from napari_diffmed.sampling import Conditioning, iter_denoise, make_scheduler

    rows = []
    for n, w, eta in ((1, None, 0.0), (8, 2.0, 0.0), (8, 2.0, 1.0)):
        noise = torch.randn((n, 1, *card.image_size), device=dev)
        const = {}

        def network(x, timesteps, class_labels=None, context=None):  # returns the same tensor every call
            if x.shape not in const:
                const[x.shape] = torch.randn(x.shape, device=x.device) * 0.5
            return const[x.shape]

        labels = torch.zeros(n, dtype=torch.long, device=dev)
        cond = Conditioning(labels, card.null_class, 1.0 if w is None else w)
        gen = torch.Generator(device=dev).manual_seed(0)

        def monai():
            DiffusionInferer(make_scheduler(card, "ddim", steps, dev)).sample(
                noise, network, verbose=False, conditioning=labels.float(), cfg=w, cfg_fill_value=2.0)

        def loop(clip):
            return lambda: run(iter_denoise(network, make_scheduler(card, "ddim", steps, dev), noise, cond=cond,
                                            eta=eta, clip=clip, generator=gen))

        runs = {"loop": loop(False), "loop+clip": loop(True)}
        if eta == 0.0:
            runs["monai"] = monai
        times, _ = interleaved(runs, repeats)
        ms = {k: 1000 * v / steps for k, v in times.items()}
        rows.append([n, "none" if w is None else f"{w:g}", f"{eta:g}", f"{ms['monai']:.2f}" if "monai" in ms else "-",
                     f"{ms['loop']:.2f}", f"{ms['loop+clip']:.2f}"])
        print(rows[-1], flush=True)
    return rows


def _first_preview(gen) -> float:
    """Seconds from starting an ``iter_`` task to its first event carrying a preview (then stopped)."""
    start = time.perf_counter()
    for event in gen:
        if event.preview is not None:
            gen.close()
            return time.perf_counter() - start
    return float("nan")


def tasks(image_model, seg_model, inpaint_model, scan, spacing, slices, repeats: int, dev: str,
          only: Sequence[str] = TASKS) -> list[list]:
    """Each task at its defaults on ``slices`` through its plain function (previews off where it allows):
    seconds, calls, overhead ratio on the wall clock and on this process's CPU time (robust on a shared
    machine; the bare forwards are timed right after each run), the share of the run's CPU time spent
    outside the network's forwards in that very run (hooks around each forward: no separate bare
    forward, so no drift between the two), first preview, peak memory."""
    from napari_diffmed.anomaly import anomaly_map, iter_anomaly_map
    from napari_diffmed.ensemble import iter_segment_ensemble, segment_ensemble
    from napari_diffmed.inpainting import inpaint, iter_inpaint
    from napari_diffmed.synthesis import iter_synthesize, synthesize

    mask = np.zeros(scan.shape, bool)
    mask[slices, 40:52, 40:52] = True
    n = len(slices)
    jobs = {
        "synthesis (n 4 of 12, 50 steps, guidance 2, eta 1)": (
            image_model, lambda: synthesize(image_model, n=4, seed=0),
            lambda: iter_synthesize(image_model, n=4, seed=0)),
        f"ensemble ({n} of 12 slices x 8 members, 10 steps, chunk 16)": (
            seg_model, lambda: segment_ensemble(scan, spacing, seg_model, indices=slices, preprocess="none"),
            lambda: iter_segment_ensemble(scan, spacing, seg_model, indices=slices)),
        f"inpainting (fast: 35 calls, {n} of 12 slices x 3 proposals)": (
            inpaint_model, lambda: inpaint(scan, mask, spacing, inpaint_model, preprocess="none"),
            lambda: iter_inpaint(scan, mask, spacing, inpaint_model)),
        f"anomaly (ddim, depth 300, 50 steps, guidance 5, {n} of 12 slices)": (
            inpaint_model, lambda: anomaly_map(scan, spacing, indices=slices, model=inpaint_model, preprocess="none"),
            lambda: iter_anomaly_map(scan, spacing, indices=slices, model=inpaint_model, preview=0.0)),
    }
    cpu_clock = time.process_time if dev == "cpu" else None
    rows = []
    for name, (model, job, iterate) in jobs.items():
        if name.split()[0] not in only:
            continue
        calls: list[int] = []
        inside = [0.0, 0.0]  # CPU seconds in the network's forwards, start of the current one

        def enter(m, args):
            calls.append(args[0].shape[0])
            inside[1] = time.process_time()

        def leave(m, args, out):
            inside[0] += time.process_time() - inside[1]

        seconds, wall_ratios, cpu_ratios, outside, previews, peaks = [], [], [], [], [], []
        for _ in range(repeats):
            calls.clear()
            inside[0] = 0.0
            hooks = [model.network.register_forward_pre_hook(enter), model.network.register_forward_hook(leave)]
            try:
                with PeakMemory() as mem:
                    start, start_cpu = time.perf_counter(), time.process_time()
                    job()
                    _sync()
                    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            finally:
                for hook in hooks:
                    hook.remove()
            made = list(calls)
            bare = {b: bare_forward(model.network, model.card, b, 3) for b in set(made)}
            seconds.append(wall)
            wall_ratios.append(wall / sum(bare[b] for b in made))
            if cpu_clock is not None:
                bare_cpu = {b: bare_forward(model.network, model.card, b, 3, cpu_clock) for b in set(made)}
                cpu_ratios.append(cpu / sum(bare_cpu[b] for b in made))
                outside.append(100 * (cpu - inside[0]) / cpu)
            peaks.append((mem.peak, mem.cuda))
            previews.append(_first_preview(iterate()))
        rows.append([name, f"{statistics.median(seconds):.2f}", len(made),
                     "/".join(str(b) for b in sorted(set(made))), f"{statistics.median(wall_ratios):.3f}",
                     f"{statistics.median(cpu_ratios):.3f}" if cpu_ratios else "-",
                     f"{statistics.median(outside):.1f}" if outside else "-",
                     f"{statistics.median(previews):.2f}", f"{max(p for p, _ in peaks):.0f}",
                     "-" if peaks[0][1] is None else f"{max(c for _, c in peaks):.0f}"])
        print(rows[-1], flush=True)
    return rows


def batched(seg_model, scan, spacing, repeats: int) -> list[list]:
    from napari_diffmed.ensemble import segment_ensemble

    runs = {f"chunk {c}": (lambda c=c: segment_ensemble(scan, spacing, seg_model, members=4, indices=[44, 46],
                                                        chunk=c, preprocess="none").members) for c in (8, 1)}
    times, out = interleaved(runs, repeats)
    same = bool(np.array_equal(out["chunk 8"] > 0.5, out["chunk 1"] > 0.5))
    return [["2 slices x 4 members, 10 steps", f"{times['chunk 8']:.2f}", f"{times['chunk 1']:.2f}",
             f"{times['chunk 1'] / times['chunk 8']:.2f}", "same seeds draw other noise" if not same else "identical"]]


def fast_path(plain_models, scan, spacing, repeats: int) -> tuple[list[list], list[list]]:
    """Bare forwards plain/fast/fast+bf16 per model; the ensemble's labels with each."""
    from napari_diffmed.ensemble import segment_ensemble
    from napari_diffmed.fastpath import FastOptions, accelerate, options_for

    rows = []
    variants = {}
    for plain in plain_models:
        dev = next(plain.network.parameters()).device
        fast = accelerate(plain, options_for(dev, "auto"))
        bf16 = accelerate(plain, FastOptions(fused_attention=True, channels_last=True, bf16=True))
        variants[plain.card.name] = (plain, fast, bf16)
        for b in (1, 8, 16):
            models = {"plain": plain, "fast": fast, "bf16": bf16}
            calls = {k: forward_call(m.network, m.card, b) for k, m in models.items()}
            for call in calls.values():  # warm-up
                call()
            t, _ = interleaved(calls, 7)
            rows.append([plain.card.name, b, f"{1000 * t['plain'] / b:.1f}", f"{1000 * t['fast'] / b:.1f}",
                         f"{1000 * t['bf16'] / b:.1f}", f"{t['plain'] / t['fast']:.2f}",
                         f"{t['plain'] / t['bf16']:.2f}",
                         f"{bf16.fast['bf16_difference']:.1e}"])
            print(rows[-1], flush=True)
    plain, fast, bf16 = variants[SEG]
    runs = {k: (lambda m=m: segment_ensemble(scan, spacing, m, indices=[45], preprocess="none"))
            for k, m in (("plain", plain), ("fast", fast), ("bf16", bf16))}
    times, out = interleaved(runs, repeats)
    ref = out["plain"].labels()
    seg_rows = [[k, f"{times[k]:.2f}", f"{times['plain'] / times[k]:.2f}",
                 f"{np.mean(out[k].labels() == ref):.5f}",
                 f"{float(np.abs(out[k].mean - out['plain'].mean).max()):.1e}"] for k in runs]
    return rows, seg_rows


def threads(model, repeats: int) -> list[list]:
    import torch

    rows = []
    before = torch.get_num_threads()
    for b in (1, 8):
        t = {}
        for _ in range(repeats):
            for n in sorted({1, cores()}):
                torch.set_num_threads(n)
                t.setdefault(n, []).append(bare_forward(model.network, model.card, b, repeats=3))
        med = {n: statistics.median(v) for n, v in t.items()}
        rows.append([b] + [f"{1000 * med[n]:.1f}" for n in sorted(med)] + [f"{med[1] / med[max(med)]:.2f}"])
    torch.set_num_threads(before)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: every usable core)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps of the MONAI comparison (default 20)")
    parser.add_argument("--slices", type=int, default=2, help="slices for the task rows (defaults: 12)")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS, help="the task rows to run")
    parser.add_argument("--write", action="store_true", help="put the tables into docs/performance.md")
    parser.add_argument("--skip", nargs="*", default=[], choices=("monai", "bookkeeping", "tasks", "batched",
                                                                  "fast", "threads"))
    args = parser.parse_args()

    import torch

    from napari_diffmed.device import configure_threads, select_device
    from napari_diffmed.models import get_model, load_model, resolve
    from napari_diffmed.training.templates import load_mni152

    configure_threads(args.threads or cores())
    dev = str(select_device(args.device))
    torch.manual_seed(0)
    plain = {name: load_model(resolve(name), dev) for name in (IMAGE, SEG, "mni_t1_axial_64")}
    fast = {name: get_model(name, dev) for name in plain}
    t = load_mni152(resolution=2)
    scan, spacing = t.t1, t.spacing
    slices = list(range(45 - args.slices // 2, 45 - args.slices // 2 + args.slices))
    where = machine()
    print(where, flush=True)
    kind = dev.split(":")[0]
    command = f"`python benchmarks/bench_loop.py {' '.join(sys.argv[1:])}`".replace(" `", "`")

    def emit(part: str, *blocks: str) -> None:
        """Print a part and (with --write) put it into docs/performance.md under its own marker, so a
        long run keeps what it measured and a rerun of one part (``--skip`` the others) replaces only it."""
        text = "\n\n".join([*blocks, f"{command} on: {where}; load average at the end "
                             f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}. Fast path on {kind}: "
                             f"{fast[SEG].fast and fast[SEG].fast['switches']}."])
        print(text, flush=True)
        if args.write:
            write_section(f"bench_loop {kind} {part}", text)

    if "monai" not in args.skip:
        rows = versus_monai(plain[IMAGE], fast[IMAGE], args.steps, args.repeats)
        emit("monai", f"### Synthesis against MONAI's `DiffusionInferer.sample` ({IMAGE}, DDIM {args.steps} steps, "
                      "eta 0, seconds, median of interleaved runs)",
             table(["batch", "guidance", "MONAI", "loop", "task", "task, fast path", "loop / MONAI", "MONAI / fast",
                    "max abs loop - MONAI"], rows))
    if "bookkeeping" not in args.skip:
        rows = bookkeeping(plain[IMAGE].card, 50, args.repeats, dev)
        emit("bookkeeping", "### Bookkeeping per step, network replaced by a constant (ms per step, DDIM 50)",
             table(["batch", "guidance", "eta", "MONAI", "loop", "loop with clipping"], rows))
    if "tasks" not in args.skip:
        rows = tasks(fast[IMAGE], fast[SEG], fast["mni_t1_axial_64"], scan, spacing, slices, args.repeats, dev,
                     args.tasks)
        emit("tasks", "### Tasks at their defaults on fewer inputs (MNI152 2 mm, fast path, median seconds)",
             table(["task", "seconds", "network calls", "batch", "overhead ratio (wall)", "overhead ratio (CPU time)",
                    "CPU time outside the network %", "first preview s", "peak RSS MiB", "CUDA peak MiB"], rows))
    if "batched" not in args.skip:
        rows = batched(fast[SEG], scan, spacing, args.repeats)
        emit("batched", "### Ensemble members and slices batched (chunk 8) against one input per call (chunk 1)",
             table(["run", "batched s", "one at a time s", "speed-up", "members"], rows))
    if "fast" not in args.skip:
        rows, seg_rows = fast_path([plain[IMAGE], plain[SEG]], scan, spacing, args.repeats)
        emit("fast", "### Fast path: bare forward, ms per sample",
             table(["model", "batch", "plain", "fast", "fast + bf16", "fast speed-up", "bf16 speed-up",
                    "bf16 relative difference"], rows),
             "### Ensemble (1 slice x 8 members, 10 steps) with each forward",
             table(["forward", "seconds", "speed-up", "labels equal to plain", "max abs difference of mean"], seg_rows))
    if "threads" not in args.skip and kind == "cpu":
        rows = threads(fast[IMAGE], args.repeats)
        emit("threads", f"### Torch threads in a lone run ({IMAGE} fast path, ms per forward)",
             table(["batch", *(f"{n} thread{'s' if n > 1 else ''}" for n in sorted({1, cores()})),
                    "speed-up of all cores"], rows))


if __name__ == "__main__":
    main()
