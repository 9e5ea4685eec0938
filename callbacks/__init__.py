"""Training callbacks (``arrcoc.callbacks``): encoder freezing/unfreezing, token-budget annealing
and DeepSpeed sharding. They arrive with the training phases; the model already exposes what they
act on: ``VisionEncoder.blocks()``, ``TokenAllocator.set_budget()`` and ``ARRCOCModel.components()``.
"""
