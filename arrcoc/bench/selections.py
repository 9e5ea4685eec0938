"""Equal-token baselines for ``arrcoc bench tokens``: which visual tokens a sample keeps without a learned scorer.

The token benchmark compares the model's learned selection with training-free rules at the *same* per-sample
token counts. Each rule here is a small pure function (torch only):

* :func:`diversity_scores` -- DivPrune's rule: greedy max-min cosine-distance selection, as rank scores whose
  top-k is the greedy selection of k tokens for every k.
* :func:`cls_attention_scores` -- VisionZip / FasterVLM's rule: the class token's attention to each patch inside
  one transformer block of the vision tower (open_clip's own ``VisionTransformer`` only).
* :func:`pool_tokens` -- the ``pool`` baseline: each sample's patch grid average-pooled to a near-square grid of
  at most its budget, with :func:`grid_pool_sizes` the (h, w) rule and :func:`pool_counts` the resulting counts.

Shapes: B samples, N = H * W patch tokens in raster order, D feature width, K_max the batch's largest count.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["cls_attention_scores", "diversity_scores", "grid_pool_sizes", "pool_counts", "pool_tokens"]


# --------------------------------------------------------------------------------------------- diversity (DivPrune)


def diversity_scores(features: Tensor) -> Tensor:
    """Rank scores whose top-k is, for every k, the greedy max-min cosine-distance selection of k tokens.

    Rule (DivPrune): start from one token, then repeatedly add the unselected token whose minimum cosine distance
    (``1 - cos``) to the already-selected set is largest. The greedy order is nested (the first k picks do not
    depend on k), so one pass gives every budget: ``scores[b, n] = N - position of n in sample b's order``
    (the first pick scores N, the last 1; all scores are distinct, so ``topk`` has no ties).

    Deterministic start: the token farthest in cosine distance from the sample's mean direction (the mean of the
    unit-normalised features), i.e. the least typical token. Ties, at the start and at every step, go to the
    lowest index. A zero feature vector has cosine distance 1 to everything. Computed in float32 whatever the
    input dtype; vectorised over the batch: one [B, N, N] similarity matrix, then one cheap step per token.

    Args:
        features: [B, N, D] token features (any float dtype).

    Returns:
        [B, N] float32 scores on ``features.device``.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [B, N, D], got shape {tuple(features.shape)}")
    b, n, _ = features.shape
    unit = F.normalize(features.float(), dim=-1)  # [B, N, D]
    rows = torch.arange(b, device=features.device)  # [B]
    scores = torch.zeros(b, n, dtype=torch.float32, device=features.device)  # [B, N]
    if n == 0:
        return scores
    taken = torch.zeros(b, n, dtype=torch.bool, device=features.device)  # [B, N]

    center = F.normalize(unit.mean(dim=1), dim=-1)  # [B, D] mean direction
    dist_to_center = 1.0 - torch.einsum("bnd,bd->bn", unit, center)  # [B, N]
    pick = dist_to_center.argmax(dim=-1)  # [B]; argmax returns the first (lowest-index) maximum
    sim = unit @ unit.transpose(1, 2)  # [B, N, N] cosine similarities
    min_dist = torch.full((b, n), float("inf"), device=features.device)  # [B, N] distance to the selected set
    for step in range(n):
        scores[rows, pick] = float(n - step)
        taken[rows, pick] = True
        if step == n - 1:
            break
        dist = 1.0 - sim[rows, pick]  # [B, N] cosine distance to the new pick
        min_dist = torch.minimum(min_dist, dist)
        pick = min_dist.masked_fill(taken, float("-inf")).argmax(dim=-1)  # [B]
    return scores


# ------------------------------------------------------------------------------------ class attention (VisionZip)


def _not_implemented(what: object) -> NotImplementedError:
    return NotImplementedError(
        f"cls_attention_scores: got {type(what).__name__}; this baseline is implemented for open_clip's "
        "VisionTransformer only (open_clip.transformer.VisionTransformer with ResidualAttentionBlock blocks "
        "around nn.MultiheadAttention), not e.g. timm trunks such as EVA02 whose attention applies rotary embeddings"
    )


