"""Training callbacks (``arrcoc.callbacks``).

Now: :class:`DataStatsLogger` (skipped-sample counts). With the training phases: encoder
freezing/unfreezing, token-budget annealing and DeepSpeed sharding; the model already exposes what
they act on: ``VisionEncoder.blocks()``, ``TokenAllocator.set_budget()`` and ``ARRCOCModel.components()``.
"""

from arrcoc.callbacks.data_stats import DataStatsLogger

__all__ = ["DataStatsLogger"]
