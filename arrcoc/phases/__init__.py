"""Training phases, each a LightningModule: align (1) -> relevance (2) -> allocation fine-tune (3)."""

from arrcoc.phases.align import AlignPhase
from arrcoc.phases.allocation import AllocationPhase
from arrcoc.phases.base import PhaseModule, load_weights
from arrcoc.phases.relevance import RelevancePhase

__all__ = ["AlignPhase", "AllocationPhase", "PhaseModule", "RelevancePhase", "load_weights"]
