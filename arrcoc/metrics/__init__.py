"""Loss-side metrics: VQAv2 soft accuracy, exact match, and the allocation's budget histogram."""

from arrcoc.metrics.normalize import normalize_answer
from arrcoc.metrics.vqa import BudgetHistogram, ExactMatch, VQAAccuracy, vqa_soft_accuracy

__all__ = ["BudgetHistogram", "ExactMatch", "VQAAccuracy", "normalize_answer", "vqa_soft_accuracy"]
