"""Phase 3 — allocation fine-tune: allocation, projector and LLM learn together at the target budget."""

from __future__ import annotations

from typing import Any, ClassVar

from arrcoc.model import ARRCOCModel
from arrcoc.phases.relevance import RelevancePhase


class FinetunePhase(RelevancePhase):
    """Fine-tunes the allocation with the projector, positions and LLM (``train_llm``; pretrained
    LLMs learn here at a low rate). Top encoder blocks can join through
    :class:`~arrcoc.callbacks.EncoderFreezing`. The relevance phase's terms carry on (distillation is off unless
    ``distill_weight`` > 0); give the model a ``budget_jitter`` so the LLM learns to answer at every budget.

    With ``full_tokens: true`` this is the fair full-token reference: the same phase, steps and data with
    allocation off (every patch; projector, positions and LLM learn, the allocation modules do not).
    """

    trainable: ClassVar[tuple[str, ...]] = ("scorers", "balancer", "allocator", "summary", "positions",
                                            "projector", "llm")
    default_lr: ClassVar[dict[str, float]] = {"scorers": 5e-4, "balancer": 5e-4, "allocator": 5e-4,
                                              "summary": 5e-4, "positions": 5e-4, "projector": 5e-4,
                                              "llm": 5e-4}

    def __init__(self, model: ARRCOCModel, distill_weight: float = 0.0, distill_temperature: float = 1.0,
                 train_llm: bool | None = True, **kwargs: Any) -> None:
        super().__init__(model, distill_weight=distill_weight, distill_temperature=distill_temperature,
                         train_llm=train_llm, **kwargs)
