"""Propositional knowing: what is there. Information content of a patch vs its neighbourhood."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from arrcoc.scorers.base import RelevanceScorer, ScorerInputs


class PropositionalScorer(RelevanceScorer):
    """Local novelty: how far a patch's features are from the mean of its 3x3 neighbours,
    measured in a learned low-rank subspace. Flat background scores low, edges and objects high.

    Args:
        rank: width of the learned subspace the novelty is measured in.
    """

    def __init__(self, vision_dim: int, text_dim: int, rank: int = 64) -> None:
        super().__init__(vision_dim, text_dim)
        self.norm = nn.LayerNorm(vision_dim)
        self.proj = nn.Linear(vision_dim, rank)

    def score(self, inputs: ScorerInputs) -> Tensor:
        b, n, _ = inputs.patches.shape
        h, w = inputs.grid
        z = self.proj(self.norm(inputs.patches))  # [B, N, r]
        z = z.transpose(1, 2).reshape(b, -1, h, w)  # [B, r, H, W]
        # Mean of the 3x3 window without the centre: (sum - self) / (count - 1).
        win_sum = F.avg_pool2d(z, 3, stride=1, padding=1, divisor_override=1)
        ones = z.new_ones(1, 1, h, w)
        count = F.avg_pool2d(ones, 3, stride=1, padding=1, divisor_override=1)
        neighbours = (win_sum - z) / (count - 1).clamp_min(1.0)
        novelty = (z - neighbours).pow(2).mean(1)  # [B, H, W]
        return novelty.reshape(b, n)
