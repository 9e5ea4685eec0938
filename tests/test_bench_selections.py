import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from torch import nn

from arrcoc.bench.selections import (
    _cls_attention_per_head,
    cls_attention_scores,
    diversity_scores,
    grid_pool_sizes,
    pool_counts,
    pool_tokens,
)
from arrcoc.encoder import VisionEncoder

# ----------------------------------------------------------------------------------------------------- diversity


def _greedy_reference(features: torch.Tensor, k: int) -> list[int]:
    """Plain-Python greedy max-min cosine distance on one sample [N, D], in float64."""
    x = features.double()
    unit = x / x.norm(dim=-1, keepdim=True)
    center = unit.mean(0)
    center = center / center.norm()
    n = x.shape[0]
    to_center = [1.0 - float(unit[i] @ center) for i in range(n)]
    chosen = [max(range(n), key=lambda i: (to_center[i], -i))]
    while len(chosen) < k:
        best, best_d = None, -math.inf
        for j in range(n):
            if j in chosen:
                continue
            d = min(1.0 - float(unit[j] @ unit[c]) for c in chosen)
            if d > best_d:  # strict: ties keep the lowest index
                best, best_d = j, d
        chosen.append(best)
    return chosen


def _top(scores: torch.Tensor, k: int) -> list[set[int]]:
    return [set(row.tolist()) for row in scores.topk(k, dim=-1).indices]


def test_diversity_topk_is_nested_across_k():
    torch.manual_seed(0)
    scores = diversity_scores(torch.randn(3, 50, 8))
    assert scores.shape == (3, 50)
    assert all(sorted(row.tolist()) == list(range(1, 51)) for row in scores), "scores are a permutation of 1..N"
    for k in range(1, 50):
        for small, big in zip(_top(scores, k), _top(scores, k + 1), strict=True):
            assert small < big


def test_diversity_picks_one_per_cluster_and_the_outlier():
    torch.manual_seed(1)
    a, b, outlier = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 1.0, 0, 0]), torch.tensor([0, 0, 1.0, 0])
    cluster_a = a + 0.01 * torch.randn(10, 4)
    cluster_b = b + 0.01 * torch.randn(10, 4)
    feats = torch.cat([cluster_a, outlier[None], cluster_b])  # A: 0..9, outlier: 10, B: 11..20
    perm = torch.randperm(21)
    feats = feats[perm]
    group = {int(new): (0 if old < 10 else 1 if old == 10 else 2) for new, old in enumerate(perm.tolist())}
    top3 = _top(diversity_scores(feats[None]), 3)[0]
    assert sorted(group[i] for i in top3) == [0, 1, 2]


def test_diversity_matches_brute_force_greedy():
    torch.manual_seed(2)
    feats = torch.randn(2, 40, 16)
    scores = diversity_scores(feats)
    for i in range(2):
        order = scores[i].argsort(descending=True).tolist()
        for k in (1, 2, 5, 13, 40):
            assert order[:k] == _greedy_reference(feats[i], k), f"sample {i}, k={k}"


def test_diversity_is_deterministic_and_ties_go_to_lowest_index():
    torch.manual_seed(3)
    feats = torch.randn(2, 30, 8, dtype=torch.bfloat16)
    assert torch.equal(diversity_scores(feats), diversity_scores(feats.clone()))
    # All tokens identical: every distance ties, so the order is 0, 1, 2, ...
    same = torch.ones(1, 6, 4)
    assert diversity_scores(same).tolist() == [[6.0, 5.0, 4.0, 3.0, 2.0, 1.0]]


# ----------------------------------------------------------------------------------------------- cls attention


@pytest.fixture(scope="module")
def tiny_encoder():
    return VisionEncoder(pretrained="shapes")


def _reference_weights(visual, pixels, layer):
    """nn.MultiheadAttention's own per-head weights for block ``layer``: [B, heads, L, L]."""
    block = visual.transformer.resblocks[layer]
    seen = []
    handle = block.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    with torch.no_grad():
        visual(pixels)  # the plain forward
        handle.remove()
        h = block.ln_1(seen[0])
        _, weights = block.attn(h, h, h, need_weights=True, average_attn_weights=False)
    return weights


@pytest.mark.parametrize("layer", [0, 2, 3])
def test_cls_attention_matches_multihead_attention_weights(tiny_encoder, layer):
    visual = tiny_encoder.visual
    torch.manual_seed(4)
    pixels = torch.randn(2, 3, 96, 96)
    reference = _reference_weights(visual, pixels, layer)  # [B, heads, 577, 577]
    per_head = _cls_attention_per_head(visual, pixels, layer)  # [B, heads, 577]
    torch.testing.assert_close(per_head, reference[:, :, 0], atol=1e-5, rtol=0)
    scores = cls_attention_scores(visual, pixels, layer)
    assert scores.shape == (2, 576) and scores.dtype == torch.float32
    torch.testing.assert_close(scores, reference[:, :, 0, 1:].sum(1), atol=1e-5, rtol=0)
    assert not torch.allclose(scores[0], scores[1]), "different images, different scores"


