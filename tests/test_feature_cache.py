"""The frozen-encoder feature cache: written once per image, equal to the live encoder's output, streamed
by the data module into a model that skips the encoder, and refused where it would be wrong."""

from pathlib import Path

import numpy as np
import pytest
import torch

from arrcoc.cache_features import cache_features, encoder_spec
from arrcoc.cli import main as arrcoc_main
from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.features import read_stamp, to_float32, to_stored
from arrcoc.data.sample_task import make_sample
from arrcoc.data.shards import ShardWriter, encode_image, read_manifest
from arrcoc.encoder import VisionEncoder
from arrcoc.model import ARRCOCModel
from arrcoc.phases import AlignPhase
from arrcoc.processing import build_transform

ROOT = Path(__file__).resolve().parents[1]
PHASE1 = str(ROOT / "configs" / "phase1.yaml")  # the tiny encoder with its `shapes` weights, layer -2
#: (image, image_id) of each question: images 0 and 1 are asked about twice (shared id), image 3 has no id
QUESTIONS = [(0, 10), (0, 10), (1, 11), (1, 11), (2, 12), (3, None)]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, dict]:
    """Image shards: six questions about four images, and one sample whose image is not an image."""
    out = tmp_path_factory.mktemp("images")
    pics = {}
    with ShardWriter(out, prefix="val", samples_per_shard=4) as writer:
        for n, (img, image_id) in enumerate(QUESTIONS):
            meta, pic = make_sample("val", img, seed=0, size=128)
            meta["question_id"] = n
            meta.pop("image_id")
            if image_id is not None:
                meta["image_id"] = image_id
            pics[n] = pic
            writer.write(f"q{n}", meta, image=encode_image(pic, "png"), image_ext="png")
        writer.write("broken", {"question": "What?", "answers": ["no"], "question_id": 99}, image=b"not an image",
                     image_ext="png")
    return out, pics


@pytest.fixture(scope="module")
def cache(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "val"
    cache_features([PHASE1], images[0], out, dtype="float16", batch_size=3, device="cpu", workers=2, progress=False)
    return out


def test_the_config_names_the_encoder():
    assert encoder_spec([PHASE1]) == {"name": "arrcoc-tiny-vit", "pretrained": "shapes", "layer": -2}


def test_each_image_is_stored_once_and_each_question_kept(cache):
    stamp = read_stamp(cache)
    assert (stamp.images, stamp.questions) == (4, 6)  # 3 ids + 1 without; the broken sample is skipped
    assert (stamp.encoder, stamp.pretrained, stamp.layer, stamp.dtype) == ("arrcoc-tiny-vit", "shapes", 2, "float16")
    assert np.load(cache / "features.npy", mmap_mode="r").shape[1:] == (576, 64)
    assert read_manifest(cache)["total"] == 6
    assert not list(cache.glob("*.png"))  # no pixels


def test_cached_features_equal_the_live_encoder(images, cache):
    dm = VQADataModule(val=str(cache), encoder_pretrained="shapes", eval_batch_size=6, num_workers=0)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert "pixel_values" not in batch and batch["patch_features"].shape == (6, 576, 64)
    enc = VisionEncoder("arrcoc-tiny-vit", pretrained="shapes")
    transform = build_transform("arrcoc-tiny-vit", "shapes")
    pics = images[1]
    with torch.no_grad():
        live = enc(torch.stack([transform(pics[int(q)]) for q in batch["question_id"]]))
    torch.testing.assert_close(batch["patch_features"], live.flat(), atol=2e-3, rtol=2e-3)  # float16 storage
    if live.cls is not None:
        torch.testing.assert_close(batch["cls_features"], live.cls, atol=2e-3, rtol=2e-3)
    # the two questions about image 0 (question ids 0 and 1) read the same row
    first, second = (list(map(int, batch["question_id"])).index(q) for q in (0, 1))
    assert torch.equal(batch["patch_features"][first], batch["patch_features"][second])


def test_the_model_skips_the_encoder_and_answers_the_same(images, cache):
    dm = VQADataModule(val=str(cache), encoder_pretrained="shapes", eval_batch_size=6, num_workers=0)
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    images_dm = VQADataModule(val=str(images[0]), encoder_pretrained="shapes", eval_batch_size=6, num_workers=0)
    images_dm.setup("validate")
    pixels = next(iter(images_dm.val_dataloader()))
    model = ARRCOCModel(encoder=VisionEncoder("arrcoc-tiny-vit", pretrained="shapes")).eval()
    keys = ("input_ids", "attention_mask", "labels", "question_ids", "question_mask")
    with torch.no_grad():
        cached = model(**{k: batch[k] for k in keys}, patch_features=batch["patch_features"],
                       cls_features=batch.get("cls_features"), budget=128)
        live = model(**{k: pixels[k] for k in keys}, pixel_values=pixels["pixel_values"], budget=128)
    torch.testing.assert_close(cached.lm_loss, live.lm_loss, atol=1e-2, rtol=1e-2)
    assert torch.equal(cached.allocation.visual_tokens, live.allocation.visual_tokens)


def test_bfloat16_round_trip_keeps_three_digits():
    x = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    back = to_float32(to_stored(x, "bfloat16"), "bfloat16")
    np.testing.assert_allclose(back, x, rtol=8e-3)
    assert not np.array_equal(back, x)  # it is stored in 16 bits


def test_a_cache_of_other_weights_is_refused(cache):
    dm = VQADataModule(val=str(cache), encoder_pretrained=None, num_workers=0)  # random weights, not `shapes`
    with pytest.raises(ValueError, match=r"pretrained='shapes' \(this run: None\)"):
        dm.setup("validate")


def test_a_cache_of_another_layer_is_refused(cache):
    phase = AlignPhase(ARRCOCModel(encoder=VisionEncoder("arrcoc-tiny-vit", pretrained="shapes", layer=-1)))

    class Data:
        feature_caches = {str(cache): read_stamp(cache)}

    with pytest.raises(ValueError, match=r"layer=2 \(this model: 3\)"):
        phase.check_feature_caches(Data())


def test_training_an_encoder_on_cached_features_is_refused():
    phase = AlignPhase(ARRCOCModel())
    batch = {"patch_features": torch.zeros(1, 576, 64)}
    phase.model.encoder.blocks()[-1].requires_grad_(True)  # what a freezing schedule's unfreeze does
    with pytest.raises(ValueError, match="encoder trains"):
        phase.on_train_batch_start(batch, 0)


def test_the_command_refuses_to_overwrite(images, cache, capsys):
    argv = ["data", "cache-features", "--config", PHASE1, "--in", str(images[0]), "--out", str(cache)]
    assert arrcoc_main(argv) == 2
    assert "already holds" in capsys.readouterr().out


def test_the_command_writes_a_cache(images, tmp_path, capsys):
    out = tmp_path / "bf16"
    argv = ["data", "cache-features", "--config", PHASE1, "--in", str(images[0]), "--out", str(out),
            "--dtype", "bfloat16", "--device", "cpu"]
    assert arrcoc_main(argv) == 0
    assert "6 questions, 4 images" in capsys.readouterr().out
    assert read_stamp(out).dtype == "bfloat16"
    assert not list(out.glob(".*.tmp"))  # temporary files renamed into place
