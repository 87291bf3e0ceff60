"""A simulated annotator works through a labeling session on held-out data with the shipped model.

Cases: the axial slabs of the 2 mm MNI152 template that ``training.templates.held_out_slices`` keeps
out of training (6 slices each), each seen as it would come from another scanner (``VARIANTS``: noise,
a gamma change of contrast, a smooth bias field), saved as NIfTI and opened by a
:class:`~napari_diffmed.labeling.Session`. The reference is the white-matter probability map > 0.5.
The annotator, on each case, corrects the ``k`` most uncertain slices to the reference and accepts.

1. Order: pooled Dice over all cases (each case: its proposal, with the slices corrected so far set to
   the reference) against the number of corrected slices, uncertainty-first (cases by score, slices by
   the ensemble's ranking, or by their summed mutual information) against no guidance (cases and
   slices in random order, 50 draws averaged) and against the folder's order, top slices first.
2. Resampling around corrections: on each of the ``k`` most uncertain slices the annotator paints one
   square (``--box`` voxels) around the most uncertain spot to the reference; Dice of the voxels left
   uncorrected on those slices, the proposal with the corrections pasted against Propose again.
3. Fine-tuning: accept the cases of one slab with their reference labels (a person accepts a case
   once it is right), fine-tune from the shipped model on them, and compare the Dice of a held-out case
   of the other slab (none of whose variants is trained on) against the reference, before and after.
4. Throughput: seconds per case proposal in the background runner at this run's settings, and one
   case at the ensemble's defaults.

    python benchmarks/eval_labeling.py                     # the reduced configuration (~15 min, 1 core)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).parent))
from eval_segmentation import slabs  # noqa: E402

from napari_diffmed.ensemble import slice_ranking  # noqa: E402
from napari_diffmed.evaluation.segmentation import dice  # noqa: E402
from napari_diffmed.io import read_nifti, write_nifti  # noqa: E402
from napari_diffmed.labeling import Background, FinetuneSettings, Session, iter_finetune  # noqa: E402
from napari_diffmed.progress import drive  # noqa: E402

VARIANTS = {"clean": (1.0, 0.0, 0.0), "noisy": (1.0, 0.0, 0.1), "gamma+bias": (1.8, 0.2, 0.05),
            "low-gamma": (0.6, 0.0, 0.05)}  # (gamma, bias field strength, noise sd on [0, 1])


def perturb(t1: np.ndarray, gamma: float, bias: float, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.clip(t1 / np.percentile(t1, 99.5), 0, None) ** gamma
    field = ndimage.gaussian_filter(rng.standard_normal(t1.shape), 12)
    x = x * np.exp(bias * field / field.std())
    return (np.abs(x + rng.normal(0, noise, t1.shape)) * 1000).astype(np.float32)


def make_cases(folder: Path) -> dict[str, np.ndarray]:
    """Write the case scans; return each case's reference mask (napari order)."""
    from napari_diffmed.training.templates import load_mni152

    t = load_mni152(2)
    kw, refs = t.layer_kwargs, {}
    for s, slab in enumerate(slabs(2)):
        for v, (name, params) in enumerate(VARIANTS.items()):
            case = f"case{v}{s}_{name}"  # folder order interleaves variants and slabs
            image = perturb(t.t1, *params, seed=10 * s + v)[slab]
            translate = (kw["translate"][0] + slab[0] * kw["scale"][0], *kw["translate"][1:])
            write_nifti(folder / f"{case}.nii.gz", image, scale=kw["scale"], translate=translate)
            refs[case] = (t.wm[slab] > 0.5).astype(np.uint8)
    return refs


def order_curve(session: Session, refs: dict, k: int, cases: list[str], pick) -> np.ndarray:
    """Pooled Dice after each corrected slice: ``cases`` in that order, ``pick(case)`` slices of each."""
    labels = {c: session.load(c).labels > 0 for c in refs}
    ref_all = np.concatenate([refs[c].ravel() for c in refs])
    curve = [dice(np.concatenate([labels[c].ravel() for c in refs]), ref_all)]
    for c in cases:
        for i in pick(c):
            labels[c][i] = refs[c][i] > 0
            curve.append(dice(np.concatenate([labels[x].ravel() for x in refs]), ref_all))
    return np.array(curve)


