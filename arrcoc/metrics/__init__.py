"""Loss-side metrics: VQAv2 accuracy (the official evaluation's), exact match, and the allocation's budget
histogram."""

from arrcoc.metrics.normalize import clean_answer, normalize_answer, process_digit_article, process_punctuation
from arrcoc.metrics.vqa import BudgetHistogram, ExactMatch, VQAAccuracy, vqa_soft_accuracy

__all__ = ["BudgetHistogram", "ExactMatch", "VQAAccuracy", "clean_answer", "normalize_answer", "process_digit_article",
           "process_punctuation", "vqa_soft_accuracy"]
