"""Phase 2 — relevance: only the scorers, the balancer and the budget head learn."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from arrcoc.model import ARRCOCModel, ARRCOCOutput
from arrcoc.phases.base import PhaseModule


class RelevancePhase(PhaseModule):
    """Trains the allocation against a frozen model: the LM loss, the batch-mean budget constraint,
    and distillation — the KL from the full-token answer distribution of the same frozen model
    (computed in the same step, without gradient) to the allocated one. Pair it with
    :class:`~arrcoc.callbacks.BudgetAnnealing` to lower the budget from 576 to the target.

    Args:
        distill_weight: weight of the KL term (0 disables the extra full-token pass).
        distill_temperature: softening temperature of both distributions.
        **kwargs: see :class:`PhaseModule`.
    """

    trainable: ClassVar[tuple[str, ...]] = ("scorers", "balancer", "allocator", "summary")
    default_lr: ClassVar[dict[str, float]] = {"scorers": 1e-3, "balancer": 1e-3, "allocator": 1e-3,
                                              "summary": 1e-3}

    def __init__(self, model: ARRCOCModel, distill_weight: float = 1.0, distill_temperature: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if distill_weight < 0 or distill_temperature <= 0:
            raise ValueError(f"distill_weight={distill_weight} must be >= 0 and "
                             f"distill_temperature={distill_temperature} > 0")
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature

    def compute_losses(self, inputs: dict[str, Any], out: ARRCOCOutput) -> dict[str, Tensor]:
        losses = super().compute_losses(inputs, out)
        if self.distill_weight > 0 and out.answer_logits is not None and out.answer_logits.numel() > 0:
            with torch.no_grad():  # the teacher sees the same encoder features: the encoder runs once
                teacher = {**inputs, "patch_features": out.patch_features, "cls_features": out.cls_features}
                full = self.model(**teacher, full_tokens=True, return_logits=False)
            t = self.distill_temperature
            kl = F.kl_div((out.answer_logits / t).log_softmax(-1), (full.answer_logits / t).log_softmax(-1),
                          log_target=True, reduction="batchmean") * t * t
            losses["distill"] = kl
            losses["loss"] = losses["loss"] + self.distill_weight * kl
        return losses
