"""Relevance scorers: the three ways of knowing, and the registry that names them.

A scorer maps patch features (and the question) to one standardised score per patch ``[B, N]``.
Subclass :class:`RelevanceScorer` for your own; reference it from YAML by ``class_path``.
"""

from __future__ import annotations

from collections.abc import Callable

from arrcoc.scorers.base import RelevanceScorer, ScorerInputs, masked_mean, standardize
from arrcoc.scorers.participatory import ParticipatoryScorer
from arrcoc.scorers.perspectival import PerspectivalScorer
from arrcoc.scorers.propositional import PropositionalScorer

#: Built-in scorers by name. Adding one is one line here.
SCORERS: dict[str, type[RelevanceScorer]] = {
    "propositional": PropositionalScorer,
    "perspectival": PerspectivalScorer,
    "participatory": ParticipatoryScorer,
}

#: What a config may give for a scorer: a registry name, or a callable (a class, or what
#: jsonargparse builds from ``class_path``/``init_args``) taking ``(vision_dim, text_dim)``.
ScorerFactory = Callable[[int, int], RelevanceScorer]
ScorerSpec = str | ScorerFactory


def build_scorer(spec: ScorerSpec | RelevanceScorer, vision_dim: int, text_dim: int) -> RelevanceScorer:
    """Resolve one scorer spec to a module."""
    if isinstance(spec, RelevanceScorer):
        return spec
    if isinstance(spec, str):
        if spec not in SCORERS:
            raise ValueError(
                f"scorers: unknown scorer name {spec!r}; valid names: {sorted(SCORERS)}, "
                "or a RelevanceScorer subclass given by class_path"
            )
        return SCORERS[spec](vision_dim, text_dim)
    if callable(spec):
        scorer = spec(vision_dim, text_dim)
        if not isinstance(scorer, RelevanceScorer):
            raise ValueError(f"scorers: {spec!r} built a {type(scorer).__name__}, not a RelevanceScorer")
        return scorer
    raise ValueError(f"scorers: {spec!r} is neither a scorer name, a RelevanceScorer nor a factory")


__all__ = [
    "SCORERS", "ParticipatoryScorer", "PerspectivalScorer", "PropositionalScorer", "RelevanceScorer",
    "ScorerFactory", "ScorerInputs", "ScorerSpec", "build_scorer", "masked_mean", "standardize",
]
