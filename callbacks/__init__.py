"""Training callbacks (``arrcoc.callbacks``): encoder freezing/unfreezing, token-budget annealing,
DeepSpeed sharding, skipped-data logging, and the prediction writer."""

from arrcoc.callbacks.budget import BudgetAnnealing
from arrcoc.callbacks.data_stats import DataStatsLogger
from arrcoc.callbacks.deepspeed import DeepSpeedSharding, deepspeed_strategy
from arrcoc.callbacks.freezing import EncoderFreezing, Unfreeze, parameter_table
from arrcoc.callbacks.predictions import PredictionWriter

__all__ = ["BudgetAnnealing", "DataStatsLogger", "DeepSpeedSharding", "EncoderFreezing", "PredictionWriter",
           "Unfreeze", "deepspeed_strategy", "parameter_table"]
