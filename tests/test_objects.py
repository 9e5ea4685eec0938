"""Object locations: the shard format's ``objects``, where the encoder's transform puts them
(``crop_boxes``, checked against the real transform), which patches they cover (``patch_masks``), and
how they travel through preprocessing and batches without reaching the model."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from arrcoc.data import model_inputs
from arrcoc.data.collate import collate_vqa
from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.preprocess import VQAPreprocessor
from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.data.sample_task import SampleTaskConfig
from arrcoc.data.shards import BadSample, validate_meta
from arrcoc.processing import build_transform, crop_boxes, crop_geometry, patch_masks
from arrcoc.processing import image as image_mod
from arrcoc.processing.tiny_tokenizer import build_tiny_tokenizer

META = {"question": "q", "answers": ["a"], "question_id": 1}


# ------------------------------------------------------------------------------------------ format
def test_valid_objects_are_kept():
    out = validate_meta({**META, "objects": [{"box": [0, 0.1, 0.5, 1], "named": True},
                                             {"box": (0.2, 0.2, 0.3, 0.4), "named": False, "label": "x"}]})
    assert out["objects"] == [{"box": [0.0, 0.1, 0.5, 1.0], "named": True},
                              {"box": [0.2, 0.2, 0.3, 0.4], "named": False}]
    assert "objects" not in validate_meta(META) and validate_meta({**META, "objects": []})["objects"] == []


@pytest.mark.parametrize("objects, says", [
    ({"box": [0, 0, 1, 1], "named": True}, "must be a list"),
    ([[0, 0, 1, 1]], "objects[0]"),
    ([{"box": [0, 0, 1], "named": True}], "4 numbers"),
    ([{"box": [0, 0, "1", 1], "named": True}], "4 numbers"),
    ([{"box": [0, 0, True, 1], "named": True}], "4 numbers"),
    ([{"named": True}], "4 numbers"),
    ([{"box": [0.5, 0, 0.5, 1], "named": True}], "x0 < x1"),
    ([{"box": [0, 0.6, 1, 0.2], "named": True}], "y0 < y1"),
    ([{"box": [-0.1, 0, 1, 1], "named": True}], "normalised"),
    ([{"box": [0, 0, 1, 1.5], "named": True}], "normalised"),
    ([{"box": [0, 0, float("nan"), 1], "named": True}], "normalised"),
    ([{"box": [0, 0, 1, 1], "named": True}, {"box": [0, 0, 1, 1], "named": 1}], "objects[1].named"),
    ([{"box": [0, 0, 1, 1]}], "named must be true or false"),
])
def test_malformed_objects_are_bad_samples(objects, says):
    with pytest.raises(BadSample) as err:
        validate_meta({**META, "objects": objects})
    assert err.value.reason == "bad_objects" and says in str(err.value)


# ------------------------------------------------------------------------------------------ crop geometry
def _with_mode(monkeypatch, mode, size=None):
    """Make the tiny encoder's preprocess config use ``mode`` (and ``size``): the transform and
    ``crop_boxes`` both read it."""
    original = image_mod._preprocess_cfg

    def cfg(name, pretrained):
        out = original(name, pretrained)
        out["resize_mode"] = mode
        if size is not None:
            out["size"] = size
        return out

    monkeypatch.setattr(image_mod, "_preprocess_cfg", cfg)


def _bright_box(x: torch.Tensor) -> list[float] | None:
    """[x0, y0, x1, y1] in output pixels of the bright region of a transformed black/white image."""
    on = x.mean(0) > x.mean(0).min() + (x.mean(0).max() - x.mean(0).min()) / 2  # [H, W]
    if x.mean(0).max() - x.mean(0).min() < 1 or not on.any():
        return None
    rows, cols = on.any(1).nonzero().flatten(), on.any(0).nonzero().flatten()
    return [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]


RECTS = [(30, 20, 70, 60), (0, 0, 25, 100), (150, 70, 200, 90), (5, 40, 195, 55)]  # pixels of a 200 x 100 image


@pytest.mark.parametrize("mode, size, image", [
    ("shortest", None, (200, 100)), ("shortest", None, (100, 200)), ("shortest", None, (137, 91)),
    ("squash", None, (200, 100)), ("squash", None, (91, 137)),
    ("longest", None, (200, 100)), ("longest", None, (100, 200)), ("longest", None, (137, 91)),
    ("shortest", (64, 96), (200, 100)), ("longest", (64, 96), (100, 200)),
])
def test_crop_boxes_follow_the_real_transform(monkeypatch, mode, size, image):
    _with_mode(monkeypatch, mode, size)
    transform = build_transform()
    geo = crop_geometry()
    th, tw = geo.size
    w, h = image
    for rx0, ry0, rx1, ry1 in RECTS:
        x0, x1 = rx0 * w // 200, rx1 * w // 200  # the rectangles scaled to this image
        y0, y1 = ry0 * h // 100, ry1 * h // 100
        arr = np.zeros((h, w, 3), np.uint8)
        arr[y0:y1, x0:x1] = 255
        out = transform(Image.fromarray(arr))
        assert out.shape == (3, th, tw)
        (box,) = crop_boxes([[x0 / w, y0 / h, x1 / w, y1 / h]], image)
        assert box == geo([[x0 / w, y0 / h, x1 / w, y1 / h]], image)[0]
        want = [box[0] * tw, box[1] * th, box[2] * tw, box[3] * th]
        seen = _bright_box(out)
        if want[2] - want[0] < 0.5 or want[3] - want[1] < 0.5:  # cropped away: the box is empty
            assert (want[0] == want[2] or want[1] == want[3]) and seen is None, (want, seen)
            continue
        assert seen is not None and np.abs(np.subtract(seen, want)).max() <= 1.0, (mode, image, want, seen)
        if mode == "squash":
            assert np.allclose(box, [x0 / w, y0 / h, x1 / w, y1 / h])


def test_centre_crop_clips_and_empties_boxes():
    geo = crop_geometry()  # the tiny encoder: shortest side to 96, centre crop
    assert geo.resize_mode == "shortest" and geo.size == (96, 96)
    # a 200 x 100 image keeps x in [50, 150): a box across the edge is clipped, one outside is empty
    across, outside, inside = geo([[0.2, 0.1, 0.3, 0.2], [0.0, 0.5, 0.2, 0.9], [0.25, 0.0, 0.75, 1.0]], (200, 100))
    assert across[0] == 0.0 and across[2] == pytest.approx((60 - 50) / 100, abs=0.01)
    assert outside[0] == outside[2] == 0.0 and outside[1] < outside[3]
    assert inside == pytest.approx([0.0, 0.0, 1.0, 1.0], abs=0.01)
    assert geo([], (200, 100)) == []


# ------------------------------------------------------------------------------------------ patch masks
def test_patch_masks_on_a_constructed_case():
    objects = [
        {"box": [0.0, 0.0, 0.5, 0.5], "named": True},  # the top-left 2 x 2 patches of a 4 x 4 grid
        {"box": [0.3, 0.3, 0.9, 0.6], "named": False},  # centres 0.375, 0.625, 0.875 in x; 0.375 in y
        {"box": [0.0, 0.8, 1.0, 1.0], "named": False},  # the bottom row
        {"box": [0.6, 0.0, 0.6, 1.0], "named": True},  # empty: covers nothing
    ]
    named, other = patch_masks(objects, (4, 4))
    assert named.dtype == other.dtype == torch.bool and named.shape == other.shape == (16,)
    grid = lambda m: m.view(4, 4).int().tolist()  # noqa: E731
    assert grid(named) == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    # the second object's patch (1, 1) is a named-object patch too, so not "other"
    assert grid(other) == [[0, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]]
    # a non-square grid: row j, column i is index j * w + i
    named, other = patch_masks([{"box": [0.5, 0.0, 1.0, 0.5], "named": True}], (2, 3))
    assert named.tolist() == [False, True, True, False, False, False] and not other.any()
    assert not any(m.any() for m in patch_masks([], (3, 3)))


# ------------------------------------------------------------------------------------------ preprocess, batches
def _pre(train=False, crop=True):
    return VQAPreprocessor(build_transform(), VQAPromptBuilder(build_tiny_tokenizer()), train=train,
                           image_size=(96, 96), crop=crop_geometry() if crop else None)


def _sample(**extra):
    return {"question": "What color is it?", "answers": ["red"], "question_id": 3,
            "image": Image.new("RGB", (200, 100)), **extra}


def test_preprocess_maps_boxes_and_batches_carry_them():
    objects = [{"box": [0.2, 0.1, 0.6, 0.5], "named": True}, {"box": [0.0, 0.5, 0.2, 0.9], "named": False}]
    for train in (True, False):
        pre = _pre(train)
        a = pre(_sample(objects=objects))
        assert a["objects"] == [{"box": crop_boxes([o["box"]], (200, 100))[0], "named": o["named"]} for o in objects]
        assert a["objects"][0]["box"] == pytest.approx([0.0, 0.1, 0.7, 0.5], abs=0.011)
        assert a["objects"][1]["box"][0] == a["objects"][1]["box"][2] == 0.0  # cropped away: empty
        b = pre(_sample())  # no objects: []
        assert b["objects"] == [] and pre.placeholder()["objects"] == []
        batch = collate_vqa([a, b, pre.placeholder()], pad_token_id=0)
        assert batch["objects"] == [a["objects"], [], []]
        assert "objects" not in model_inputs(batch)
        json.dumps(batch["objects"])  # plain values


def test_feature_samples_pass_boxes_through():
    pre = _pre()
    box = [0.1, 0.2, 0.3, 0.4]
    out = pre({"question": "q", "answers": ["a"], "question_id": 1, "features": np.zeros((4, 8), np.float32),
               "objects": [{"box": box, "named": True}]})
    assert out["objects"] == [{"box": box, "named": True}]


def test_without_a_crop_no_objects_and_the_rest_unchanged():
    with_crop, without = _pre(crop=True), _pre(crop=False)
    s = _sample(objects=[{"box": [0.2, 0.1, 0.6, 0.5], "named": True}])
    a, b = with_crop(s), without(s)
    assert "objects" not in b and "objects" not in without.placeholder()
    assert set(a) - set(b) == {"objects"}
    assert all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in b)


def test_sample_task_batches_carry_objects(tmp_path):
    dm = VQADataModule(sample_task=SampleTaskConfig(train=16, val=6, samples_per_shard=8),
                       cache_dir=str(tmp_path / "cache"), batch_size=4, eval_batch_size=4, num_workers=0,
                       samples_per_epoch=8, shuffle_buffer=4)
    dm.prepare_data()
    dm.setup("fit")
    for batch in (next(iter(dm.train_dataloader())), *dm.val_dataloader()):
        assert len(batch["objects"]) == len(batch["question_id"])
        assert "objects" not in model_inputs(batch)
        for objs, valid in zip(batch["objects"], batch["valid"], strict=True):
            assert (len(objs) >= 2) if valid else objs == []  # a close-up has 2 to 4 objects
            # the sample task's images are square: the tiny encoder's resize keeps boxes where they are
            assert all(0 <= o["box"][0] < o["box"][2] <= 1 and 0 <= o["box"][1] < o["box"][3] <= 1 for o in objs)
