"""Training on several processes: torchrun with 2 CPU processes (gloo) against one process, same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import napari_diffmed
from napari_diffmed.cli import main
from napari_diffmed.training.ddp import Ranks, RankShard, rows


def _folder(root: Path) -> Path:
    from napari_diffmed.io import write_nifti
    from napari_diffmed.sample_data import make_phantom

    for i in range(3):
        ph = make_phantom(shape=(6, 32, 32), spacing=(3.0, 2.0, 2.0), seed=i, lesion=bool(i % 2))
        write_nifti(root / f"sub{i:02d}.nii.gz", ph.image, scale=ph.spacing)
    return root


def _args(folder: Path, out: Path) -> list[str]:
    return ["train", "--data", str(folder), "--out", str(out), "--name", "tiny", "--image-size", "16", "16",
            "--spacing", "4", "4", "--channels", "8", "16", "--batch-size", "8", "--steps", "6",
            "--checkpoint-every", "2", "--held-out", "0.34", "--lr", "1e-3", "--device", "cpu"]


def test_two_gloo_processes_follow_the_loss_curve_of_one_process(tmp_path):
    from napari_diffmed.models import load_model

    folder = _folder(tmp_path / "data")
    assert main(_args(folder, tmp_path / "one")) == 0
    src = str(Path(napari_diffmed.__file__).parents[1])  # this checkout's package, in the launched processes too
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "napari_diffmed.cli", *_args(folder, tmp_path / "two")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1, "rank 0 alone reports (and writes)"
    one, two = (load_model(tmp_path / d / "tiny.safetensors") for d in ("one", "two"))
    curve = lambda card: [v["loss"] for v in card.metrics["held_out_curve"]]  # noqa: E731
    assert len(curve(two.card)) == 3 and two.card.training["steps"] == 6
    np.testing.assert_allclose(curve(two.card), curve(one.card), rtol=1e-3)
    np.testing.assert_allclose(two.card.metrics["train_loss"], one.card.metrics["train_loss"], rtol=1e-3)
    first = curve(one.card)[0]
    assert abs(curve(one.card)[-1] - first) > 1e-3 * first, "the weights moved: the curves compare something"
    for (key, a), b in zip(one.network.state_dict().items(), two.network.state_dict().values()):
        np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-4, err_msg=key)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_each_rank_keeps_its_rows_of_the_global_batch():
    import torch

    batch = (torch.arange(8.0).view(8, 1), torch.arange(8))
    halves = [next(RankShard(iter([batch]), Ranks(r, 2, r), 8)) for r in (0, 1)]
    assert torch.equal(torch.cat([h[0] for h in halves]), batch[0])
    assert torch.equal(torch.cat([h[1] for h in halves]), batch[1])
    assert torch.equal(rows(batch[1], Ranks(1, 4, 1)), torch.tensor([2, 3]))
    with pytest.raises(ValueError, match="batch size 6 must be divisible by the 4 processes"):
        RankShard(iter([]), Ranks(0, 4, 0), 6)


def test_ranks_come_from_torchruns_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert Ranks.from_env() == Ranks(0, 1, 0) and Ranks.from_env().main
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert Ranks.from_env() == Ranks(1, 2, 1) and not Ranks.from_env().main
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match=r"RANK 2 must lie in 0..1"):
        Ranks.from_env()
