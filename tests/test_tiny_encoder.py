import numpy as np
import torch

from arrcoc.data.sample_task import label_map, make_scene
from arrcoc.encoder import VisionEncoder
from arrcoc.tiny_encoder import pretrain, shapes_checkpoint


def test_label_map_matches_the_scene():
    import random

    objs = make_scene(random.Random(3), 128)
    labels = label_map(objs, 128)
    for i, o in enumerate(objs):
        assert labels[o.y, o.x] == i + 1  # every shape covers its centre
    assert labels[0, 0] == 0 or any(o.x - o.r <= 0 and o.y - o.r <= 0 for o in objs)


def test_pretraining_learns_colours_and_loads_through_open_clip(tmp_path):
    stats = pretrain(tmp_path / "tiny.pt", steps=100, batch_size=8, lr=5e-3)
    assert stats["color_acc_on_objects"] > 0.4  # 7 colours: chance is 1/7
    enc = VisionEncoder("arrcoc-tiny-vit", pretrained=str(tmp_path / "tiny.pt"))
    saved = torch.load(tmp_path / "tiny.pt", weights_only=True)
    assert torch.equal(enc.visual.conv1.weight, saved["visual.conv1.weight"])


def test_shapes_tag_is_made_once_and_cached():
    path = shapes_checkpoint()
    assert path.is_file() and path.name.endswith("-s3-seed0.pt")  # the tests' short pretraining
    stamp = path.stat().st_mtime_ns
    enc = VisionEncoder("arrcoc-tiny-vit", pretrained="shapes")
    assert shapes_checkpoint().stat().st_mtime_ns == stamp
    assert not np.allclose(enc.visual.conv1.weight.detach().numpy(),
                           VisionEncoder("arrcoc-tiny-vit").visual.conv1.weight.detach().numpy())
