"""Training: the loss goes down, resume continues exactly, folders load true to space, the CLI end to end."""

from __future__ import annotations

import json
import shlex

import numpy as np
import pytest

from napari_diffmed.cli import build_parser, main
from napari_diffmed.training.api import data_fingerprint, folder_card
from napari_diffmed.training.datasets import Batches, GridData
from napari_diffmed.training.folders import held_out_subjects, load_folder, scan_folder
from napari_diffmed.training.loop import TrainConfig, train


def _discs(n: int = 32, size: int = 16, seed: int = 0) -> GridData:
    """An easy data set: one bright disc of random radius, position and brightness per image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for _ in range(n):
        cy, cx = rng.uniform(6, size - 6, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(3, 6) ** 2
        images.append(disc.astype(np.float32) * rng.uniform(0.5, 1.0))
    return GridData(np.stack(images), None, np.zeros(n, dtype=bool), (4.0, 4.0))


class _Interrupted:
    """Batches that raise KeyboardInterrupt after ``after`` draws, like Ctrl-C mid-run."""

    def __init__(self, batches: Batches, after: int) -> None:
        self.batches, self.rng, self.left = batches, batches.rng, after

    def __iter__(self):
        return self

    def __next__(self):
        self.left -= 1
        if self.left < 0:
            raise KeyboardInterrupt
        return next(self.batches)


def test_loss_goes_down_and_resume_continues_where_it_stopped(tmp_path):
    from safetensors.numpy import load_file

    data = _discs()
    config = TrainConfig(steps=40, batch_size=8, lr=3e-3, warmup=5, checkpoint_every=20, val_every=1000,
                         device="cpu", seed=0)
    card = lambda: folder_card("tiny", "image", (16, 16), (4.0, 4.0), (8, 16))  # noqa: E731
    batches = lambda: Batches(data, 8, augment=False, seed=0)  # noqa: E731
    full = train(card(), batches(), None, config, tmp_path / "full" / "tiny", log=lambda m: None)
    losses = np.array(full.losses)
    assert full.step == 40 and len(losses) == 40
    assert losses[-10:].mean() < 0.6 * losses[:10].mean(), losses.round(3)

    with pytest.raises(KeyboardInterrupt):  # stopped at step 25; the last checkpoint is step 20
        train(card(), _Interrupted(batches(), after=25), None, config, tmp_path / "cut" / "tiny", log=lambda m: None)
    assert json.loads((tmp_path / "cut" / "tiny.resume.json").read_text())["state"]["step"] == 20
    logs: list[str] = []
    resumed = train(card(), batches(), None, config, tmp_path / "cut" / "tiny", resume=True, log=logs.append)
    assert "resumed tiny.safetensors at step 20" in logs
    assert resumed.step == full.step and len(resumed.losses) == len(full.losses)
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4)  # same batches, noise and optimiser state
    a, b = load_file(str(tmp_path / "full" / "tiny.safetensors")), load_file(str(tmp_path / "cut" / "tiny.safetensors"))
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4
    trained = json.loads((tmp_path / "cut" / "tiny.json").read_text())["training"]
    assert trained["steps"] == 40 and np.isfinite(trained["final_loss"])


def _write_folder(root, n: int = 4, masks: str | None = "suffix", shape=(8, 32, 32)):
    from napari_diffmed.io import write_nifti
    from napari_diffmed.sample_data import make_phantom

    for i in range(n):
        cls = "lesion" if i % 2 else "healthy"
        ph = make_phantom(shape=shape, spacing=(3.0, 2.0, 2.0), seed=i, lesion=bool(i % 2))
        write_nifti(root / f"sub{i:02d}_{cls}.nii.gz", ph.image, scale=ph.spacing)
        if masks == "suffix":
            write_nifti(root / f"sub{i:02d}_{cls}_mask.nii.gz", ph.mask, scale=ph.spacing, labels=True)
        elif masks == "folder":
            write_nifti(root / "masks" / f"sub{i:02d}_{cls}.nii.gz", ph.mask, scale=ph.spacing, labels=True)
    return root


def test_folder_scan_pairs_masks_classes_and_splits_by_subject(tmp_path):
    folder = _write_folder(tmp_path, masks="folder")
    items, classes = scan_folder(folder, "segmentation")
    assert [it.subject for it in items] == ["sub00", "sub01", "sub02", "sub03"] and classes == []
    assert all(it.mask == folder / "masks" / it.image.name for it in items)
    items, classes = scan_folder(folder, "image", classes=["healthy", "lesion"])
    assert [it.label for it in items] == [0, 1, 0, 1]
    held = held_out_subjects(items, 0.5, seed=0)
    assert len(held) == 2 and {it.label for it in items if it.subject in held} == {0, 1}
    assert held_out_subjects(items, 0.0) == set() and held_out_subjects(items[:1], 0.5) == set()


@pytest.mark.parametrize("size, spacing", [((32, 32), (2.0, 2.0)), ((16, 16), (3.0, 3.0)), ((8, 16, 16), (4.0,) * 3)])
def test_training_reads_a_folder_exactly_as_inference_prepares_the_scan(tmp_path, size, spacing):
    """One data path: the images (and masks) training gets from a folder are, to the bit, what a task run on the
    same file would give its model (the reader, the card's normalisation, the model grid)."""
    from napari_diffmed.io import read_scan
    from napari_diffmed.models import ModelCard
    from napari_diffmed.volumes import prepare

    folder = _write_folder(tmp_path, n=1, shape=(6, 40, 36))
    items, _ = scan_folder(folder, "segmentation")
    data = load_folder(items, size, spacing, min_foreground=0.0, normalisation={"lower": 1.0, "upper": 99.0})
    card = ModelCard(name="probe", task="segmentation", spatial_dims=len(size), image_size=list(size),
                     spacing=list(spacing), normalisation={"lower": 1.0, "upper": 99.0}, condition_channels=1,
                     network=dict(spatial_dims=len(size), in_channels=2, out_channels=1, channels=[8, 16],
                                  attention_levels=[False, False], num_res_blocks=1, norm_num_groups=8),
                     scheduler={"name": "DDPMScheduler", "num_train_timesteps": 1000})
    image, kwargs, _ = read_scan(items[0].image)
    prepared = prepare(image, kwargs["metadata"]["spacing"], card)  # what segment_ensemble feeds its model
    assert data.images.dtype == np.float32 and np.array_equal(data.images, (prepared.data + 1.0) / 2.0)
    mask, _, _ = read_scan(items[0].mask)
    on_grid = prepared.grid.to_model((mask > 0).astype(np.float32) if len(size) == 2 else (mask > 0)[None] * 1.0,
                                     cval=0.0)
    assert np.array_equal(data.probs, np.clip(on_grid, 0, 1).astype(np.float32))


def test_folder_slices_on_the_model_grid(tmp_path):
    folder = _write_folder(tmp_path, n=2)
    items, _ = scan_folder(folder, "segmentation")
    data = load_folder(items, (16, 16), (4.0, 4.0), held_out={"sub01"})
    assert data.images.shape[1:] == (16, 16) and data.probs.shape == data.images.shape
    assert 0 <= data.images.min() and data.images.max() <= 1 and data.probs.max() > 0.5  # the lesion survives
    assert set(data.subjects[data.held_out]) == {"sub01"} and data.split(held_out=False).held_out.sum() == 0
    volumes = load_folder(items, (8, 16, 16), (4.0, 4.0, 4.0))
    assert volumes.images.shape == (2, 8, 16, 16)


def _train(out, folder, *extra):
    return main(["train", "--data", str(folder), "--out", str(out), "--image-size", "16", "16", "--spacing", "4", "4",
                 "--channels", "8", "16", "--batch-size", "4", "--device", "cpu", *map(str, extra)])


def test_cli_trains_resumes_and_records_the_card(tmp_path, capsys):
    from napari_diffmed.models import load_model

    folder = _write_folder(tmp_path / "data")
    out = tmp_path / "models"
    assert _train(out, folder, "--task", "segmentation", "--name", "seg", "--steps", 4, "--checkpoint-every", 2,
                  "--threshold-band", 0.3, 0.7) == 0
    printed = capsys.readouterr().out
    assert "held out: sub" in printed and "wrote" in printed
    loaded = load_model(out / "seg.safetensors")
    card = loaded.card
    assert card.task == "segmentation" and card.training["steps"] == 4 and card.metrics["steps"] == 4
    files = sorted(p for p in folder.iterdir())
    assert card.training["data_fingerprint"] == data_fingerprint(folder, files)
    assert np.isfinite(card.metrics["train_loss"]) and card.metrics["held_out_loss"] is not None
    recorded = build_parser().parse_args(shlex.split(card.training["command"])[1:])  # the command reproduces it
    assert (recorded.data, recorded.name, recorded.steps, recorded.channels) == (folder, "seg", 4, [8, 16])
    assert recorded.threshold_band == card.training["threshold_band"] == [0.3, 0.7]
    for band, reason in (((0.7, 0.3), "low < high"), ((0.3, 0.7), "applies to segmentation masks")):
        task = "segmentation" if band[0] > band[1] else "image"
        assert _train(out, folder, "--task", task, "--name", "bad", "--steps", 1, "--threshold-band", *band) == 2
        assert reason in capsys.readouterr().err and not (out / "bad.safetensors").exists()

    assert _train(out, folder, "--task", "segmentation", "--name", "seg", "--steps", 4) == 2
    assert "exists" in capsys.readouterr().err
    assert _train(out, folder, "--task", "segmentation", "--name", "seg", "--steps", 6, "--resume") == 0
    assert "resumed seg.safetensors at step 4" in capsys.readouterr().out
    assert load_model(out / "seg.safetensors").card.training["steps"] == 6


def test_cli_x0_model_fine_tunes_from_init_and_the_card_records_both(tmp_path, capsys):
    from napari_diffmed.models import load_model

    folder = _write_folder(tmp_path / "data")
    out = tmp_path / "models"
    base = ("--task", "segmentation", "--prediction", "sample", "--steps", 2)
    assert _train(out, folder, *base, "--name", "base") == 0
    assert _train(out, folder, *base, "--name", "tuned", "--init", out / "base.safetensors") == 0
    assert "starting from the weights of base@" in capsys.readouterr().out
    tuned = load_model(out / "tuned.safetensors")
    assert tuned.card.prediction_type == "sample" and tuned.network is not tuned.trained  # sampled as epsilon
    assert tuned.card.training["init"]["weights_sha256"] == load_model(out / "base.safetensors").card.weights_sha256
    recorded = build_parser().parse_args(shlex.split(tuned.card.training["command"])[1:])
    assert (recorded.prediction, recorded.init) == ("sample", out / "base.safetensors")
    assert _train(out, folder, "--task", "segmentation", "--steps", 2, "--name", "eps",
                  "--init", out / "base.safetensors") == 0  # re-targeted: an epsilon network from an x0 one
    eps = load_model(out / "eps.safetensors").card
    assert (eps.prediction_type, eps.training["init"]["prediction_type"]) == ("epsilon", "sample")
    assert _train(out, folder, "--steps", 2, "--name", "image", "--init", out / "base.safetensors") == 2
    assert "task is segmentation" in capsys.readouterr().err  # an image model cannot start from a segmentation one


def test_cli_conditional_2d_from_names_and_3d_from_csv(tmp_path):
    from napari_diffmed.models.card import ModelCard

    folder = _write_folder(tmp_path / "data", masks=None)
    assert _train(tmp_path, folder, "--classes", "healthy", "lesion", "--name", "cond", "--steps", 2, "--quiet") == 0
    card = ModelCard.read(tmp_path / "cond.json")
    assert card.class_names == ["healthy", "lesion"] and card.null_class == 2 and card.network["num_class_embeds"] == 3
    table = tmp_path / "labels.csv"
    table.write_text("file,class\n" + "".join(f"sub{i:02d}_{'lesion' if i % 2 else 'healthy'}.nii.gz,"
                                              f"{'ab' if i < 2 else 'cd'}\n" for i in range(4)))
    assert main(["train", "--data", str(folder), "--labels", str(table), "--dims", "3", "--image-size", "8", "16", "16",
                 "--spacing", "4", "4", "4", "--channels", "8", "16", "--batch-size", "2", "--steps", "2",
                 "--name", "vol", "--out", str(tmp_path), "--device", "cpu", "--quiet"]) == 0
    card = ModelCard.read(tmp_path / "vol.json")
    assert card.spatial_dims == 3 and card.image_size == [8, 16, 16] and card.class_names == ["ab", "cd"]


@pytest.mark.parametrize("case, reason", [
    ("empty", "no NIfTI images"), ("missing_mask", "no mask for sub01_lesion.nii.gz"),
    ("not_nifti", "not NIfTI"), ("unknown_class", "'tumour' of sub00_healthy.nii.gz is not one of"),
    ("no_name", "--data needs --name"), ("bad_size", "divisible by 2"),
])
def test_cli_refuses_bad_folders_with_the_reason(tmp_path, capsys, case, reason):
    folder = tmp_path / "data"
    folder.mkdir()
    extra = ["--name", "m", "--task", "segmentation"]
    if case != "empty":
        _write_folder(folder, n=2)
    if case == "missing_mask":
        (folder / "sub01_lesion_mask.nii.gz").unlink()
    if case == "not_nifti":
        (folder / "sub02.png").write_bytes(b"\x89PNG")
    if case == "unknown_class":
        (folder / "labels.csv").write_text("file,class\nsub00_healthy.nii.gz,tumour\nsub01_lesion,lesion\n")
        extra = ["--name", "m", "--labels", str(folder / "labels.csv"), "--classes", "healthy", "lesion"]
    if case == "no_name":
        extra = []
    args = ["--steps", 1] + (["--image-size", "15", "16"] if case == "bad_size" else [])
    code = _train(tmp_path / "out", folder, *extra, *args)
    assert code == 2 and reason in capsys.readouterr().err
    assert not (tmp_path / "out" / "m.safetensors").exists()


def test_recipe_mode_calls_train_default_and_keeps_the_recipe_fixed(tmp_path, capsys, monkeypatch):
    from napari_diffmed.training import recipes
    from napari_diffmed.training.loop import TrainState

    calls = []
    monkeypatch.setattr(recipes, "train_default", lambda *a, **k: calls.append((a, k)) or TrainState(3, [], []))
    recipe = ["train", "--recipe", "mni_t1_axial_64", "--out", str(tmp_path)]
    assert main([*recipe, "--steps", "3", "--device", "cpu"]) == 0
    (args, kwargs), = calls
    assert args == ("mni_t1_axial_64", tmp_path) and callable(kwargs.pop("log"))
    assert kwargs == dict(steps=3, resume=False, device="cpu", init=None)
    assert main([*recipe, "--init", str(tmp_path / "old.safetensors")]) == 0  # fine-tuning a recipe's model
    assert calls[-1][1]["init"] == tmp_path / "old.safetensors"
    assert main([*recipe, "--batch-size", "4"]) == 2
    assert "--batch-size cannot be combined with --recipe" in capsys.readouterr().err
    command = f"napari-diffmed train --recipe mni_wm_seg_96 --steps 1500 --out {tmp_path}"  # as the cards record it
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.recipe, args.steps, args.out) == ("mni_wm_seg_96", 1500, tmp_path)


