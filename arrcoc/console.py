"""arrcoc's own console messages: one handler on the ``arrcoc`` logger, shown once."""

from __future__ import annotations

import logging


def console_logging(level: int = logging.INFO) -> None:
    """Show arrcoc's reports (init_from, parameter tables, skipped steps and samples, histograms, pretraining
    progress) on the console as ``[arrcoc] ...`` lines. Idempotent."""
    logger = logging.getLogger("arrcoc")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[arrcoc] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)
        # Not again through the root logger, which a library's module-level logging.warning() configures.
        logger.propagate = False


#: Library messages that say nothing to a user of arrcoc, filtered at the source (``--verbose`` keeps them):
#: Lightning's warning that modules are in eval mode (the frozen encoder is, by design), a deprecation inside
#: Lightning's own code, LightningCLI's warning about being handed the command line it also finds in sys.argv
#: (what ``arrcoc fit`` does), Lightning's tip advertising a logging service, and the CSV logger's warning that its
#: directory is not empty (the phase configs' TensorBoard logger shares it, by design: one version directory).
NOISE_WARNINGS = (
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"LightningCLI's args parameter is intended to run from within",
    r"Experiment logs directory .* exists and is not empty",
)
NOISE_LOG_PREFIXES = ("💡 Tip:", "`Trainer(val_check_interval=1)` was configured")  # the latter: the bench's trainer


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(NOISE_LOG_PREFIXES)


def quiet_libraries(verbose: bool = False) -> None:
    """Filter :data:`NOISE_WARNINGS` and :data:`NOISE_LOG_PREFIXES` for this process (children started by
    Lightning run the same command, so they filter too); ``verbose`` leaves everything on."""
    import warnings

    if verbose:
        return
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    try:  # transformers' "Loading weights" bar for a 2 MB model, once per phase
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNoise) for f in logger.filters):
            logger.addFilter(_DropNoise())
