"""One settings contract per task: frozen, checked once by field name, JSON round trips, keywords == objects."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from napari_diffmed.preprocess import PreprocessSettings
from napari_diffmed.settings import (
    SETTINGS, AnomalySettings, EnsembleSettings, InpaintSettings, SynthesisSettings, settings_class,
)

FAST = dict(steps=3, seed=1, device="cpu")

NON_DEFAULT = {
    SynthesisSettings: dict(model="tiny_image", n=3, steps=7, scheduler="pndm", seed=None, class_name="lesion",
                            guidance=0.5, device="cpu", eta=0.25),
    EnsembleSettings: dict(model="a/b.safetensors", members=5, steps=4, scheduler="ddpm", seed=2**40, chunk=3,
                           max_bytes=12345, rule="majority", threshold=0.25, axis=2, indices=(4, 1, 9), device="cuda:1",
                           preprocess=PreprocessSettings(n4=False, register="deformable", skull_strip="yes"),
                           force=True),
    InpaintSettings: dict(model=None, class_name=1, mode="quality", steps=30, jump_length=3, resamplings=2, eta=0.5,
                          proposals=2, seed=None, axis=1, indices=(3,), device="mps", batch_size=5, dilate=0,
                          preprocess="none", force=True),
    AnomalySettings: dict(model="tiny_image", method="simplex", level=120, depth=400, guidance=0.0, compare="scan",
                          negative="none", reconstructions=3, steps=20, smoothing=0.0, seed=7, device="cpu",
                          batch_size=2, axis=1, indices=(0, 2), preprocess="none", force=True),
}


def test_every_task_has_settings_and_the_table_covers_every_field():
    assert set(SETTINGS) == {"synthesis", "segmentation", "inpainting", "anomaly"}
    for cls in SETTINGS.values():
        assert settings_class(cls.task) is cls
        assert set(NON_DEFAULT[cls]) == set(cls.fields()), cls.__name__
        assert all(NON_DEFAULT[cls][f] != getattr(cls(), f) for f in cls.fields()), cls.__name__


@pytest.mark.parametrize("cls", list(NON_DEFAULT), ids=lambda c: c.__name__)
def test_settings_round_trip_through_json_and_pickle(cls):
    for settings in (cls(), cls(**NON_DEFAULT[cls])):
        text = settings.to_json()
        again = cls.from_json(text)
        assert again == settings and again.to_json() == text
        assert cls.from_dict(settings.to_dict()) == settings
        assert pickle.loads(pickle.dumps(settings)) == settings
    with pytest.raises(dataclasses.FrozenInstanceError):
        cls().seed = 3


def test_equal_values_are_equal_settings():
    a = EnsembleSettings(indices=range(2, 5), members=np.int64(3), preprocess={"n4": False})
    b = EnsembleSettings(indices=[2, 3, 4], members=3, preprocess=PreprocessSettings(n4=False))
    assert a == b and a.to_json() == b.to_json() and type(a.members) is int


@pytest.mark.parametrize("cls, field, value", [
    (SynthesisSettings, "n", 0), (SynthesisSettings, "steps", 2.5), (SynthesisSettings, "guidance", float("nan")),
    (SynthesisSettings, "eta", 2.0), (SynthesisSettings, "scheduler", "euler"), (SynthesisSettings, "device", "tpu"),
    (SynthesisSettings, "seed", -1), (SynthesisSettings, "class_name", 1.5),
    (EnsembleSettings, "members", 65), (EnsembleSettings, "chunk", 0), (EnsembleSettings, "threshold", float("inf")),
    (EnsembleSettings, "rule", "median"), (EnsembleSettings, "axis", 3), (EnsembleSettings, "indices", [-1]),
    (EnsembleSettings, "max_bytes", "lots"), (EnsembleSettings, "force", "yes"), (EnsembleSettings, "model", 3),
    (InpaintSettings, "mode", "slow"), (InpaintSettings, "jump_length", 2.5), (InpaintSettings, "proposals", 0),
    (InpaintSettings, "dilate", 9), (InpaintSettings, "batch_size", True), (InpaintSettings, "eta", -0.1),
    (AnomalySettings, "method", "median"), (AnomalySettings, "level", 0), (AnomalySettings, "smoothing", -1.0),
    (AnomalySettings, "preprocess", "always"), (AnomalySettings, "reconstructions", 33),
])
def test_a_bad_value_raises_one_error_naming_the_field(cls, field, value):
    names = {"n": "number of samples", "guidance": "guidance scale", "eta": "eta", "axis": "slicing axis",
             "indices": "slice indices", "rule": "fusion rule", "mode": "mode", "model": "model"}
    with pytest.raises(ValueError, match=names.get(field, field)):
        cls(**{field: value})
    with pytest.raises(ValueError, match=names.get(field, field)):  # the same check for overrides
        cls().replace(**{field: value})


def test_unknown_fields_are_refused_by_name():
    with pytest.raises(ValueError, match=r"unknown settings \['stepz'\]"):
        AnomalySettings().replace(stepz=3)
    with pytest.raises(ValueError, match=r"unknown settings \['colour'\]"):
        EnsembleSettings.from_json('{"colour": "red"}')
    with pytest.raises(ValueError, match="not JSON"):
        EnsembleSettings.from_json("{members: 3")


def test_inpaint_settings_resolve_the_mode():
    s = InpaintSettings(mode="quality", steps=30)
    assert (s.schedule.steps, s.schedule.jump_length, s.schedule.resamplings, s.schedule.eta) == (30, 5, 4, 1.0)
    with pytest.raises(ValueError, match="jump_length"):
        InpaintSettings(steps=10, jump_length=10)


def test_one_loader_for_every_task(tiny_image_model, tiny_seg_model):
    from napari_diffmed.models import load

    for task in ("synthesis", "inpainting", "anomaly"):
        assert load(task, tiny_image_model).card.task == "image"
    assert load("segmentation", str(tiny_seg_model), "cpu").card.task == "segmentation"
    with pytest.raises(ValueError, match="synthesis needs an image model"):
        load("synthesis", tiny_seg_model)
    with pytest.raises(ValueError, match="unknown task 'painting'"):
        load("painting")


def _same(a, b):
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y)
        elif field.name == "provenance":
            assert {k: v for k, v in x.items() if k != "seconds"} == {k: v for k, v in y.items() if k != "seconds"}


def test_keywords_and_settings_objects_give_identical_results(tiny_image_model, tiny_seg_model, small_volume):
    from napari_diffmed import anomaly_map, inpaint, segment_ensemble, synthesize

    p = small_volume
    _same(synthesize(tiny_image_model, n=2, class_name="lesion", **FAST),
          synthesize(tiny_image_model, settings=SynthesisSettings(n=2, class_name="lesion", **FAST)))
    seg = EnsembleSettings(members=2, indices=(2, 3), **FAST)
    _same(segment_ensemble(p.image, p.spacing, tiny_seg_model, members=2, indices=[2, 3], **FAST),
          segment_ensemble(p.image, p.spacing, tiny_seg_model, settings=seg))
    _same(segment_ensemble(p.image, p.spacing, tiny_seg_model, settings=seg.replace(members=5), members=2),
          segment_ensemble(p.image, p.spacing, tiny_seg_model, settings=seg))  # keywords override the object
    fill = InpaintSettings(proposals=2, steps=4, jump_length=2, resamplings=2, seed=1, device="cpu")
    _same(inpaint(p.image, p.mask, p.spacing, tiny_image_model, proposals=2, steps=4, jump_length=2, resamplings=2,
                  seed=1, device="cpu"),
          inpaint(p.image, p.mask, p.spacing, tiny_image_model, settings=fill))
    heat = AnomalySettings(method="gaussian", level=200, steps=10, indices=(2, 3), seed=4, device="cpu")
    _same(anomaly_map(p.image, p.spacing, tiny_image_model, method="gaussian", level=200, steps=10, indices=[2, 3],
                      seed=4, device="cpu"),
          anomaly_map(p.image, p.spacing, tiny_image_model, settings=heat))
