import pytest
import torch

from arrcoc.data.sample_task import label_map, make_scene
from arrcoc.encoder import VisionEncoder
from arrcoc.presets import shapes_checkpoint
from arrcoc.pretrain.encoder import pretrain

SHAPE_BAR = 0.7  # the shipped weights' probe reaches 0.82 on these scenes


def test_label_map_matches_the_scene():
    import random

    objs = make_scene(random.Random(3), 128)
    labels = label_map(objs, 128)
    for i, o in enumerate(objs):
        assert labels[o.y, o.x] == i + 1  # every shape covers its centre
    assert labels[0, 0] == 0 or any(o.x - o.r <= 0 and o.y - o.r <= 0 for o in objs)


@pytest.mark.slow  # a pretraining run
def test_pretraining_learns_colours_and_loads_through_open_clip(tmp_path):
    stats = pretrain(tmp_path / "tiny.pt", steps=100, batch_size=8, lr=5e-3)
    assert stats["color_acc_on_objects"] > 0.4  # 7 colours: chance is 1/7
    enc = VisionEncoder("arrcoc-tiny-vit", pretrained=str(tmp_path / "tiny.pt"))
    saved = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert torch.equal(enc.visual.conv1.weight, saved["visual.conv1.weight"])


@pytest.mark.slow  # fits a linear probe on the shipped encoder
def test_shipped_weights_load_by_tag_and_see_shapes():
    """The shipped encoder's features must linearly encode colour and shape on fresh scenes: a probe
    fitted on 48 scenes is scored on 32 others (chance: 1/7 colours, 1/5 shapes)."""
    import random

    from arrcoc.pretrain.encoder import COLOR_IDS, SHAPE_IDS, _batch

    enc = VisionEncoder("arrcoc-tiny-vit", pretrained="shapes")
    saved = torch.load(shapes_checkpoint(), weights_only=True)
    assert torch.equal(enc.visual.conv1.weight, saved["visual.conv1.weight"])
    grid = enc.grid[0]
    pixels, color, shape, _ = _batch(random.Random("probe"), enc.transform, 80, 128, grid, 128 / grid)
    with torch.no_grad():
        feats = enc(pixels).flat()  # [80, N, D]
    torch.manual_seed(0)
    for labels, classes, bar in ((color, len(COLOR_IDS) + 1, 0.9), (shape, len(SHAPE_IDS) + 1, SHAPE_BAR)):
        probe = torch.nn.Linear(feats.shape[-1], classes)
        opt = torch.optim.Adam(probe.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(probe(feats[:48]).flatten(0, 1), labels[:48].flatten()).backward()
            opt.step()
        on = labels[48:] > 0
        acc = (probe(feats[48:]).argmax(-1)[on] == labels[48:][on]).float().mean().item()
        assert acc > bar, (classes, acc)
