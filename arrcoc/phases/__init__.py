"""Training phases, each a LightningModule: align (1) -> relevance (2) -> allocation fine-tune (3)."""

from arrcoc.phases.align import AlignPhase
from arrcoc.phases.base import PhaseModule
from arrcoc.phases.finetune import FinetunePhase
from arrcoc.phases.relevance import RelevancePhase

__all__ = ["AlignPhase", "FinetunePhase", "PhaseModule", "RelevancePhase"]