def _cls_attention_per_head(visual: nn.Module, pixels: Tensor, layer: int) -> Tensor:
    """The class token's attention probabilities over all keys in block ``layer``, per head: [B, heads, 1 + N].

    Key 0 is the class token itself, keys 1.. the patches in raster order. Each row sums to 1 (float32).
    """
    from open_clip.transformer import ResidualAttentionBlock, VisionTransformer

    if not isinstance(visual, VisionTransformer):
        raise _not_implemented(visual)
    blocks = visual.transformer.resblocks
    if not -len(blocks) <= layer < len(blocks):
        raise ValueError(f"layer={layer} is out of range for a tower with {len(blocks)} blocks")
    block = blocks[layer % len(blocks)]
    attn = getattr(block, "attn", None)
    if (
        not isinstance(block, ResidualAttentionBlock)
        or hasattr(block, "ln_1_kv")
        or not isinstance(attn, nn.MultiheadAttention)
        or not attn._qkv_same_embed_dim
        or attn.bias_k is not None
        or attn.add_zero_attn
    ):
        raise _not_implemented(block)

    captured: list[Tensor] = []

    def grab_input(_module: nn.Module, args: tuple) -> None:
        captured.append(args[0])  # the block's input x (before ln_1)

    handle = block.register_forward_pre_hook(grab_input)
    dropout = visual.patch_dropout  # PatchDropout drops patch tokens in train mode: keep every patch here
    dropout_training = dropout.training
    try:
        dropout.eval()
        with torch.no_grad():
            weight_dtype = visual.conv1.weight.dtype
            visual.forward_intermediates(
                pixels.to(weight_dtype),
                indices=[layer % len(blocks)],
                stop_early=True,
                intermediates_only=True,
                output_fmt="NLC",
            )
    finally:
        handle.remove()
        dropout.train(dropout_training)
    if len(captured) != 1:
        raise RuntimeError(f"cls_attention_scores: block {layer} ran {len(captured)} times, expected once")

    with torch.no_grad():
        x = captured[0] if attn.batch_first else captured[0].transpose(0, 1)  # [B, L, D], L = 1 + N
        h = block.ln_1(x).float()  # [B, L, D] the attention's query/key input
        bsz, length, width = h.shape
        heads = attn.num_heads
        head_dim = width // heads
        w = attn.in_proj_weight.float()  # [3D, D] rows: q, k, v
        bias = attn.in_proj_bias.float() if attn.in_proj_bias is not None else None  # [3D]
        q = F.linear(h[:, :1], w[:width], None if bias is None else bias[:width])  # [B, 1, D] class-token query
        k = F.linear(h, w[width : 2 * width], None if bias is None else bias[width : 2 * width])  # [B, L, D]
        q = q.view(bsz, 1, heads, head_dim).transpose(1, 2)  # [B, heads, 1, hd]
        k = k.view(bsz, length, heads, head_dim).transpose(1, 2)  # [B, heads, L, hd]
        logits = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)  # [B, heads, 1, L]
        return logits.softmax(dim=-1)[:, :, 0]  # [B, heads, L]


def cls_attention_scores(visual: nn.Module, pixels: Tensor, layer: int) -> Tensor:
    """The class token's attention to each patch inside transformer block ``layer``, summed over heads.

    Rule (VisionZip / FasterVLM): tokens the class token attends to most carry the image's information. The
    block's input is captured with a forward pre-hook while the tower runs up to that block
    (``forward_intermediates(..., stop_early=True)``: patch embedding, class token, positional embedding,
    ``ln_pre``; patch dropout is switched off for the call), then the class-token query's attention
    probabilities over all keys are recomputed from the block's own ``ln_1`` and ``attn.in_proj_weight`` /
    ``in_proj_bias``: ``softmax(q k^T / sqrt(head_dim))`` per head, in float32. The class token's attention to
    itself is dropped, so each head's row over the patches sums to less than 1 and the scores' row sum to less
    than ``attn.num_heads``.

    Implemented exactly for open_clip's own ``open_clip.transformer.VisionTransformer`` (e.g. the tiny preset,
    ``arrcoc.encoder.VisionEncoder().visual``); any other tower (timm trunks such as EVA02, whose attention applies
    rotary embeddings) or block type raises ``NotImplementedError``.

    Args:
        visual: the image tower.
        pixels: [B, 3, S, S] preprocessed pixels.
        layer: 0-based block index (the block whose output the model uses, ``VisionEncoder.layer``); negative
            values count from the last block.

    Returns:
        [B, N] float32 scores, patches only in raster order (the class token excluded).
    """
    return _cls_attention_per_head(visual, pixels, layer)[:, :, 1:].sum(dim=1)  # [B, N]