def test_cls_attention_rows_exclude_the_class_token(tiny_encoder):
    visual = tiny_encoder.visual
    heads = visual.transformer.resblocks[0].attn.num_heads
    pixels = torch.randn(2, 3, 96, 96)
    per_head = _cls_attention_per_head(visual, pixels, tiny_encoder.layer)
    torch.testing.assert_close(per_head.sum(-1), torch.ones(2, heads))
    patches = per_head[:, :, 1:].sum(-1)  # [B, heads]
    assert (patches <= 1).all() and (patches < 1 - 1e-6).all(), "each head's patch share leaves the class token's own"
    scores = cls_attention_scores(visual, pixels, tiny_encoder.layer)
    assert (scores >= 0).all()
    torch.testing.assert_close(scores.sum(-1), patches.sum(-1))
    assert (scores.sum(-1) <= heads).all()
    # negative layers count from the end
    torch.testing.assert_close(cls_attention_scores(visual, pixels, -1), cls_attention_scores(visual, pixels, 3))


def test_cls_attention_leaves_the_tower_as_it_was(tiny_encoder):
    visual = tiny_encoder.visual
    blocks = visual.transformer.resblocks
    cls_attention_scores(visual, torch.randn(1, 3, 96, 96), 1)
    assert all(not blk._forward_pre_hooks for blk in blocks), "the pre-hook is removed"
    assert not visual.training


def test_cls_attention_rejects_other_towers(tiny_encoder):
    class TimmTrunkTower(nn.Module):
        pass

    with pytest.raises(NotImplementedError, match="TimmTrunkTower.*open_clip's VisionTransformer only"):
        cls_attention_scores(TimmTrunkTower(), torch.randn(1, 3, 96, 96), 0)
    custom = VisionTransformer(
        image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0, output_dim=16, block_type="custom"
    )
    with pytest.raises(NotImplementedError, match="CustomResidualAttentionBlock"):
        cls_attention_scores(custom, torch.randn(1, 3, 32, 32), 0)
    with pytest.raises(ValueError, match="out of range"):
        cls_attention_scores(tiny_encoder.visual, torch.randn(1, 3, 96, 96), 4)


# ------------------------------------------------------------------------------------------------------------ pool


@pytest.mark.parametrize(
    "k,expected",
    [
        (1, (1, 1)),
        (64, (8, 8)),
        (65, (8, 8)),
        (198, (14, 14)),
        (400, (20, 20)),
        (576, (24, 24)),
        (1000, (24, 24)),
        (12, (3, 4)),
    ],
)
def test_grid_pool_sizes_square_grid(k, expected):
    assert grid_pool_sizes(k, (24, 24)) == expected


def test_grid_pool_sizes_rules():
    for grid in [(24, 24), (24, 12), (5, 30)]:
        for k in range(1, grid[0] * grid[1] + 50):
            h, w = grid_pool_sizes(k, grid)
            assert 1 <= h <= grid[0] and 1 <= w <= grid[1] and h * w <= k
    assert grid_pool_sizes(200, (24, 12)) == (16, 12), "a capped width lets the height grow"
    with pytest.raises(ValueError, match="at least 1"):
        grid_pool_sizes(0, (24, 24))


def test_pool_constant_regions_pool_to_their_value():
    # 24x24 map made of 8x8 regions of 3x3 patches, each region a constant vector; pooling to 8x8 recovers them.
    torch.manual_seed(5)
    values = torch.randn(1, 8, 8, 4)  # [B, 8, 8, D]
    fmap = values.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2)  # [B, 24, 24, D]
    tokens, mask = pool_tokens(fmap.reshape(1, 576, 4), (24, 24), torch.tensor([64]))
    assert tokens.shape == (1, 64, 4) and mask.all()
    torch.testing.assert_close(tokens, values.reshape(1, 64, 4))


@pytest.mark.parametrize("k", [64, 65, 198, 400, 576])
def test_pool_counts_on_24x24(k):
    feats = torch.randn(1, 576, 6)
    tokens, mask = pool_tokens(feats, (24, 24), torch.tensor([k]))
    h, w = grid_pool_sizes(k, (24, 24))
    assert int(mask.sum()) == h * w <= k and tokens.shape == (1, h * w, 6)
    assert pool_counts(torch.tensor([k]), (24, 24)).tolist() == [h * w]
    expected = F.adaptive_avg_pool2d(feats.transpose(1, 2).reshape(1, 6, 24, 24), (h, w)).flatten(2).transpose(1, 2)
    torch.testing.assert_close(tokens, expected)


def test_pool_full_budget_returns_features_unchanged():
    feats = torch.randn(2, 576, 5)
    tokens, mask = pool_tokens(feats, (24, 24), torch.tensor([576, 700]))
    assert torch.equal(tokens, feats) and mask.all()


def test_pool_mixed_budgets_are_padded_and_masked():
    torch.manual_seed(6)
    feats = torch.randn(3, 576, 4)
    budgets = torch.tensor([10, 576, 65])
    tokens, mask = pool_tokens(feats, (24, 24), budgets)
    assert tokens.shape == (3, 576, 4) and mask.shape == (3, 576)
    assert mask.sum(-1).tolist() == [9, 576, 64] == pool_counts(budgets, (24, 24)).tolist()
    for i, count in enumerate([9, 576, 64]):
        assert mask[i, :count].all() and not mask[i, count:].any(), "real tokens first, then padding"
        assert (tokens[i, count:] == 0).all()
        alone, _ = pool_tokens(feats[i : i + 1], (24, 24), budgets[i : i + 1])
        torch.testing.assert_close(tokens[i : i + 1, :count], alone)
    assert torch.equal(tokens[1], feats[1])


def test_pool_rejects_bad_shapes():
    with pytest.raises(ValueError, match="grid"):
        pool_tokens(torch.randn(1, 575, 4), (24, 24), torch.tensor([64]))
    with pytest.raises(ValueError, match="budgets"):
        pool_tokens(torch.randn(2, 576, 4), (24, 24), torch.tensor([64]))