def slice_agreement(session: Session, refs: dict, key: str) -> float:
    """Mean over cases of the Spearman correlation between a slice's errors and its summed ``key`` map."""
    from scipy.stats import spearmanr

    rhos = []
    for c in refs:
        data, slices = session.load(c), session.case(c).slices
        errors = [int(((data.labels[i] > 0) != (refs[c][i] > 0)).sum()) for i in slices]
        rhos.append(spearmanr(errors, [float(data.maps[key][i].sum()) for i in slices])[0])
    return float(np.nanmean(rhos))


def boxes(session: Session, case: str, ref: np.ndarray, k: int, box: int) -> np.ndarray:
    """The annotator's strokes: a ``box``-voxel square to the reference around each of the k most uncertain
    slices' most uncertain spot; returns the painted mask."""
    data = session.load(case)
    painted = np.zeros(ref.shape, bool)
    for i in session.case(case).ranking[:k]:
        smooth = ndimage.uniform_filter(data.maps["entropy"][i], box)
        y, x = np.unravel_index(np.argmax(smooth), smooth.shape)
        y0, x0 = max(0, y - box // 2), max(0, x - box // 2)
        painted[i, y0:y0 + box, x0:x0 + box] = True
    return painted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--k", type=int, default=2, help="slices corrected per case")
    parser.add_argument("--box", type=int, default=12, help="side of a painted square (voxels, 2 mm)")
    parser.add_argument("--finetune-steps", type=int, default=150)
    parser.add_argument("--held-out", default="case21_gamma+bias",
                        help="the case fine-tuning scores; no case of its slab (the digit after the variant's) "
                             "is trained on")
    parser.add_argument("--no-defaults-timing", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        scans, out = Path(tmp) / "scans", Path(tmp) / "out"
        refs = make_cases(scans)
        session = Session(scans, out, members=args.members, steps=args.steps, device="cpu")
        runner, seconds = Background(), []
        for case in session.to_propose():
            runner.submit("propose", case, lambda c=case: session.iter_propose(c))
        while len(seconds) < len(refs):
            event = runner.events.get()
            if event.kind == "failed":
                raise RuntimeError(event.value)
            if event.kind == "started":
                t0 = time.perf_counter()
            if event.kind == "done":
                seconds.append(time.perf_counter() - t0)
        runner.close()
        print(f"background proposals ({args.members} members, {args.steps} steps, 6 slices): "
              f"{np.mean(seconds):.1f} s per case (min {min(seconds):.1f}, max {max(seconds):.1f})")
        print("\n| case | score (mean entropy, bits) | proposal Dice |\n|---|---|---|")
        for c in session.order():
            print(f"| {c} | {session.case(c).score:.3f} | {dice(session.load(c).labels, refs[c]):.3f} |")

        rng = np.random.default_rng(0)  # without guidance: cases and slices in an arbitrary order, 50 draws
        slices = {c: session.case(c).slices for c in refs}
        blind = [order_curve(session, refs, args.k, list(rng.permutation(list(refs))),
                             lambda c: rng.permutation(slices[c])[:args.k]) for _ in range(50)]
        mi = {c: session.load(c).maps["mutual_information"] for c in refs}
        curves = {"uncertainty-first": order_curve(session, refs, args.k, session.order(),
                                                   lambda c: session.case(c).ranking[:args.k]),
                  "uncertainty-first, slices by MI": order_curve(session, refs, args.k, session.order(),
                                                                 lambda c: slice_ranking(mi[c])[:args.k]),
                  "random order (mean of 50)": np.mean(blind, axis=0),
                  "folder order, top slices first": order_curve(session, refs, args.k, list(refs),
                                                                lambda c: slices[c][::-1][:args.k])}
        print("\ncorrected slices | " + " | ".join(curves) + "\n---" + "|---" * len(curves))
        for n in range(len(curves["uncertainty-first"])):
            print(f"{n} | " + " | ".join(f"{curves[c][n]:.3f}" for c in curves))
        lo, hi = curves["uncertainty-first"][0], max(max(c) for c in curves.values())
        for frac in (0.25, 0.5, 0.75):
            target = lo + frac * (hi - lo)
            need = {c: next((n for n, d in enumerate(v) if d >= target), None) for c, v in curves.items()}
            print(f"slices to reach pooled Dice {target:.3f}: " + ", ".join(f"{c} {n}" for c, n in need.items()))

        print("within a case, Spearman correlation of a slice's errors with its summed uncertainty (mean of cases): "
              + ", ".join(f"{key} {slice_agreement(session, refs, key):+.2f}" for key in ("entropy",
                                                                                       "mutual_information")))

        print("\n| case | painted voxels | rest of those slices: pasted | Propose again | uncertainty before -> "
              "after | seconds |\n|---|---|---|---|---|---|")
        rest_before, rest_after = [], []
        for c in refs:
            data = session.load(c)
            painted = boxes(session, c, refs[c], args.k, args.box)
            labels = np.where(painted, refs[c], data.labels)
            session.save_edits(c, labels)
            rows = np.zeros(len(labels), bool)
            rows[session.case(c).ranking[:args.k]] = True
            rest = rows[:, None, None] & ~painted
            before = dice(labels, refs[c], rest)
            t0 = time.perf_counter()
            got = session.propose(c, again=True)
            after = dice(session.load(c).labels, refs[c], rest)
            rest_before.append(before)
            rest_after.append(after)
            print(f"| {c} | {int(session.load(c).corrected.sum())} | {before:.3f} | {after:.3f} | "
                  f"{got['before']:.3f} -> {got['score']:.3f} | {time.perf_counter() - t0:.1f} |")
        print(f"| mean | | {np.mean(rest_before):.3f} | {np.mean(rest_after):.3f} | | |")

        # fine-tuning: the held-out case's slab is left out whole (its other variants show the same anatomy);
        # a person accepts a case once it is right, so the accepted cases carry their reference labels
        train_cases = [c for c in refs if c[5] != args.held_out[5]]
        for c in train_cases + [args.held_out]:
            session.accept(c, refs[c])
        model_before = session.settings.model
        t0 = time.perf_counter()
        result = drive(iter_finetune(session, FinetuneSettings(steps=args.finetune_steps, held_out=args.held_out,
                                                                eval_slices=6)))
        from napari_diffmed.ensemble import segment_ensemble

        scan, meta = session.read_scan(args.held_out)
        ref_dice = {}
        for label, model in (("shipped", model_before), ("fine-tuned", result["weights"])):
            r = segment_ensemble(scan, meta["spacing"], model=model, members=args.members, steps=args.steps,
                                 device="cpu", indices=session.case(args.held_out).slices)
            ref_dice[label] = dice(r.labels(), refs[args.held_out])
        print(f"\nfine-tuning {args.finetune_steps} steps on the accepted cases {result['train_cases']} "
              f"({time.perf_counter() - t0:.0f} s with the evaluations): held-out {args.held_out} Dice against the "
              f"reference {ref_dice['shipped']:.3f} -> {ref_dice['fine-tuned']:.3f}; against its accepted labels "
              f"{result['dice_before']:.3f} -> {result['dice_after']:.3f}; loss first 10 "
              f"{np.mean(result['losses'][:10]):.4f}, last 10 {np.mean(result['losses'][-10:]):.4f}")
        session.close()
        if not args.no_defaults_timing:
            from napari_diffmed.ensemble import DEFAULTS, segment_ensemble

            scan = read_nifti(next(scans.glob("*.nii.gz")))[0]
            t0 = time.perf_counter()
            segment_ensemble(scan, (2.0, 2.0, 2.0), device="cpu")
            print(f"one case proposal at the defaults ({DEFAULTS.members} members, {DEFAULTS.steps} steps, "
                  f"{len(scan)} slices): {time.perf_counter() - t0:.1f} s")
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
