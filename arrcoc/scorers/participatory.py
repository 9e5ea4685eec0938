"""Participatory knowing: what matters for this question. Query-patch coupling."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from arrcoc.scorers.base import RelevanceScorer, ScorerInputs


class ParticipatoryScorer(RelevanceScorer):
    """Cross-attention from question tokens to patches. Each real question token spreads one unit of
    attention over the patches; the tokens are pooled with learned weights (a softmax over the question
    of a per-token score), so the words that name things ("square", "red") can count more than the
    function words ("what", "is", "the") that every question shares. A patch's score is the log of its
    pooled attention. An empty question couples to nothing and yields a flat map.

    Args:
        rank: width of the query/key space.
    """

    def __init__(self, vision_dim: int, text_dim: int, rank: int = 64) -> None:
        super().__init__(vision_dim, text_dim)
        self.text_norm = nn.LayerNorm(text_dim)
        self.vision_norm = nn.LayerNorm(vision_dim)
        self.query = nn.Linear(text_dim, rank)
        self.key = nn.Linear(vision_dim, rank)
        self.token_weight = nn.Linear(text_dim, 1, bias=False)  # how much each question token counts (a bias
        nn.init.zeros_(self.token_weight.weight)  # would cancel in the softmax); starts as the plain mean
        self.scale = 1.0 / math.sqrt(rank)

    def score(self, inputs: ScorerInputs) -> Tensor:
        text = self.text_norm(inputs.question)  # [B, T, E]
        q = self.query(text)  # [B, T, r]
        k = self.key(self.vision_norm(inputs.patches))  # [B, N, r]
        attn = torch.softmax((q @ k.transpose(1, 2)) * self.scale, dim=-1)  # [B, T, N]
        mask = inputs.question_mask  # [B, T]
        w = self.token_weight(text).squeeze(-1).masked_fill(~mask, float("-inf"))  # [B, T]
        w = torch.softmax(torch.where(mask.any(-1, keepdim=True), w, 0.0), dim=-1) * mask  # [B, T], 0 off-question
        pooled = (w.unsqueeze(-1) * attn).sum(1)  # [B, N]
        flat = torch.full_like(pooled, 1.0 / pooled.shape[-1])
        pooled = torch.where(mask.any(-1, keepdim=True), pooled, flat)
        return torch.log(pooled + 1e-8)
