"""Picture grids of samples from the shipped image models next to real data on the model grid (Pillow only).

    python benchmarks/sample_grid.py                        # both pictures, shipped models
    NAPARI_DIFFMED_MODELS=.scratch/models python benchmarks/sample_grid.py --n 8 --steps 25

- ``docs/images/synthesis_grid.png`` (2D model): rows "samples" (class healthy, guidance ``--guidance``),
  "samples, lesion" (the same noise, class lesion), "real held-out" (held-out slices of the training
  recipe, evenly spread through them), and "guidance sweep" (one noise at increasing guidance).
- ``docs/images/volume_samples.png`` (3D model): axial, coronal and sagittal mid-slices of the real
  template on the model grid and of ``--volumes`` sampled volumes.

Intensities are the model's [0, 1] range shown as grey levels 0..255; images are enlarged by ``--zoom``
(bilinear). Axial slices are shown with anterior up, coronal and sagittal ones with superior up.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Sequence

import numpy as np

SWEEP = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
LABEL_WIDTH, GAP, TITLE = 150, 4, 18


def _tile(image: np.ndarray, zoom: int):
    from PIL import Image

    grey = (np.clip(np.asarray(image, dtype=np.float32), 0, 1) * 255).round().astype(np.uint8)
    tile = Image.fromarray(grey, mode="L")
    return tile.resize((tile.width * zoom, tile.height * zoom), Image.Resampling.BILINEAR)


def _font(size: int = 14):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def grid_picture(rows: Sequence[tuple[str, Sequence[np.ndarray], Sequence[str] | None]], zoom: int = 2,
                 title: str = ""):
    """A labelled grid: one ``(label, images, captions or None)`` per row; images centred in equal cells."""
    from PIL import Image, ImageDraw

    tiles = [[_tile(im, zoom) for im in images] for _, images, _ in rows]
    cell_w = max(t.width for row in tiles for t in row)
    cell_h = max(t.height for row in tiles for t in row) + TITLE
    n_cols = max(len(row) for row in tiles)
    top = TITLE + GAP if title else 0
    canvas = Image.new("L", (LABEL_WIDTH + n_cols * (cell_w + GAP), top + len(rows) * (cell_h + GAP)), 255)
    draw, font = ImageDraw.Draw(canvas), _font()
    if title:
        draw.text((GAP, GAP // 2), title, fill=0, font=font)
    for r, ((label, _, captions), row) in enumerate(zip(rows, tiles)):
        y0 = top + r * (cell_h + GAP)
        draw.text((GAP, y0 + cell_h // 2 - 8), label, fill=0, font=font)
        for c, tile in enumerate(row):
            x0 = LABEL_WIDTH + c * (cell_w + GAP)
            if captions is not None:
                draw.text((x0 + 2, y0), captions[c], fill=0, font=font)
            canvas.paste(tile, (x0 + (cell_w - tile.width) // 2, y0 + TITLE + (cell_h - TITLE - tile.height) // 2))
    return canvas


def _axial(image: np.ndarray) -> np.ndarray:
    return image[::-1]  # napari's y runs posterior to anterior downwards in RAS order: show anterior up


def synthesis_rows(model: str | None, n: int, steps: int, guidance: float, seed: int,
                   sweep: Sequence[float] = SWEEP) -> list:
    """The rows of the 2D picture (runs the model: 3 batches of ``n`` and one of ``len(sweep)``)."""
    from napari_diffmed.evaluation.model import grid_data
    from napari_diffmed.models import load
    from napari_diffmed.synthesis import guidance_sweep, synthesize

    loaded = load("synthesis", model, "cpu")
    data, _, _ = grid_data(loaded.card)
    held = data.split(held_out=True).images
    real = held[np.linspace(0, len(held) - 1, n).round().astype(int)]
    kwargs = dict(n=n, steps=steps, seed=seed, guidance=guidance, device="cpu")
    healthy = synthesize(loaded, class_name="healthy", **kwargs).samples
    lesion = synthesize(loaded, class_name="lesion", **kwargs).samples
    swept = guidance_sweep(loaded, scales=sweep[:n], n=1, steps=steps, seed=seed + 2, class_name="healthy")
    return [
        (f"samples\n(healthy, w={guidance:g})", [_axial(s) for s in healthy], None),
        ("samples, lesion\n(same noise)", [_axial(s) for s in lesion], None),
        ("real held-out", [_axial(s) for s in real], None),
        ("guidance sweep\n(one noise)", [_axial(s) for s in swept.samples[:, 0]], [f"w={w:g}" for w in swept.scales]),
    ], loaded


def mid_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial (anterior up), coronal and sagittal (superior up) mid-slices of a (z, y, x) volume."""
    z, y, x = (s // 2 for s in volume.shape)
    return [_axial(volume[z]), volume[:, y, :][::-1], volume[:, :, x][::-1]]


def volume_rows(model: str | None, volumes: int, steps: int, seed: int) -> list:
    """The rows of the 3D picture: the real template on the model grid, then ``volumes`` samples."""
    from napari_diffmed.models import default_model
    from napari_diffmed.evaluation.model import grid_data
    from napari_diffmed.models import load
    from napari_diffmed.synthesis import synthesize

    loaded = load("synthesis", model or default_model("image", 3), "cpu")
    data, _, _ = grid_data(loaded.card)
    samples = synthesize(loaded, n=volumes, steps=steps, seed=seed, device="cpu").samples
    captions = ["axial", "coronal", "sagittal"]
    rows = [("real template", mid_slices(data.images[0]), captions)]
    rows += [(f"sample {i + 1}", mid_slices(v), captions) for i, v in enumerate(samples)]
    return rows, loaded


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="2D image model (default: the shipped one)")
    parser.add_argument("--volume-model", default=None, help="3D image model (default: the shipped one)")
    parser.add_argument("--n", type=int, default=8, help="images per row of the 2D picture")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (the synthesis default)")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--zoom", type=int, default=2, help="enlargement of 2D tiles (3D tiles get twice this)")
    parser.add_argument("--out", default="docs/images/synthesis_grid.png")
    parser.add_argument("--volume-out", default="docs/images/volume_samples.png")
    parser.add_argument("--only", choices=("2d", "3d"), default=None)
    args = parser.parse_args(argv)
    if args.only != "3d":
        start = time.perf_counter()
        rows, loaded = synthesis_rows(args.model, args.n, args.steps, args.guidance, args.seed)
        title = f"{loaded.model_id}: DDIM {args.steps} steps, seed {args.seed}"
        _save(grid_picture(rows, args.zoom, title), args.out, start)
    if args.only != "2d":
        start = time.perf_counter()
        rows, loaded = volume_rows(args.volume_model, args.volumes, args.steps, args.seed)
        title = f"{loaded.model_id}: DDIM {args.steps} steps, seed {args.seed}"
        _save(grid_picture(rows, 2 * args.zoom, title), args.volume_out, start)
    return 0


def _save(picture, out: str, start: float) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    print(f"wrote {out} ({picture.width}x{picture.height}) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
