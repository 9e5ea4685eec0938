"""Phase 1 — align: frozen encoder, all patches; the projector and the position embedding learn."""

from __future__ import annotations

from typing import ClassVar

from arrcoc.phases.base import PhaseModule


class AlignPhase(PhaseModule):
    """Teaches the projector (and the 2-D positions) to speak the LLM's language with all 576 tokens.

    The LLM is frozen for pretrained presets and trains for the tiny preset, whose 2-layer decoder has
    read text only (``pretrained: text``) or starts random (``train_llm``). Allocation is off, so the
    allocation modules are frozen and unused.
    """

    trainable: ClassVar[tuple[str, ...]] = ("positions", "projector", "llm")
    full_tokens: ClassVar[bool] = True
    default_lr: ClassVar[dict[str, float]] = {"positions": 1e-3, "projector": 1e-3, "llm": 1e-3}
