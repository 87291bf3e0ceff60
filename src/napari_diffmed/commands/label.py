"""``napari-diffmed label SCANS_DIR --out DIR``: a labeling session from the shell (propose, accept, fine-tune)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..device import DEVICE_CHOICES
from ..ensemble import DEFAULTS
from ..labeling.cases import SCORES, UNITS
from ..labeling.finetune import FinetuneSettings


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "label", help="a labeling session over a folder of scans: proposals ranked by uncertainty, accept, fine-tune",
        description="Open (or create) the labeling session of SCANS_DIR in --out and list its cases, least "
                    "certain first, with their state and score (the expected number of wrong voxels per slice, from "
                    "the members' votes). --propose runs the ensemble on cases without a proposal, --again on a case with "
                    "its corrected voxels held fixed, --accept writes a case's labels as NIfTI in its scan's "
                    "space, --finetune trains the model on the accepted cases and switches the session to it. "
                    "Edit labels in napari (Plugins > napari-diffmed > Label) or save files as "
                    "OUT/cases/ID/edits.nii.gz. Settings given are stored in the session.",
    )
    p.add_argument("scans", type=Path, help="folder of scans: NIfTI files and DICOM series folders")
    p.add_argument("--out", required=True, type=Path, help="the session's folder (created; holds all its files)")
    p.add_argument("--model", default=None, help="segmentation model name or path (default: stored, or shipped)")
    p.add_argument("--device", default="auto", choices=DEVICE_CHOICES)
    p.add_argument("--seed", type=int, default=None, help=f"ensemble seed (default: stored, or {DEFAULTS.seed})")
    p.add_argument("--members", type=int, default=None,
                   help=f"ensemble members (default: stored, or {DEFAULTS.members})")
    p.add_argument("--steps", type=int, default=None, help=f"denoising steps (default: stored, or {DEFAULTS.steps})")
    p.add_argument("--slices", default=None, help="slices to propose on, e.g. 40:52 (default: slices with foreground)")
    p.add_argument("--score", choices=SCORES, default=None,
                   help="what ranks the cases (default: stored, or expected_errors)")
    p.add_argument("--slice-score", choices=SCORES, default=None,
                   help="what ranks a case's slices (default: stored, or mutual_information)")
    p.add_argument("--preprocess", choices=("auto", "none"), default=None,
                   help="as in `segment`: auto brings each scan to the model's template first where the card names "
                        "one (the shipped models); default: stored, or auto")
    p.add_argument("--force", action=argparse.BooleanOptionalAction, default=None,
                   help="propose even on scans outside the model's training domain (default: stored, or no)")
    p.add_argument("--propose", nargs="?", type=int, const=-1, default=None, metavar="N",
                   help="propose the next N cases without a proposal (all when N is left out)")
    p.add_argument("--again", nargs="+", default=[], metavar="CASE", help="propose again with corrections held")
    p.add_argument("--accept", nargs="+", default=[], metavar="CASE", help="accept these cases' current labels")
    p.add_argument("--finetune", action="store_true", help="fine-tune on the accepted cases and switch to the model")
    p.add_argument("--finetune-steps", type=int, default=FinetuneSettings.steps,
                   help=f"training steps of --finetune (default {FinetuneSettings.steps})")
    p.add_argument("--held-out", default=None, help="accepted case --finetune leaves out and scores (default: last)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..labeling import FinetuneSettings, Session, iter_finetune
    from ..progress import drive
    from .common import printer

    log = (lambda *a: None) if args.quiet else print
    given = {k: getattr(args, k) for k in ("model", "seed", "members", "steps", "slices", "score", "slice_score", "preprocess", "force")
             if getattr(args, k) is not None}
    with Session(args.scans, args.out, device=args.device, **given) as session:
        units = UNITS[session.settings.score]
        todo = session.to_propose()
        todo = todo if args.propose is None or args.propose < 0 else todo[:args.propose]
        for case_id in (todo if args.propose is not None else []):
            out = session.propose(case_id, callback=printer(args.quiet))
            log(f"proposed {case_id}: score {out['score']:.3f} {units}")
        for case_id in args.again:
            out = session.propose(case_id, again=True, callback=printer(args.quiet))
            log(f"proposed {case_id} again holding {out['fixed_voxels']} corrected voxels: score "
                f"{out['before']:.3f} -> {out['score']:.3f} {units}")
        for case_id in args.accept:
            log(f"accepted {case_id}: {session.accept(case_id)}")
        if args.finetune:
            result = drive(iter_finetune(session, FinetuneSettings(steps=args.finetune_steps,
                                                                   held_out=args.held_out)),
                           lambda e: log(f"  {e.message}") if e.done % 25 == 0 or e.done == e.total else None)
            log(f"fine-tuned {result['weights']}: {result['message']}")
        print(f"{'case':<28} {'state':<12} {'score':>7}  most uncertain slices")
        for case_id in session.order() + session.accepted():
            case = session.case(case_id)
            score = f"{case.score:.3f}" if case.score is not None else "-"
            print(f"{case_id:<28} {case.state:<12} {score:>7}  {case.ranking[:5]}")
    return 0