def test_the_v_recipe_starts_from_the_shipped_noise_model_and_records_its_command(tmp_path, monkeypatch):
    from napari_diffmed.training import recipes
    from napari_diffmed.training.loop import TrainState

    seen = {}
    monkeypatch.setattr(recipes, "train", lambda card, *a, init=None, **k: seen.update(card=card, init=init)
                        or TrainState(0, [], []))
    recipes.train_default("mni_t1_axial_64_v", tmp_path, steps=5, log=lambda m: None)
    assert seen["init"] == "mni_t1_axial_64" and seen["card"].prediction_type == "v_prediction"
    assert seen["card"].training["command"].endswith("--init mni_t1_axial_64")
    recipes.train_default("mni_t1_axial_64", tmp_path, steps=5, log=lambda m: None)
    assert seen["init"] is None and seen["card"].prediction_type == "epsilon"  # trained from scratch


@pytest.mark.parametrize("band", [(0.0, 1.0), (0.3, 0.7)])
def test_segmentation_masks_cover_a_voxel_as_often_as_member_probability_says(band):
    """Masks are the probability map thresholded by a smooth field uniform on the band: over many draws a voxel
    of probability p is covered with chance clip((p - low) / (high - low)), which the evaluation's calibration
    uses; a band around 0.5 makes masks agree outside it."""
    from napari_diffmed.training.datasets import member_probability, random_threshold_field

    rng = np.random.default_rng(0)
    fields = np.stack([random_threshold_field((96, 96), rng, band=band) for _ in range(200)])
    assert band[0] <= fields.min() and fields.max() <= band[1]
    prob = rng.permutation(np.linspace(0, 1, 96 * 96, dtype=np.float32)).reshape(96, 96)  # each tenth everywhere
    covered = (prob > fields).mean(axis=0)
    bins = np.minimum((prob * 10).astype(int), 9)  # compare per tenth of the probability range
    for b in range(10):
        assert abs(covered[bins == b].mean() - member_probability(prob[bins == b], band).mean()) < 0.03, b
    if band == (0.3, 0.7):
        assert covered[prob < 0.3].max() == 0 and covered[prob > 0.7].min() == 1
    with pytest.raises(ValueError, match="band"):
        random_threshold_field((8, 8), rng, band=(0.6, 0.4))
