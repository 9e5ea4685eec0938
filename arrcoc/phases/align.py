"""Phase 1 — align: frozen encoder, all patches; the projector and the position embedding learn."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from arrcoc.model import ARRCOCModel
from arrcoc.phases.base import PhaseModule


class AlignPhase(PhaseModule):
    """Teaches the projector (and the 2-D positions) to speak the LLM's language with all 576 tokens.

    The LLM is frozen for pretrained presets and trains for the tiny preset, whose 2-layer decoder has
    read text only (``pretrained: text``) or starts random (``train_llm``). Allocation is off, so the
    allocation modules are frozen and unused.

    Args:
        subset_share: share of training batches that see a random subset of the patches instead of all of
            them: one k drawn uniformly from the allocator's ``[min_tokens, max_tokens]`` for the batch, patches
            chosen at random (plus the summary token of the rest). The LLM learns to answer from partial views
            (Matryoshka-style), so the frozen model the relevance phase trains against works at every budget,
            and those steps cost less. 0 = every batch sees all patches. Evaluation always sees all patches.
        **kwargs: see :class:`PhaseModule`.
    """

    trainable: ClassVar[tuple[str, ...]] = ("positions", "projector", "llm")
    full_tokens: ClassVar[bool] = True
    default_lr: ClassVar[dict[str, float]] = {"positions": 1e-3, "projector": 1e-3, "llm": 1e-3}

    def __init__(self, model: ARRCOCModel, subset_share: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not 0 <= subset_share <= 1:
            raise ValueError(f"subset_share={subset_share} must be a share in [0, 1]")
        self.subset_share = subset_share

    def forward_kwargs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        if self.subset_share == 0 or float(torch.rand(())) >= self.subset_share:
            return {}
        alloc = self.model.allocator
        k = int(torch.randint(alloc.min_tokens, alloc.max_tokens + 1, ()))
        b, n = inputs["input_ids"].shape[0], self.model.encoder.num_patches
        return {"full_tokens": False, "budget": k, "selection": torch.rand(b, n, device=inputs["input_ids"].device)}
