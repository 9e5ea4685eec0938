"""Perspectival knowing: what stands out. Salience of a patch from the image's own viewpoint."""

from __future__ import annotations

import math

from torch import Tensor, nn

from arrcoc.scorers.base import RelevanceScorer, ScorerInputs


class PerspectivalScorer(RelevanceScorer):
    """Class-token attention: a learned query from the class token (the mean patch where the
    encoder has none) attends over the patches; the attention logit is the salience.

    Args:
        rank: width of the query/key space.
    """

    def __init__(self, vision_dim: int, text_dim: int, rank: int = 64) -> None:
        super().__init__(vision_dim, text_dim)
        self.norm = nn.LayerNorm(vision_dim)
        self.query = nn.Linear(vision_dim, rank)
        self.key = nn.Linear(vision_dim, rank)
        self.scale = 1.0 / math.sqrt(rank)

    def score(self, inputs: ScorerInputs) -> Tensor:
        patches = self.norm(inputs.patches)  # [B, N, D]
        gist = self.norm(inputs.cls) if inputs.cls is not None else patches.mean(1)  # [B, D]
        q = self.query(gist)  # [B, r]
        k = self.key(patches)  # [B, N, r]
        return (k @ q.unsqueeze(-1)).squeeze(-1) * self.scale  # [B, N]
