"""arrcoc: adaptive relevance realization for vision-language models.

Data flows one way: shards -> datamodule -> encoder -> scorers -> balancer -> allocator ->
projector -> LLM -> loss and metrics.
"""

from arrcoc.allocator import Selection, TokenAllocator
from arrcoc.balancer import OpponentBalancer
from arrcoc.compression import DroppedTokenSummary
from arrcoc.encoder import EncoderOutput, VisionEncoder
from arrcoc.language_model import LanguageModel
from arrcoc.model import Allocation, AllocationRecord, ARRCOCModel, ARRCOCOutput
from arrcoc.projector import MLPProjector
from arrcoc.scorers import (
    ParticipatoryScorer,
    PerspectivalScorer,
    PropositionalScorer,
    RelevanceScorer,
    ScorerInputs,
)

__version__ = "0.1.0"

__all__ = [
    "ARRCOCModel", "ARRCOCOutput", "Allocation", "AllocationRecord", "DroppedTokenSummary", "EncoderOutput",
    "LanguageModel", "MLPProjector", "OpponentBalancer", "ParticipatoryScorer", "PerspectivalScorer",
    "PropositionalScorer", "RelevanceScorer", "ScorerInputs", "Selection", "TokenAllocator", "VisionEncoder",
]
