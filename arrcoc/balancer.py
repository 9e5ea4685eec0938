"""Opponent processing: per-sample, query-conditioned weights that mix the scorers' maps."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class OpponentBalancer(nn.Module):
    """Weighs the scorers against each other for each image+question.

    The ways of knowing pull in different directions (what is there vs what stands out vs what the
    question asks for); a small network reads the question and the image gist and decides, per
    sample, how much each map counts. Weights are a softmax over scorers, so they compete.

    Args:
        num_scorers: S, the number of maps to mix.
        context_dim: width of the per-sample context vector (see :meth:`forward`).
        hidden: hidden width of the weighting network.
        temperature: softmax temperature; higher = more even mixing.
    """

    def __init__(self, num_scorers: int, context_dim: int, hidden: int = 128, temperature: float = 1.0) -> None:
        super().__init__()
        if num_scorers < 1:
            raise ValueError(f"scorers: at least one scorer is needed, got {num_scorers}")
        if temperature <= 0:
            raise ValueError(f"balancer temperature={temperature} must be > 0")
        self.temperature = temperature
        self.net = nn.Sequential(nn.LayerNorm(context_dim), nn.Linear(context_dim, hidden), nn.GELU(),
                                 nn.Linear(hidden, num_scorers))

    def forward(self, maps: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        """maps [B, S, N] (standardised), context [B, C] -> relevance [B, N], weights [B, S]."""
        context = context.to(self.net[1].weight.dtype)
        weights = torch.softmax(self.net(context).float() / self.temperature, dim=-1)  # [B, S]
        relevance = (weights.unsqueeze(-1) * maps).sum(1)  # [B, N]
        return relevance, weights


def balance_loss(weights: Tensor) -> Tensor:
    """How far the batch's mean scorer weights [B, S] are from even use: ``S * sum_s mean_b(w)_s^2 - 1``, 0 when
    every scorer gets 1/S of the weight on average, ``S - 1`` when one takes it all.

    A load-balancing term (as for mixture-of-experts routers): it keeps every scorer in play across the batch,
    while each sample's weights stay free to differ, so the balancer can still prefer one scorer per question.
    Without it, the LM loss lets the balancer collapse onto one scorer for every sample.
    """
    s = weights.shape[-1]
    usage = weights.float().mean(0)  # [S]
    return s * usage.pow(2).sum() - 1.0
