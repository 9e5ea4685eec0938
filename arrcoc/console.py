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
