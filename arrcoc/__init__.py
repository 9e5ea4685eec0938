"""arrcoc: adaptive relevance realization for vision-language models.

Data flows one way: shards -> datamodule -> encoder -> scorers -> balancer -> allocator ->
projector -> LLM -> loss and metrics.

Public classes are imported lazily (``from arrcoc import ARRCOCModel`` works as usual), so the
``arrcoc`` command answers ``--help`` without loading torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ARRCOCModel": "arrcoc.model", "ARRCOCOutput": "arrcoc.model", "BatchAllocation": "arrcoc.model",
    "Relevance": "arrcoc.model",
    "AllocationRecord": "arrcoc.model", "DroppedTokenSummary": "arrcoc.summary",
    "EncoderOutput": "arrcoc.encoder", "VisionEncoder": "arrcoc.encoder", "LanguageModel": "arrcoc.language_model",
    "MLPProjector": "arrcoc.projector", "OpponentBalancer": "arrcoc.balancer", "Selection": "arrcoc.allocator",
    "TokenAllocator": "arrcoc.allocator", "RelevanceScorer": "arrcoc.scorers", "ScorerInputs": "arrcoc.scorers",
    "PropositionalScorer": "arrcoc.scorers", "PerspectivalScorer": "arrcoc.scorers",
    "ParticipatoryScorer": "arrcoc.scorers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'arrcoc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
