"""Compression of what is dropped: dropped patches are summarised, not lost."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DroppedTokenSummary(nn.Module):
    """Relevance-weighted pooling of the dropped patches into ``grid x grid`` context tokens.

    The image is split into ``grid x grid`` regions; each region's dropped patches are pooled with
    softmax(relevance) weights into one token, tagged with a learned per-region embedding. A region
    with nothing dropped yields no token (its ``valid`` flag is False), so full-token mode adds none.

    Args:
        patch_grid: (H', W') of the encoder.
        dim: feature width D.
        grid: regions per side; 1 gives one summary token per image, 2 gives up to four.
    """

    def __init__(self, patch_grid: tuple[int, int], dim: int, grid: int = 1) -> None:
        super().__init__()
        h, w = patch_grid
        if not 1 <= grid <= min(h, w):
            raise ValueError(f"summary_grid={grid} must be in 1..{min(h, w)} (or 0 to disable summaries)")
        self.grid = grid
        rows = torch.arange(h).repeat_interleave(w) * grid // h  # [N]
        cols = torch.arange(w).repeat(h) * grid // w  # [N]
        region = rows * grid + cols  # [N] region id of each patch
        # Built with plain row-major strides: DDP's buffer broadcast rejects a transposed view.
        onehot = torch.arange(grid * grid).unsqueeze(1) == region.unsqueeze(0)  # [R, N]
        self.register_buffer("region_onehot", onehot, persistent=False)
        self.region_embed = nn.Parameter(0.02 * torch.randn(grid * grid, dim))

    @property
    def num_tokens(self) -> int:
        return self.grid * self.grid

    def forward(self, features: Tensor, relevance: Tensor, keep_mask: Tensor) -> tuple[Tensor, Tensor]:
        """features [B, N, D], relevance [B, N], keep_mask [B, N] -> tokens [B, R, D], valid [B, R]."""
        dropped = (~keep_mask).unsqueeze(1) & self.region_onehot.unsqueeze(0)  # [B, R, N]
        valid = dropped.any(-1)  # [B, R]
        logits = relevance.float().unsqueeze(1).masked_fill(~dropped, float("-inf"))  # [B, R, N]
        logits = torch.where(valid.unsqueeze(-1), logits, 0.0)  # empty regions: finite, then zeroed
        weights = torch.softmax(logits, dim=-1) * valid.unsqueeze(-1)  # [B, R, N]
        pooled = weights.to(features.dtype) @ features  # [B, R, D]
        tokens = pooled + self.region_embed.to(features.dtype)  # [B, R, D]
        return tokens, valid
