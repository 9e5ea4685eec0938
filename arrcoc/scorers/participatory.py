"""Participatory knowing: what matters for this question. Query-patch coupling."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from arrcoc.scorers.base import RelevanceScorer, ScorerInputs


class ParticipatoryScorer(RelevanceScorer):
    """Cross-attention from question tokens to patches: each real question token spreads one unit
    of attention over the patches; a patch's score is the log of its mean attention. An empty
    question couples to nothing and yields a flat map.

    Args:
        rank: width of the query/key space.
    """

    def __init__(self, vision_dim: int, text_dim: int, rank: int = 64) -> None:
        super().__init__(vision_dim, text_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.vision_norm = nn.LayerNorm(vision_dim)
        self.query = nn.Linear(text_dim, rank)
        self.key = nn.Linear(vision_dim, rank)
        self.scale = 1.0 / math.sqrt(rank)

    def score(self, inputs: ScorerInputs) -> Tensor:
        q = self.query(self.text_norm(inputs.question))  # [B, T, r]
        k = self.key(self.vision_norm(inputs.patches))  # [B, N, r]
        attn = torch.softmax((q @ k.transpose(1, 2)) * self.scale, dim=-1)  # [B, T, N]
        m = inputs.question_mask.to(attn.dtype).unsqueeze(-1)  # [B, T, 1]
        n_tokens = m.sum(1)  # [B, 1]
        mean_attn = (attn * m).sum(1) / n_tokens.clamp_min(1.0)  # [B, N]
        flat = torch.full_like(mean_attn, 1.0 / mean_attn.shape[-1])
        mean_attn = torch.where(n_tokens > 0, mean_attn, flat)
        return torch.log(mean_attn + 1e-8)
