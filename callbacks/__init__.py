"""Training callbacks (``arrcoc.callbacks``): encoder freezing/unfreezing, token-budget annealing, DeepSpeed
sharding, skipped-data logging, allocation figures, progress lines, the run report, the prediction writer, and
stopping on a signal with a checkpoint."""

from arrcoc.callbacks.budget import BudgetAnnealing
from arrcoc.callbacks.data_stats import DataStatsLogger
from arrcoc.callbacks.deepspeed import DeepSpeedSharding, deepspeed_strategy
from arrcoc.callbacks.figures import AllocationFigures
from arrcoc.callbacks.freezing import EncoderFreezing, Unfreeze, parameter_table
from arrcoc.callbacks.predictions import PredictionWriter
from arrcoc.callbacks.progress import ProgressLines
from arrcoc.callbacks.report import RunReport
from arrcoc.callbacks.stopping import AtomicCheckpointIO, GracefulStop, stopped_by_signal

__all__ = ["AllocationFigures", "AtomicCheckpointIO", "BudgetAnnealing", "DataStatsLogger", "DeepSpeedSharding",
           "EncoderFreezing", "GracefulStop", "PredictionWriter", "ProgressLines", "RunReport", "Unfreeze",
           "deepspeed_strategy", "parameter_table", "stopped_by_signal"]
