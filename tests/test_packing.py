import pytest
import torch

from arrcoc.packing import IGNORE_INDEX, pack_multimodal

IMG = 9


def _inputs():
    # sample 0: [5, IMG, 6, 7] (len 4), sample 1: [IMG, 8] + 2 padding
    ids = torch.tensor([[5, IMG, 6, 7], [IMG, 8, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 7], [-100, 8, -100, -100]])
    text = ids.float().unsqueeze(-1).repeat(1, 1, 2)  # [2, 4, 2]: embedding = token id
    visual = torch.tensor([[[100.0, 100], [101, 101], [102, 102]], [[200, 200], [0, 0], [0, 0]]])  # [2, 3, 2]
    vmask = torch.tensor([[True, True, True], [True, False, False]])
    return text, ids, mask, visual, vmask, labels


def test_right_padding_layout():
    text, ids, mask, visual, vmask, labels = _inputs()
    p = pack_multimodal(text, ids, mask, visual, vmask, IMG, labels=labels)
    assert p.embeds.shape == (2, 6, 2)  # sample 0: 3 text + 3 visual = 6; sample 1: 1 + 1 = 2
    assert p.embeds[0, :, 0].tolist() == [5, 100, 101, 102, 6, 7]
    assert p.embeds[1, :2, 0].tolist() == [200, 8]
    assert p.attention_mask.tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert p.position_ids[0].tolist() == list(range(6)) and p.position_ids[1, :2].tolist() == [0, 1]
    assert p.labels.tolist() == [[IGNORE_INDEX] * 5 + [7], [IGNORE_INDEX, 8] + [IGNORE_INDEX] * 4]
    assert p.visual_mask.tolist() == [[False, True, True, True, False, False], [True] + [False] * 5]


def test_left_padding_for_generation():
    text, ids, mask, visual, vmask, _ = _inputs()
    p = pack_multimodal(text, ids, mask, visual, vmask, IMG, padding_side="left")
    assert p.labels is None
    assert p.attention_mask[1].tolist() == [0, 0, 0, 0, 1, 1]
    assert p.embeds[1, 4:, 0].tolist() == [200, 8] and p.position_ids[1, 4:].tolist() == [0, 1]
    with pytest.raises(ValueError, match="padding_side='middle'"):
        pack_multimodal(text, ids, mask, visual, vmask, IMG, padding_side="middle")


def test_two_placeholders_rejected():
    text, ids, mask, visual, vmask, _ = _inputs()
    ids[0, 2] = IMG
    with pytest.raises(ValueError, match=r"input_ids\[0\] holds 2 image placeholder tokens"):
        pack_multimodal(text, ids, mask, visual, vmask, IMG)
