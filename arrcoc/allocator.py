"""Allocator: per image+question, how many visual tokens (a budget k) and which ones (top-k).

Training keeps the selection differentiable without changing what the LLM sees:

* the budget head predicts a continuous budget ``k_soft`` in ``[min_tokens, max_tokens]``; the hard
  budget is ``round(k_soft)``;
* a soft threshold ``tau`` sits between the ``k_soft``-th and the next relevance (linear
  interpolation over the sorted relevances, so ``tau`` is differentiable in ``k_soft``);
* each kept token is scaled by a straight-through gate ``1 + s - s.detach()`` with
  ``s = sigmoid((relevance - tau) / temperature)``: its value is exactly 1, its gradient reaches the
  scorers, the balancer (through ``relevance``) and the budget head (through ``tau``);
* the batch mean of ``k_soft`` is pulled towards the target mean budget (a batch-mean constraint,
  not a per-sample ratio, so budgets can differ per sample).

At inference the selection is hard and deterministic: no noise, stable ordering on ties.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class Selection:
    """The allocator's decision for a batch."""

    budget: Tensor  # [B] long, hard per-sample budget k
    budget_soft: Tensor  # [B] float, differentiable budget
    keep_mask: Tensor  # [B, N] bool, True on kept patches
    gate: Tensor  # [B, N] float, 1 on kept patches (straight-through gradient), 0 elsewhere
    budget_loss: Tensor  # [] batch-mean budget constraint


def sorted_profile(relevance: Tensor, points: int) -> Tensor:
    """Descending relevance sampled at ``points`` evenly spaced ranks: [B, N] -> [B, points]."""
    r_sorted = relevance.sort(dim=-1, descending=True).values
    idx = torch.linspace(0, relevance.shape[-1] - 1, points, device=relevance.device).round().long()
    return r_sorted[:, idx]


