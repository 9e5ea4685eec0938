"""Phase 2 — relevance: only the scorers, the balancer and the budget head learn."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch.nn.functional as F
from torch import Tensor

from arrcoc.balancer import balance_loss
from arrcoc.model import ARRCOCModel, ARRCOCOutput
from arrcoc.phases.base import PhaseModule
from arrcoc.phases.objectives import SufficiencyLabels, full_token_teacher, need_loss, relevance_loss


class RelevancePhase(PhaseModule):
    """Trains the allocation against a frozen model. Besides the LM loss and the batch-mean budget constraint,
    each step runs the same frozen model with all patches (reusing the encoder features) and learns from it:

    * ``distill``: the KL from its answer distribution to the allocated one;
    * ``relevance``: the balanced map must rank first the patches its answer loss depends on, for this
      question (gradient saliency; see :mod:`~arrcoc.phases.objectives`) — what makes the selection follow the
      question rather than the image's saliency;
    * ``balance``: every scorer stays in play across the batch (a load-balancing term), while each sample's
      balancer weights stay free;
    * ``need``: the budget head regresses onto each sample's smallest sufficient budget (answer loss within a
      running tolerance of the full-token loss at ``need_ks``), so budgets follow need, not one fixed k.

    Pair it with :class:`~arrcoc.callbacks.BudgetAnnealing` to lower the budget from 576 to the target.
    Each term is off at weight 0 (no full-token pass at all when distill, relevance and need are all 0).

    Args:
        distill_weight, distill_temperature: the KL term and its softening temperature.
        relevance_weight, relevance_temperature: the saliency target and the temperature of the balanced map's
            softmax it is compared with (the map is a mix of per-sample z-scores: ~0.1-0.5).
        balance_weight: the load-balancing term.
        need_weight, need_ks: the budget head's sufficiency labels and the budgets tried for them (each one extra
            forward pass without gradient per step).
        **kwargs: see :class:`PhaseModule`.
    """

    trainable: ClassVar[tuple[str, ...]] = ("scorers", "balancer", "allocator", "summary")
    default_lr: ClassVar[dict[str, float]] = {"scorers": 1e-3, "balancer": 1e-3, "allocator": 1e-3,
                                              "summary": 1e-3}

    def __init__(self, model: ARRCOCModel, distill_weight: float = 1.0, distill_temperature: float = 1.0,
                 relevance_weight: float = 1.0, relevance_temperature: float = 0.25, balance_weight: float = 0.5,
                 need_weight: float = 1.0, need_ks: Sequence[int] = (64, 128, 256), **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        weights = {"distill_weight": distill_weight, "relevance_weight": relevance_weight,
                   "balance_weight": balance_weight, "need_weight": need_weight}
        for name, value in weights.items():
            if value < 0:
                raise ValueError(f"{name}={value} must be >= 0 (0 turns the term off)")
        for name, value in (("distill_temperature", distill_temperature),
                            ("relevance_temperature", relevance_temperature)):
            if value <= 0:
                raise ValueError(f"{name}={value} must be > 0")
        self.distill_weight, self.distill_temperature = distill_weight, distill_temperature
        self.relevance_weight, self.relevance_temperature = relevance_weight, relevance_temperature
        self.balance_weight, self.need_weight = balance_weight, need_weight
        self.need = SufficiencyLabels(need_ks)
        n = model.encoder.num_patches
        if need_weight > 0 and max(need_ks) >= n:
            raise ValueError(f"need_ks={list(need_ks)} must lie below the encoder's {n} patches "
                             "(all patches are the full-token pass every step has)")

    def compute_losses(self, inputs: dict[str, Any], out: ARRCOCOutput) -> dict[str, Tensor]:
        losses = super().compute_losses(inputs, out)
        if self.model.full_tokens:
            return losses
        alloc, total = out.allocation, losses["loss"]
        if alloc.weights is not None:
            for s, name in enumerate(alloc.scorer_names):
                losses[f"weight_{name}"] = alloc.weights[:, s].mean().detach()
            if self.balance_weight > 0 and alloc.weights.shape[1] > 1:
                losses["balance"] = balance_loss(alloc.weights)
                total = total + self.balance_weight * losses["balance"]
        answers = out.answer_logits is not None and out.answer_logits.numel() > 0
        if answers and (self.distill_weight > 0 or self.relevance_weight > 0 or self.need_weight > 0):
            teacher = full_token_teacher(self.model, inputs, out.patch_features, out.cls_features,
                                         saliency=self.relevance_weight > 0)
            if self.distill_weight > 0:
                t = self.distill_temperature
                losses["distill"] = F.kl_div((out.answer_logits / t).log_softmax(-1),
                                             (teacher.answer_logits / t).log_softmax(-1), log_target=True,
                                             reduction="batchmean") * t * t
                total = total + self.distill_weight * losses["distill"]
            if self.relevance_weight > 0:
                losses["relevance"] = relevance_loss(alloc.relevance, teacher.saliency, self.relevance_temperature)
                total = total + self.relevance_weight * losses["relevance"]
            if self.need_weight > 0:
                allocator = self.model.allocator
                lo, hi = allocator.min_tokens, allocator.max_tokens
                deficits = self.need.deficits(self.model, inputs, out.patch_features, out.cls_features,
                                               teacher.sample_loss)  # [B, K]
                labels = self.need.labels(deficits, allocator.num_patches, allocator.target_tokens, lo, hi)
                losses["need"] = need_loss(alloc.budget_soft, labels, lo, hi)
                losses["need_tau"] = out.lm_loss.new_tensor(self.need.tau)
                total = total + self.need_weight * losses["need"]
        losses["loss"] = total
        return losses

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["arrcoc_need"] = self.need.state_dict()  # the running tolerance resumes with the run

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self.need.load_state_dict(checkpoint.get("arrcoc_need", {}))
