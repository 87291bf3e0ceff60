"""A simulated annotator works through a labeling session on held-out data with the shipped model.

Cases: the axial slabs of the 2 mm MNI152 template that ``training.templates.held_out_slices`` keeps
out of training (6 slices each), each seen as it would come from another scanner (``VARIANTS``: noise,
a gamma change of contrast, a smooth bias field), saved as NIfTI and opened by a
:class:`~napari_diffmed.labeling.Session`. The reference is the white-matter probability map > 0.5.
The annotator, on each case, corrects the ``k`` most uncertain slices to the reference and accepts.

1. Order: pooled Dice over all cases (each case: its proposal, with the slices corrected so far set to
   the reference) against the number of corrected slices: the session's order (cases by expected
   errors, slices by mutual information), the earlier scores (cases by mean entropy, slices by summed
   entropy), no guidance (cases and slices in random order, 200 draws averaged) and the folder's order,
   top slices first; and how well each uncertainty measure tracks the errors of slices and cases.
2. Resampling around corrections: on each of the ``k`` most uncertain slices the annotator paints one
   square (``--box`` voxels) around the most uncertain spot to the reference; Dice of the voxels left
   uncorrected on those slices (all of them, and those within ``--ring`` voxels of the square), the
   proposal with the corrections pasted against Propose again.
3. Fine-tuning: accept the cases of one slab with their reference labels (a person accepts a case
   once it is right), fine-tune from the shipped model on them (the session's defaults: replay of the
   model's training data, a low learning rate), and compare the Dice of every case of the other slab
   (none of whose variants is trained on) against the reference, before and after.
4. Throughput: seconds per case proposal in the background runner at this run's settings, and one
   case at the ensemble's defaults.

    OMP_NUM_THREADS=1 python benchmarks/eval_labeling.py --plots docs/images   # reduced settings, ~20 min
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).parent))
from eval_segmentation import slabs  # noqa: E402

from napari_diffmed.ensemble import slice_ranking  # noqa: E402
from napari_diffmed.evaluation.segmentation import dice  # noqa: E402
from napari_diffmed.io import read_nifti, write_nifti  # noqa: E402
from napari_diffmed.labeling import Background, FinetuneSettings, Session, iter_finetune  # noqa: E402
from napari_diffmed.labeling.cases import case_score, score_map  # noqa: E402
from napari_diffmed.progress import drive  # noqa: E402

VARIANTS = {"clean": (1.0, 0.0, 0.0), "noisy": (1.0, 0.0, 0.1), "gamma+bias": (1.8, 0.2, 0.05),
            "low-gamma": (0.6, 0.0, 0.05)}  # (gamma, bias field strength, noise sd on [0, 1])
MEASURES = ("entropy", "mutual_information", "expected_errors")


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


def order_curve(session: Session, refs: dict, cases: list[str], pick) -> np.ndarray:
    """Pooled Dice after each corrected slice: ``cases`` in that order, ``pick(case)`` slices of each."""
    labels = {c: session.load_labels(c).labels > 0 for c in refs}
    both = {c: [int((labels[c][i] & (refs[c][i] > 0)).sum()) for i in range(len(labels[c]))] for c in refs}
    said = {c: [int(labels[c][i].sum()) for i in range(len(labels[c]))] for c in refs}
    truth = sum(int((r > 0).sum()) for r in refs.values())

    def pooled() -> float:  # Dice of all cases at once
        return 2 * sum(map(sum, both.values())) / (sum(map(sum, said.values())) + truth)

    curve = [pooled()]
    for c in cases:
        for i in pick(c):
            both[c][i] = said[c][i] = int((refs[c][i] > 0).sum())
            curve.append(pooled())
    return np.array(curve)


def agreement(session: Session, refs: dict) -> dict[str, tuple[float, float]]:
    """Per measure: the Spearman correlation of a slice's errors with its summed measure (mean over cases),
    and of a case's errors with its score (the measure's :func:`case_score`)."""
    per_slice, errors, scores = {m: [] for m in MEASURES}, [], {m: [] for m in MEASURES}
    for c in refs:
        data, slices = session.load(c), session.case(c).slices
        wrong = [int(((data.labels[i] > 0) != (refs[c][i] > 0)).sum()) for i in slices]
        errors.append(sum(wrong))
        for m in MEASURES:
            value = score_map(data.maps, m)
            per_slice[m].append(spearmanr(wrong, [float(value[i].sum()) for i in slices])[0])
            scores[m].append(case_score(data.maps, m, len(slices)))
    return {m: (float(np.nanmean(per_slice[m])), float(spearmanr(errors, scores[m])[0])) for m in MEASURES}


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


def propose_all(session: Session, n: int) -> list[float]:
    """Propose every case in the background runner; seconds per case."""
    runner, seconds = Background(), []
    for case in session.to_propose():
        runner.submit("propose", case, lambda c=case: session.iter_propose(c))
    while len(seconds) < n:
        event = runner.events.get()
        if event.kind == "failed":
            raise RuntimeError(event.value)
        if event.kind == "started":
            t0 = time.perf_counter()
        if event.kind == "done":
            seconds.append(time.perf_counter() - t0)
    runner.close()
    return seconds


def order_section(session: Session, refs: dict, k: int, out: dict) -> None:
    rng = np.random.default_rng(0)  # without guidance: cases and slices in an arbitrary order
    slices = {c: session.case(c).slices for c in refs}
    blind = [order_curve(session, refs, list(rng.permutation(list(refs))), lambda c: rng.permutation(slices[c])[:k])
             for _ in range(200)]
    maps = {c: session.load(c).maps for c in refs}
    by_entropy = sorted(refs, key=lambda c: -case_score(maps[c], "entropy", len(slices[c])))
    curves = {"uncertainty-first (session)": order_curve(session, refs, session.order(),
                                                         lambda c: session.case(c).ranking[:k]),
              "mean entropy, slices by entropy": order_curve(session, refs, by_entropy,
                                                             lambda c: slice_ranking(maps[c]["entropy"])[:k]),
              "random order (mean of 200)": np.mean(blind, axis=0),
              "folder order, top slices first": order_curve(session, refs, list(refs),
                                                            lambda c: slices[c][::-1][:k])}
    print("\ncorrected slices | " + " | ".join(curves) + "\n---" + "|---" * len(curves))
    for n in range(len(curves["random order (mean of 200)"])):
        print(f"{n} | " + " | ".join(f"{curves[c][n]:.3f}" for c in curves))
    lo, hi = curves["random order (mean of 200)"][0], max(max(c) for c in curves.values())
    for frac in (0.25, 0.5, 0.75):
        target = lo + frac * (hi - lo)
        need = {c: next((n for n, d in enumerate(v) if d >= target), None) for c, v in curves.items()}
        print(f"slices to reach pooled Dice {target:.3f}: " + ", ".join(f"{c} {n}" for c, n in need.items()))
    print("area under each curve (mean pooled Dice): " + ", ".join(f"{c} {np.mean(v):.4f}" for c, v in curves.items()))
    agree = agreement(session, refs)
    print("Spearman correlation with the errors, slices within a case (mean of cases) / cases: "
          + ", ".join(f"{m} {a:+.2f} / {b:+.2f}" for m, (a, b) in agree.items()))
    out["order"] = {c: v.tolist() for c, v in curves.items()}
    out["agreement"] = agree


def again_section(session: Session, refs: dict, k: int, box: int, ring: int, out: dict) -> None:
    print(f"\n| case | corrected voxels | rest of those slices: pasted | Propose again | within {ring} voxels: pasted "
          "| Propose again | uncertainty before -> after | seconds |\n|---|---|---|---|---|---|---|---|")
    rows_out = []
    for c in refs:
        data = session.load(c)
        painted = boxes(session, c, refs[c], k, box)
        labels = np.where(painted, refs[c], data.labels)
        session.save_edits(c, labels)
        rows = np.zeros(len(labels), bool)
        rows[session.case(c).ranking[:k]] = True
        rest = rows[:, None, None] & ~painted
        near = ndimage.binary_dilation(painted, np.ones((1, 2 * ring + 1, 2 * ring + 1), bool)) & ~painted
        t0 = time.perf_counter()
        got = session.propose(c, again=True)
        seconds = time.perf_counter() - t0
        after = session.load(c).labels
        row = [dice(labels, refs[c], rest), dice(after, refs[c], rest), dice(labels, refs[c], near),
               dice(after, refs[c], near), got["before"], got["score"]]
        rows_out.append(row)
        print(f"| {c} | {int(session.load(c).corrected.sum())} | " + " | ".join(f"{x:.3f}" for x in row[:4])
              + f" | {row[4]:.2f} -> {row[5]:.2f} | {seconds:.1f} |")
    mean = np.mean(rows_out, axis=0)
    print("| mean | | " + " | ".join(f"{x:.3f}" for x in mean[:4]) + f" | {mean[4]:.2f} -> {mean[5]:.2f} | |")
    out["again"] = {"cases": list(refs), "rows": rows_out}


def finetune_section(session: Session, refs: dict, args, out: dict) -> None:
    """Accept one slab's cases, fine-tune on them, score every case of the other slab before and after."""
    from napari_diffmed.ensemble import segment_ensemble

    slab = args.held_out[5]  # the held-out case's slab is left out whole (its variants show the same anatomy)
    train_cases, test_cases = [c for c in refs if c[5] != slab], [c for c in refs if c[5] == slab]
    for c in train_cases + [args.held_out]:
        session.accept(c, refs[c])  # a person accepts a case once it is right
    model_before = session.settings.model
    settings = FinetuneSettings(held_out=args.held_out, eval_slices=6, switch=False,
                                **({"steps": args.finetune_steps} if args.finetune_steps else {}))
    t0 = time.perf_counter()
    result = drive(iter_finetune(session, settings))
    seconds = time.perf_counter() - t0
    scores = {}
    for c in test_cases:
        scan, meta = session.read_scan(c)
        scores[c] = [dice(segment_ensemble(scan, meta["spacing"], model=model, members=args.members, steps=args.steps,
                                           device="cpu", indices=session.case(c).slices, preprocess="none").labels(),
                                      refs[c])
                     for model in (model_before, result["weights"])]
    print(f"\nfine-tuning {settings.steps} steps (lr {settings.lr:g}, replay {settings.replay:.0%} of each batch: "
          f"{result['replay']}) on {result['train_cases']} ({seconds:.0f} s with the held-out check); loss first 10 "
          f"{np.mean(result['losses'][:10]):.4f}, last 10 {np.mean(result['losses'][-10:]):.4f}")
    print(f"the session's held-out check: {result['message']}")
    print("\n| held-out case (other slab) | Dice before | after |\n|---|---|---|")
    for c, (before, after) in scores.items():
        print(f"| {c} | {before:.3f} | {after:.3f} |")
    mean = np.mean(list(scores.values()), axis=0)
    print(f"| mean | {mean[0]:.3f} | {mean[1]:.3f} |")
    out["finetune"] = {"scores": scores, "check": [result["dice_before"], result["dice_after"]],
                       "switched_if_allowed": bool(result["dice_after"] >= result["dice_before"]),
                       "steps": settings.steps, "lr": settings.lr, "replay": settings.replay}


