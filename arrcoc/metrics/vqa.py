"""Metrics of the VQA task and of the allocation, as torchmetrics (synchronised across ranks)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from arrcoc.metrics.normalize import normalize_answer, process_punctuation
from arrcoc.processing import majority_answer


def vqa_soft_accuracy(prediction: str, answers: Sequence[str]) -> float:
    """VQAv2 accuracy of one prediction, as the official evaluation (``vqaEval.py``) computes it.

    The prediction is cleaned (newlines and tabs to spaces, ends stripped) and gets every answer-processing
    step (:func:`~arrcoc.metrics.normalize_answer`: punctuation, then case, number words, articles,
    contractions). The references get the punctuation step only, and only when they are not all the same:
    when ten annotators agree, their answer counts as written (``"don't know"`` predicted against ten
    ``"don't know"`` scores 0: the prediction's apostrophe became a space). The score is the mean, over the
    references, of ``min(1, #other references equal to the prediction / 3)``: with ten annotators an answer
    given by 3 or more scores 1, by 2 0.6, by 1 0.3.

    Beyond the official script: no references score 0, and a single reference (which the official formula
    would score 0 whatever the prediction) scores 1 when equal to the processed prediction."""
    if not answers:
        return 0.0
    pred = normalize_answer(prediction)
    gts = list(answers)
    if len(set(gts)) > 1:
        gts = [process_punctuation(g) for g in gts]
    if len(gts) == 1:
        return float(gts[0] == pred)
    matches = sum(g == pred for g in gts)
    # Leave one reference out in turn; the others that equal the prediction count, capped at 3.
    scores = [min(1.0, (matches - (g == pred)) / 3) for g in gts]
    return sum(scores) / len(scores)


class VQAAccuracy(Metric):
    """Mean VQAv2 accuracy (:func:`vqa_soft_accuracy`, the official evaluation's number) over the valid
    samples seen (``valid=False`` placeholders excluded)."""

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
    """Share of valid samples whose normalised prediction equals the normalised majority answer: the lenient
    match (:func:`~arrcoc.metrics.normalize_answer` on both sides, whatever the references)."""

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
