"""Wall time of each command at its defaults, as a user runs it: a fresh Python each time, model load included.

The inputs are the 2 mm MNI152 T1 template (95 x 117 x 99 voxels) written as NIfTI; segment and anomaly run on the
12-slice slab 40:52, inpaint on a mask over 4 of those slices. Prints a Markdown table with the machine, the
threads and the load average before and after each command (other processes share the cores: say so).

    python benchmarks/time_defaults.py [--repeat 2] [--out .scratch/time_defaults]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SLAB = "40:52"


def inputs(folder: Path) -> tuple[Path, Path]:
    """The 2 mm template and a mask on slices 44..47 inside the brain, as NIfTI files in ``folder``."""
    from napari_diffmed.io import write_nifti
    from napari_diffmed.training.templates import load_mni152

    template = load_mni152(2)
    scan = write_nifti(folder / "mni152_2mm.nii.gz", template.t1, scale=template.spacing, overwrite=True)
    mask = np.zeros(template.t1.shape, np.uint8)
    z, y, x = (s // 2 for s in template.t1.shape)
    mask[44:48, y - 6:y + 6, x + 8:x + 18] = 1
    return scan, write_nifti(folder / "mask.nii.gz", mask, labels=True, scale=template.spacing, overwrite=True)


def commands(scan: Path, mask: Path, out: Path) -> dict[str, list[str]]:
    return {
        "sample --out DIR (12 samples)": ["sample", "--out", str(out / "sample")],
        f"segment SCAN --out DIR --slices {SLAB} (8 members)": ["segment", str(scan), "--out", str(out / "segment"),
                                                               "--slices", SLAB],
        "inpaint SCAN MASK --out DIR (3 proposals, mask on 4 slices)": ["inpaint", str(scan), str(mask), "--out",
                                                                       str(out / "inpaint")],
        f"anomaly SCAN --out DIR --slices {SLAB}": ["anomaly", str(scan), "--out", str(out / "anomaly"),
                                                   "--slices", SLAB],
    }


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
            f"CUDA {'yes' if torch.cuda.is_available() else 'no'}, Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="runs per command (the table shows each)")
    parser.add_argument("--out", type=Path, default=None, help="folder for inputs and outputs (default: a temp one)")
    args = parser.parse_args(argv)
    folder = args.out or Path(tempfile.mkdtemp(prefix="time_defaults_"))
    folder.mkdir(parents=True, exist_ok=True)
    scan, mask = inputs(folder)
    print(f"machine: {machine()}")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| command | wall seconds | load average before -> after (1 min) |\n|---|---|---|")
    for name, argv_ in commands(scan, mask, folder).items():
        for _ in range(args.repeat):
            before = os.getloadavg()[0]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "napari_diffmed.cli", *argv_, "--overwrite", "--quiet"],
                                  capture_output=True, text=True)
            seconds = time.perf_counter() - start
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return done.returncode
            print(f"| `{name}` | {seconds:.0f} | {before:.1f} -> {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
