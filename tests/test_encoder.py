import pytest
import torch
from PIL import Image

from arrcoc.encoder import VisionEncoder


def test_tiny_encoder_grid_and_frozen():
    enc = VisionEncoder("arrcoc-tiny-vit")
    assert enc.grid == (24, 24) and enc.num_patches == 576 and enc.width == 64 and enc.has_cls
    assert enc.frozen and not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.visual.training, "a frozen tower stays in eval mode inside a training model"
    out = enc(torch.randn(2, 3, 96, 96))
    assert out.patches.shape == (2, 24, 24, 64) and out.cls.shape == (2, 64)
    assert out.flat().shape == (2, 576, 64)
    assert not out.patches.requires_grad


def test_layer_choice_changes_features():
    torch.manual_seed(0)
    last = VisionEncoder("arrcoc-tiny-vit", layer=-1)
    torch.manual_seed(0)
    second = VisionEncoder("arrcoc-tiny-vit", layer=-2)
    x = torch.randn(1, 3, 96, 96)
    assert last.layer == 3 and second.layer == 2 and len(second.blocks()) == 3
    assert not torch.allclose(last(x).patches, second(x).patches)


def test_unfrozen_encoder_trains():
    enc = VisionEncoder("arrcoc-tiny-vit", frozen=False)
    enc.train()
    assert enc.visual.training and not enc.frozen
    enc(torch.randn(1, 3, 96, 96)).patches.sum().backward()
    assert enc.blocks()[0].attn.in_proj_weight.grad is not None


@pytest.mark.parametrize("mode,size", [("L", (1, 1)), ("RGBA", (4000, 3000)), ("P", (37, 5)),
                                       ("RGB", (96, 96)), ("I;16", (50, 60)), ("CMYK", (10, 400))])
def test_any_image_size_and_mode(mode, size):
    enc = VisionEncoder("arrcoc-tiny-vit")
    x = enc.transform(Image.new(mode, size))
    assert x.shape == (3, 96, 96) and torch.isfinite(x).all()
    assert enc(x[None]).patches.shape == (1, 24, 24, 64)


def test_invalid_name_and_layer():
    with pytest.raises(ValueError, match="encoder.name='no-such-model'"):
        VisionEncoder("no-such-model")
    with pytest.raises(ValueError, match=r"encoder.layer=5 .* valid: -4..3"):
        VisionEncoder("arrcoc-tiny-vit", layer=5)


@pytest.mark.slow  # builds the real EVA02-L/14-336 tower (random weights)
def test_eva02_l_14_336_without_weights():
    """The real preset's architecture: 24x24 = 576 patch tokens of width 1024 (random weights)."""
    enc = VisionEncoder("EVA02-L-14-336", pretrained=None)
    assert enc.grid == (24, 24) and enc.num_patches == 576 and enc.width == 1024 and enc.has_cls
    assert enc.image_size == (336, 336) and len(enc.blocks()) == 23  # layer -2: the last block never runs
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 336, 336))
    assert out.patches.shape == (1, 24, 24, 1024) and out.cls.shape == (1, 1024)


def test_local_checkpoint_path_loads_weights(tmp_path):
    import open_clip

    torch.manual_seed(123)
    clip = open_clip.create_model("arrcoc-tiny-vit")
    path = tmp_path / "tiny.pt"
    torch.save(clip.state_dict(), path)
    enc = VisionEncoder("arrcoc-tiny-vit", pretrained=str(path))
    assert torch.equal(enc.visual.conv1.weight, clip.visual.conv1.weight)
    assert enc.frozen


def test_partially_unfrozen_tower_trains_only_its_trainable_blocks():
    enc = VisionEncoder("arrcoc-tiny-vit", layer=-1)
    enc.blocks()[-1].requires_grad_(True)
    enc.train()
    assert not enc.frozen
    assert [b.training for b in enc.blocks()] == [False, False, False, True]
    enc.eval()
    assert not any(b.training for b in enc.blocks())