# --------------------------------------------------------------------------------------------------- pool baseline


def grid_pool_sizes(k: int, grid: tuple[int, int]) -> tuple[int, int]:
    """The pooled (h, w) grid for a budget of ``k`` tokens on an (H, W) patch grid: near-square, ``h * w <= k``.

    Rule: ``h = min(H, floor(sqrt(k)))``, ``w = min(W, floor(k / h))``, then ``h = min(H, floor(k / w))`` (which
    only grows h when w was capped by W). Square-ish grids are preferred over exact counts: k=65 on 24x24 gives
    8x8 = 64, k=198 gives 14x14 = 196, k >= H*W gives (H, W).
    """
    big_h, big_w = int(grid[0]), int(grid[1])
    if big_h < 1 or big_w < 1:
        raise ValueError(f"grid must be positive, got {grid}")
    if k < 1:
        raise ValueError(f"the pool baseline needs a budget of at least 1 token, got k={k}")
    h = min(big_h, math.isqrt(k))
    w = min(big_w, k // h)
    h = min(big_h, k // w)
    return h, w


def pool_counts(budgets: Tensor, grid: tuple[int, int]) -> Tensor:
    """Tokens each sample really gets from :func:`pool_tokens` (``h * w``): budgets [B] -> counts [B] long."""
    counts = [math.prod(grid_pool_sizes(int(k), grid)) for k in budgets.tolist()]
    return torch.tensor(counts, dtype=torch.long, device=budgets.device)


def pool_tokens(features: Tensor, grid: tuple[int, int], budgets: Tensor) -> tuple[Tensor, Tensor]:
    """The ``pool`` baseline: each sample's patch grid average-pooled to at most its budget of tokens.

    Sample i is ``adaptive_avg_pool2d``-ed to the (h, w) grid of :func:`grid_pool_sizes` (``h * w <= budgets[i]``),
    its tokens flattened in raster order and padded with zeros to the batch's largest count. The real count per
    sample is ``mask.sum(-1)`` (equal to :func:`pool_counts`); the benchmark reports its mean. A budget of at
    least H*W returns the sample's features unchanged.

    Args:
        features: [B, N, D] patch tokens in raster order over ``grid`` = (H, W), N = H * W.
        grid: (H, W).
        budgets: [B] integer budgets, each >= 1.

    Returns:
        tokens [B, K_max, D] (same dtype and device as ``features``) and mask [B, K_max] bool, True on real tokens.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [B, N, D], got shape {tuple(features.shape)}")
    b, n, d = features.shape
    big_h, big_w = int(grid[0]), int(grid[1])
    if big_h * big_w != n:
        raise ValueError(f"{n} tokens do not form the grid {grid}")
    if budgets.shape != (b,):
        raise ValueError(f"budgets must be [B] = [{b}], got shape {tuple(budgets.shape)}")
    sizes = [grid_pool_sizes(int(k), (big_h, big_w)) for k in budgets.tolist()]
    k_max = max((h * w for h, w in sizes), default=0)
    tokens = features.new_zeros(b, k_max, d)  # [B, K_max, D]
    mask = torch.zeros(b, k_max, dtype=torch.bool, device=features.device)  # [B, K_max]
    maps = features.transpose(1, 2).reshape(b, d, big_h, big_w)  # [B, D, H, W]
    for size in sorted(set(sizes)):  # one pooling call per distinct output grid
        idx = torch.tensor([i for i, s in enumerate(sizes) if s == size], device=features.device)  # [b_s]
        count = size[0] * size[1]
        if size == (big_h, big_w):
            pooled = features[idx]  # [b_s, N, D] unchanged
        else:
            pooled = F.adaptive_avg_pool2d(maps[idx], size).flatten(2).transpose(1, 2)  # [b_s, h*w, D]
        tokens[idx, :count] = pooled
        mask[idx, :count] = True
    return tokens, mask
