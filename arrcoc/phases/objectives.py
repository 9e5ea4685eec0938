"""What the allocation learns from besides the LM loss: where the full-token model looks for this question, and
how many tokens each sample needs.

* :func:`full_token_teacher`: the same model with all patches, in the same step. Its answer distribution is the
  distillation target; the gradient of its answer loss with respect to each patch says which patches the answer
  depends on *for this question* (:func:`patch_saliency`), the target of the balanced relevance map
  (:func:`relevance_loss`). Both work with any encoder, LLM and attention implementation, and on any VQA data:
  no boxes or annotations are needed.
* :class:`SufficiencyLabels`: a few extra no-grad passes at fixed budgets give each sample the loss it would have
  at each k; its budget label is the smallest k within a tolerance ``tau`` of its full-token loss, with ``tau``
  following a running quantile so that the labels' batch mean meets the target budget (the sufficiency labels
  of InternVL3.5's visual resolution router). The budget head regresses onto them (:func:`need_loss`).

Pure torch on an :class:`~arrcoc.model.ARRCOCModel`: no Lightning here. Shapes: B samples, N patches, K budgets.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from arrcoc.model import ARRCOCModel


@dataclass
class Teacher:
    """The full-token pass of a training step."""

    answer_logits: Tensor  # [M, V] detached: the distillation target
    sample_loss: Tensor  # [B] detached answer loss per sample with all patches
    saliency: Tensor | None  # [B, N] a distribution over patches (None when not asked for)


def full_token_teacher(model: ARRCOCModel, inputs: dict[str, Any], patch_features: Tensor,
                       cls_features: Tensor | None, saliency: bool) -> Teacher:
    """The model with all patches on a batch, from encoder features already computed (``patch_features``
    [B, N, D], ``cls_features`` [B, D]: the training step's, so the encoder does not run again). With
    ``saliency``, also the gradient of its answer loss with respect to the patch features (the only gradient
    taken: no parameter receives one)."""
    feats = patch_features.detach()  # [B, N, D]
    cls = None if cls_features is None else cls_features.detach()
    seen = {**inputs, "patch_features": feats, "cls_features": cls}
    if not saliency:
        with torch.no_grad():
            full = model(**seen, full_tokens=True, return_logits=False)
        return Teacher(full.answer_logits.detach(), full.sample_loss().detach(), None)
    seen["patch_features"] = feats = feats.clone().requires_grad_(True)
    with torch.enable_grad():
        full = model(**seen, full_tokens=True, return_logits=False)
        (grad,) = torch.autograd.grad(full.lm_loss, feats)  # [B, N, D]
    return Teacher(full.answer_logits.detach(), full.sample_loss().detach(), patch_saliency(grad, feats.detach()))


def patch_saliency(grad: Tensor, feats: Tensor) -> Tensor:
    """Gradient [B, N, D] of the answer loss at features [B, N, D] -> a distribution over patches [B, N].

    A patch's share is ``|grad . (x - mean(x))|``: to first order, how much the loss changes when the patch is
    replaced by the image's mean patch, which is what dropping it into the summary token does. Rows without any
    gradient (no answer tokens) become uniform.
    """
    grad, feats = grad.float(), feats.float()
    s = (grad * (feats - feats.mean(1, keepdim=True))).sum(-1).abs()  # [B, N]
    total = s.sum(-1, keepdim=True)  # [B, 1]
    uniform = torch.full_like(s, 1.0 / s.shape[-1])
    return torch.where(total > 0, s / total.clamp_min(1e-30), uniform)


def relevance_loss(relevance: Tensor, target: Tensor, temperature: float) -> Tensor:
    """KL(target || softmax(relevance / temperature)) per sample, averaged: relevance [B, N] (the balanced map),
    target [B, N] (a distribution over patches). A listwise ranking loss: the patches the teacher's answer
    depends on must rank first."""
    log_q = (relevance.float() / temperature).log_softmax(-1)  # [B, N]
    return F.kl_div(log_q, target.float(), reduction="batchmean")


def need_loss(budget_soft: Tensor, labels: Tensor, lo: int, hi: int) -> Tensor:
    """Mean squared error of the head's budgets [B] against the sufficiency labels [B], in units of the budget
    range ``hi - lo``; samples whose label is NaN (no answer) do not count."""
    ok = torch.isfinite(labels)
    if not bool(ok.any()):
        return budget_soft.sum() * 0.0
    span = max(hi - lo, 1)
    return ((budget_soft[ok].float() - labels[ok]) / span).pow(2).mean()


class SufficiencyLabels:
    """Each sample's smallest sufficient budget, from its answer loss at a few budgets.

    Args:
        ks: the budgets tried (kept patches, ascending, below the encoder's patch count; all patches are the
            full-token pass, which every step has already).
        momentum: of the running tolerance ``tau`` (an exponential moving average over steps).
    """

    def __init__(self, ks: Sequence[int] = (64, 128, 256), momentum: float = 0.9) -> None:
        ks = [int(k) for k in ks]
        if not ks or ks != sorted(set(ks)) or ks[0] < 1:
            raise ValueError(f"need_ks={ks} must be distinct positive budgets in ascending order, e.g. [64, 128, 256]")
        if not 0 <= momentum < 1:
            raise ValueError(f"need momentum={momentum} must be in [0, 1)")
        self.ks, self.momentum = ks, momentum
        self.tau: float | None = None  # nats above the full-token loss; restored from checkpoints

    def deficits(self, model: ARRCOCModel, inputs: dict[str, Any], patch_features: Tensor,
                 cls_features: Tensor | None, full_loss: Tensor) -> Tensor:
        """[B, K]: each sample's answer loss at each budget (the learned ranking, summary included), from encoder
        features already computed, minus its full-token loss ``full_loss`` [B]."""
        n = patch_features.shape[1]
        if self.ks[-1] >= n:
            raise ValueError(f"need_ks={self.ks} must lie below the encoder's {n} patches")
        seen = {**inputs, "patch_features": patch_features.detach(),
                "cls_features": None if cls_features is None else cls_features.detach()}
        with torch.no_grad():
            losses = [model(**seen, budget=k, return_logits=False).sample_loss() for k in self.ks]  # K x [B]
        return torch.stack(losses, 1) - full_loss[:, None]  # [B, K]

    def budgets(self, deficits: Tensor, n: int, tau: float) -> Tensor:
        """[B] float: the smallest k whose deficit is within ``tau``, interpolated in log k between the budgets
        tried (the full-token pass, k = ``n``, has deficit 0 and always suffices); NaN rows stay NaN."""
        b = deficits.shape[0]
        d = torch.cat([deficits.float(), deficits.new_zeros(b, 1).float()], 1)  # [B, K+1]
        logk = torch.tensor([math.log(k) for k in [*self.ks, n]], device=d.device)  # [K+1]
        ok = d <= tau
        ok[:, -1] = True
        j = ok.float().argmax(-1)  # [B] first sufficient budget
        jm = (j - 1).clamp_min(0)
        d_prev, d_j = d.gather(1, jm[:, None]).squeeze(1), d.gather(1, j[:, None]).squeeze(1)
        frac = ((d_prev - tau) / (d_prev - d_j).clamp_min(1e-6)).clamp(0, 1)
        k = torch.exp(logk[jm] + frac * (logk[j] - logk[jm]))
        k = torch.where(j == 0, torch.full_like(k, float(self.ks[0])), k)
        return torch.where(torch.isnan(deficits).any(1), torch.full_like(k, float("nan")), k)

    def batch_tau(self, deficits: Tensor, n: int, target: float, lo: int, hi: int, iters: int = 40) -> float:
        """The tolerance at which the batch's labels (clamped to ``[lo, hi]``) average ``target`` (bisection:
        a larger tolerance only lowers every label)."""
        finite = deficits[torch.isfinite(deficits).all(1)]
        if finite.numel() == 0:
            return 0.0 if self.tau is None else self.tau
        a, b = float(finite.min()) - 1.0, float(finite.max()) + 1.0
        for _ in range(iters):
            mid = (a + b) / 2
            if float(self.budgets(finite, n, mid).clamp(lo, hi).mean()) > target:
                a = mid
            else:
                b = mid
        return b

    def labels(self, deficits: Tensor, n: int, target: float, lo: int, hi: int) -> Tensor:
        """Update the running tolerance with this batch's and return the labels [B] (clamped to ``[lo, hi]``)."""
        tau = self.batch_tau(deficits, n, target, lo, hi)
        self.tau = tau if self.tau is None else self.momentum * self.tau + (1 - self.momentum) * tau
        return self.budgets(deficits, n, self.tau).clamp(lo, hi)

    def state_dict(self) -> dict[str, Any]:
        return {"tau": self.tau}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tau = state.get("tau")