class TokenAllocator(nn.Module):
    """Predicts each sample's budget and keeps its top-``k`` patches.

    Args:
        num_patches: N, patches per image (576 for a 24x24 grid).
        context_dim: width of the per-sample context (question + image gist).
        min_tokens, max_tokens: hard per-sample bounds of the budget (default 64..400).
        target_tokens: target of the batch-mean budget (default 198); annealing callbacks move it.
        temperature: softness of the threshold gate (relevance is standardised, so ~0.1..1).
        selection_noise: Gumbel noise scale added to relevance for the top-k in training only
            (exploration); 0 disables.
        budget_jitter: share of training batches whose hard budget is one k drawn uniformly from ``[min, max]``
            for every sample (the head's ``k_soft`` and its losses are unchanged), so what comes after the
            allocator learns to work at every budget; 0 disables. Training only.
        hidden: hidden width of the budget head.
        profile_points: how many ranks of the sorted relevance the budget head reads.
    """

    def __init__(
        self,
        num_patches: int,
        context_dim: int,
        min_tokens: int = 64,
        max_tokens: int = 400,
        target_tokens: float = 198.0,
        temperature: float = 0.5,
        selection_noise: float = 0.0,
        budget_jitter: float = 0.0,
        hidden: int = 128,
        profile_points: int = 16,
    ) -> None:
        super().__init__()
        self.num_patches = num_patches
        if temperature <= 0:
            raise ValueError(f"allocator.temperature={temperature} must be > 0")
        if selection_noise < 0:
            raise ValueError(f"allocator.selection_noise={selection_noise} must be >= 0")
        if not 0 <= budget_jitter <= 1:
            raise ValueError(f"allocator.budget_jitter={budget_jitter} must be a share in [0, 1]")
        self.temperature = temperature
        self.selection_noise = selection_noise
        self.budget_jitter = budget_jitter
        self.profile_points = profile_points
        self.head = nn.Sequential(
            nn.LayerNorm(context_dim + profile_points), nn.Linear(context_dim + profile_points, hidden),
            nn.GELU(), nn.Linear(hidden, 1),
        )
        # Bounds and target are configuration, not learned state: buffers that move with the module but
        # stay out of checkpoints, so each phase's config (or BudgetAnnealing, whose own state resumes
        # the schedule) decides them, never the weights a phase starts from.
        self.register_buffer("bounds", torch.zeros(2, dtype=torch.long), persistent=False)
        self.register_buffer("target", torch.zeros((), dtype=torch.float32), persistent=False)
        self.set_budget(min_tokens=min_tokens, max_tokens=max_tokens, target_tokens=target_tokens)
        self._init_head_bias()

    @property
    def min_tokens(self) -> int:
        return int(self.bounds[0])

    @property
    def max_tokens(self) -> int:
        return int(self.bounds[1])

    @property
    def target_tokens(self) -> float:
        return float(self.target)

    def set_budget(self, min_tokens: int | None = None, max_tokens: int | None = None,
                   target_tokens: float | None = None) -> None:
        """Validate and set the budget bounds and target (any subset)."""
        lo = self.min_tokens if min_tokens is None else int(min_tokens)
        hi = self.max_tokens if max_tokens is None else int(max_tokens)
        tgt = self.target_tokens if target_tokens is None else float(target_tokens)
        n = self.num_patches
        if lo < 1:
            raise ValueError(f"min_tokens={lo} must be >= 1")
        if hi > n:
            raise ValueError(f"max_tokens={hi} exceeds the encoder's {n} patches; valid: {lo}..{n}")
        if lo > hi:
            raise ValueError(f"min_tokens={lo} > max_tokens={hi}; need 1 <= min <= max <= {n}")
        if not lo <= tgt <= hi:
            raise ValueError(f"target_tokens={tgt} is outside [min_tokens, max_tokens] = [{lo}, {hi}]")
        self.bounds.copy_(torch.tensor([lo, hi]))
        self.target.fill_(tgt)

    def _init_head_bias(self) -> None:
        """Start the budget head near the target so early training is not spent finding it."""
        lo, hi, tgt = self.min_tokens, self.max_tokens, self.target_tokens
        frac = min(max((tgt - lo) / max(hi - lo, 1), 1e-3), 1 - 1e-3)
        with torch.no_grad():
            self.head[-1].bias.fill_(float(torch.logit(torch.tensor(frac))))

    def budget_logits(self, relevance: Tensor, context: Tensor) -> Tensor:
        """The budget head's logits [B]: ``k_soft = min + sigmoid(logit) * (max - min)``. Shifting every
        logit by one constant moves the mean budget while keeping each sample's rank (how the token
        benchmark evaluates the head at other mean budgets)."""
        # The head reads the map's shape; its losses train the head, they do not reshape the map (detached).
        profile = sorted_profile(relevance.detach().float(), self.profile_points)  # [B, P]
        feats = torch.cat([context.float(), profile], dim=-1)
        # No autocast here: in bf16 a budget near 300 could only move in steps of 2 tokens.
        with torch.autocast(relevance.device.type, enabled=False):
            return self.head(feats.to(self.head[1].weight.dtype)).float().squeeze(-1)  # [B]

    def forward(self, relevance: Tensor, context: Tensor, budget: int | Tensor | None = None,
                rank_scores: Tensor | None = None) -> Selection:
        """relevance [B, N] (standardised), context [B, C] -> :class:`Selection`.

        ``budget`` (an int or [B] tensor) overrides the budget head: equal-token baselines and
        fixed-budget evaluation use it. ``rank_scores`` [B, N] replaces the relevance for choosing
        which tokens are kept (random or grid baselines at the same budgets).
        """
        b, n = relevance.shape
        lo, hi = self.min_tokens, self.max_tokens
        relevance = relevance.float()
        if budget is None:
            frac = torch.sigmoid(self.budget_logits(relevance, context))  # [B]
            k_soft = lo + frac * (hi - lo)  # [B]
            k = k_soft.detach().round().long().clamp(lo, hi)  # [B]
            if self.training and self.budget_jitter > 0 and float(torch.rand(())) < self.budget_jitter:
                # One draw for the whole batch: a batch is padded to its largest budget, so per-sample draws
                # would cost the step of k = max almost every time.
                k = torch.randint(lo, hi + 1, (), device=k.device).expand(b).clone()
        else:
            k = torch.as_tensor(budget, device=relevance.device).long().expand(b).clone()
            if bool(((k < 1) | (k > n)).any()):
                raise ValueError(f"budget override {k.tolist()} must lie in 1..{n}")
            k_soft = k.float()

        # Soft threshold between rank k_soft and the next one (ranks are 0-based: position k-0.5).
        r_sorted = relevance.sort(dim=-1, descending=True).values  # [B, N]
        pos = (k_soft - 0.5).clamp(0, n - 1)  # [B]
        i0 = pos.detach().floor().long().clamp(0, n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w = pos - i0.float()
        tau = torch.lerp(r_sorted.gather(1, i0[:, None]), r_sorted.gather(1, i1[:, None]), w[:, None])  # [B, 1]
        soft = torch.sigmoid((relevance - tau) / self.temperature)  # [B, N]

        # Hard top-k; stable sort breaks ties by raster position, so inference is deterministic.
        rank_by = relevance.detach() if rank_scores is None else rank_scores.float()
        if self.training and self.selection_noise > 0:
            gumbel = -torch.log(-torch.log(torch.rand_like(rank_by).clamp(1e-9, 1 - 1e-9)))
            rank_by = rank_by + self.selection_noise * gumbel
        order = rank_by.sort(dim=-1, descending=True, stable=True).indices  # [B, N]
        ranks = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
        keep = ranks < k[:, None]  # [B, N]
        gate = keep.float() * (soft - soft.detach() + 1.0)  # [B, N], exactly 1 on kept patches

        if budget is None:
            budget_loss = ((k_soft.mean() - self.target.float()) / n) ** 2
        else:  # a fixed budget is not the head's doing: nothing to constrain
            budget_loss = relevance.new_zeros(())
        return Selection(budget=k, budget_soft=k_soft, keep_mask=keep, gate=gate, budget_loss=budget_loss)
