"""The relevance-scorer contract that built-in and user scorers share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn


@dataclass
class ScorerInputs:
    """What every scorer sees for a batch (all per sample; nothing mixes samples)."""

    patches: Tensor  # [B, N, D] encoder patch features, raster order
    grid: tuple[int, int]  # (H', W') with H' * W' == N
    question: Tensor  # [B, T, E] question token embeddings (the LLM's input embeddings)
    question_mask: Tensor  # [B, T] bool, True on real question tokens (may be all False)
    cls: Tensor | None = None  # [B, D] class token, where the encoder has one
    pixels: Tensor | None = None  # [B, 3, S, S] preprocessed pixels, where available

    def to(self, dtype: torch.dtype) -> ScorerInputs:
        """The same inputs with every floating tensor cast to ``dtype`` (masks untouched)."""
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        return replace(self, patches=cast(self.patches), question=cast(self.question), cls=cast(self.cls),
                       pixels=cast(self.pixels))


def standardize(scores: Tensor, eps: float = 1e-5) -> Tensor:
    """Per-sample z-score over patches: [B, N] -> [B, N] with mean 0 and std 1 in every row.

    Never normalise across the batch: a sample's allocation must not depend on its partners.
    A constant row (nothing stands out) maps to all zeros.
    """
    scores = scores.float()
    mean = scores.mean(dim=-1, keepdim=True)
    std = scores.std(dim=-1, keepdim=True, unbiased=False)
    # Relative threshold: rounding noise on a flat map must not be blown up to unit variance.
    flat = std <= eps * mean.abs().clamp_min(1.0)
    safe_std = torch.where(flat, torch.ones_like(std), std)  # no inf/nan, not even in the unused branch
    return torch.where(flat, torch.zeros_like(scores), (scores - mean) / safe_std)


class RelevanceScorer(nn.Module, ABC):
    """Base class of relevance scorers: one score per patch, per sample.

    Contract for subclasses:

    * ``__init__(self, vision_dim, text_dim, **hparams)``: the model passes the encoder width
      ``vision_dim`` (D) and the LLM embedding width ``text_dim`` (E) positionally, so a YAML
      config only gives the hyperparameters (``class_path`` + ``init_args``).
    * :meth:`score` returns raw scores ``[B, N]`` (any scale, higher = more relevant) that are a
      differentiable function of the inputs and of the scorer's parameters: the LM loss trains them.
    * :meth:`forward` (not overridden) standardises per sample, so maps from different scorers are
      comparable when the balancer mixes them.
    """

    def __init__(self, vision_dim: int, text_dim: int) -> None:
        super().__init__()
        self.vision_dim = vision_dim
        self.text_dim = text_dim

    @abstractmethod
    def score(self, inputs: ScorerInputs) -> Tensor:
        """Raw relevance [B, N] for the patches in ``inputs``."""

    def forward(self, inputs: ScorerInputs) -> Tensor:
        param = next(self.parameters(), None)
        if param is not None and param.is_floating_point() and inputs.patches.dtype != param.dtype:
            inputs = inputs.to(param.dtype)
        raw = self.score(inputs)
        expected = inputs.patches.shape[:2]
        if raw.shape != expected:
            raise ValueError(
                f"{type(self).__name__}.score returned shape {tuple(raw.shape)}; "
                f"expected [B, N] = {tuple(expected)}"
            )
        return standardize(raw)  # [B, N]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean over dim 1 of [B, T, E] where mask [B, T] is True; all-False rows give zeros."""
    m = mask.to(x.dtype).unsqueeze(-1)  # [B, T, 1]
    return (x * m).sum(1) / m.sum(1).clamp_min(1.0)  # [B, E]
