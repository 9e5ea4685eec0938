"""Metrics of the VQA task and of the allocation, as torchmetrics (synchronised across ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from arrcoc.metrics.normalize import normalize_answer
from arrcoc.processing import majority_answer


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction: the mean, over the leave-one-annotator-out subsets of the
    answers, of ``min(#matches / 3, 1)``. With ten annotators, an answer given by 3 or more of them
    scores 1, by 2 about 0.6, by 1 about 0.3."""
    if not answers:
        return 0.0
    pred = normalize_answer(prediction)
    gts = [normalize_answer(a) for a in answers]
    scores = []
    for i in range(len(gts)):
        others = gts[:i] + gts[i + 1:]
        scores.append(min(sum(g == pred for g in others) / 3.0, 1.0) if others else float(gts[i] == pred))
    return sum(scores) / len(scores)


class VQAAccuracy(Metric):
    """Mean VQAv2 soft accuracy over the valid samples seen (``valid=False`` placeholders excluded)."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]],
               valid: Sequence[bool] | Tensor | None = None) -> None:
        for i, (pred, gts) in enumerate(zip(predictions, answers, strict=True)):
            if (valid is None or bool(valid[i])) and gts:
                self.total += vqa_soft_accuracy(pred, gts)
                self.count += 1

    def compute(self) -> Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class ExactMatch(Metric):
    """Share of valid samples whose normalised prediction equals the normalised majority answer."""

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("hits", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], answers: Sequence[Sequence[str]],
               valid: Sequence[bool] | Tensor | None = None) -> None:
        for i, (pred, gts) in enumerate(zip(predictions, answers, strict=True)):
            if (valid is None or bool(valid[i])) and gts:
                self.hits += int(normalize_answer(pred) == normalize_answer(majority_answer(list(gts))))
                self.count += 1

    def compute(self) -> Tensor:
        return self.hits.float() / self.count.clamp_min(1).float()


class BudgetHistogram(Metric):
    """Counts of per-sample visual-token budgets in fixed bins (default 0..576 in 24 bins)."""

    full_state_update = False

    def __init__(self, max_tokens: int = 576, bins: int = 24, **kwargs) -> None:
        super().__init__(**kwargs)
        self.max_tokens, self.bins = max_tokens, bins
        self.add_state("counts", torch.zeros(bins, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, budgets: Tensor, valid: Tensor | None = None) -> None:
        b = budgets.detach().float()
        if valid is not None:
            b = b[valid.bool()]
        idx = (b / self.max_tokens * self.bins).long().clamp(0, self.bins - 1)
        self.counts += torch.bincount(idx.cpu(), minlength=self.bins).to(self.counts.device)

    def compute(self) -> Tensor:
        return self.counts

    def edges(self) -> Tensor:
        return torch.linspace(0, self.max_tokens, self.bins + 1)