def plot(out: dict, folder: Path) -> None:
    """PNG figures of the three results (matplotlib: ``pip install napari-diffmed[bench]``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in out["order"].items():
        ax.plot(range(len(curve)), curve, marker="o", ms=3, label=name)
    ax.set(xlabel="corrected slices", ylabel="pooled Dice of all cases", title="Which slice to correct next")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / "labeling_order.png", dpi=120)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    rows, x = np.array(out["again"]["rows"]), np.arange(len(out["again"]["cases"]))
    for ax, (i, j), title in ((a1, (0, 1), "rest of the corrected slices"), (a2, (2, 3), "near the corrections")):
        ax.bar(x - 0.2, rows[:, i], 0.4, label="corrections pasted")
        ax.bar(x + 0.2, rows[:, j], 0.4, label="Propose again")
        ax.set(xticks=x, ylim=(max(0.0, rows[:, i:j + 1].min() - 0.05), 1), ylabel="Dice", title=title)
        ax.set_xticklabels([c.split("_", 1)[0] for c in out["again"]["cases"]], rotation=45, fontsize=8)
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "labeling_again.png", dpi=120)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    scores = out["finetune"]["scores"]
    vals, x = np.array(list(scores.values())), np.arange(len(scores))
    ax.bar(x - 0.2, vals[:, 0], 0.4, label="shipped model")
    ax.bar(x + 0.2, vals[:, 1], 0.4, label="fine-tuned on 4 accepted cases")
    ax.set(xticks=x, ylim=(max(0.0, vals.min() - 0.05), 1), ylabel="Dice", title="Held-out cases of the other slab")
    ax.set_xticklabels(list(scores), rotation=20, fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "labeling_finetune.png", dpi=120)
    plt.close("all")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--k", type=int, default=2, help="slices corrected per case")
    parser.add_argument("--box", type=int, default=12, help="side of a painted square (voxels, 2 mm)")
    parser.add_argument("--ring", type=int, default=6, help="voxels around a square counted as near it")
    parser.add_argument("--finetune-steps", type=int, default=None, help="default: FinetuneSettings' steps")
    parser.add_argument("--held-out", default="case21_gamma+bias",
                        help="the case the session's fine-tuning check scores; no case of its slab (the digit "
                             "after the variant's) is trained on, and all of them are scored")
    parser.add_argument("--no-defaults-timing", action="store_true")
    parser.add_argument("--plots", type=Path, default=None, help="write the figures (PNG) to this folder")
    parser.add_argument("--json", type=Path, default=None, help="write the figures' data to this file")
    args = parser.parse_args(argv)
    start, out = time.perf_counter(), {}
    with tempfile.TemporaryDirectory() as tmp:
        scans = Path(tmp) / "scans"
        refs = make_cases(scans)
        session = Session(scans, Path(tmp) / "out", members=args.members, steps=args.steps, device="cpu",
                          preprocess="none", force=True)  # slabs of the template itself, contrast changed on purpose
        seconds = propose_all(session, len(refs))
        print(f"background proposals ({args.members} members, {args.steps} steps, 6 slices): "
              f"{np.mean(seconds):.1f} s per case (min {min(seconds):.1f}, max {max(seconds):.1f})")
        print("\n| case | score (expected wrong voxels per slice) | mean entropy (bits) | wrong voxels per slice | "
              "proposal Dice |\n|---|---|---|---|---|")
        for c in session.order():
            data, n = session.load(c), len(session.case(c).slices)
            print(f"| {c} | {session.case(c).score:.1f} | {case_score(data.maps, 'entropy', n):.3f} | "
                  f"{int(((data.labels > 0) != (refs[c] > 0)).sum()) / n:.1f} | {dice(data.labels, refs[c]):.3f} |")
        order_section(session, refs, args.k, out)
        again_section(session, refs, args.k, args.box, args.ring, out)
        finetune_section(session, refs, args, out)
        session.close()
        if not args.no_defaults_timing:
            from napari_diffmed.ensemble import DEFAULTS, segment_ensemble

            scan = read_nifti(next(scans.glob("*.nii.gz")))[0]
            t0 = time.perf_counter()
            segment_ensemble(scan, (2.0, 2.0, 2.0), device="cpu", force=True, preprocess="none")
            took = time.perf_counter() - t0
            print(f"one case proposal at the defaults ({DEFAULTS.members} members, {DEFAULTS.steps} steps, "
                  f"{len(scan)} slices): {took:.1f} s ({took / len(scan):.1f} s per slice)")
            out["defaults_seconds_per_slice"] = took / len(scan)
    out["proposal_seconds"] = seconds
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=1))
    if args.plots is not None:
        plot(out, args.plots)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
