"""Allocation figures during validation: where the allocator looked, for the same few samples every time."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch

from arrcoc.figures import Column, columns_of, figure
from arrcoc.processing.files import atomic_path

log = logging.getLogger("arrcoc.train")


class AllocationFigures(L.Callback):
    """After each validation, one figure per sample for a fixed set of validation samples: the image with the kept
    patches outlined and the dropped ones dimmed, each scorer's map and the balanced map, the budget k, the
    balancer's weights, the question, the reference answers and the prediction (the figure of ``arrcoc visualize``).

    The samples are the first ``num_samples`` readable ones that global rank 0 validates: the evaluation stream is
    deterministic, so they are the same at every validation and the figures show how the allocation changes with
    training. Each is written as ``<log dir>/figures/step<N>/sample<i>.png``; a TensorBoard logger also gets them as
    figures (``allocation/sample<i>``, with a step slider). Validation on cached encoder features has no image to
    draw: then it says so once and draws nothing.

    Works with a :class:`~arrcoc.phases.PhaseModule`: its ``validation_step`` returns the batch's answers and
    allocations, which this draws.

    Args:
        num_samples: samples with a figure (0: none).
        every_n_validations: draw at every n-th validation (1: each).
    """

    def __init__(self, num_samples: int = 4, every_n_validations: int = 1) -> None:
        if num_samples < 0 or every_n_validations < 1:
            raise ValueError(f"AllocationFigures: num_samples={num_samples} must be >= 0 and every_n_validations="
                             f"{every_n_validations} >= 1")
        self.num_samples, self.every = num_samples, every_n_validations
        self.validations = 0
        self.written: list[Path] = []  # the directories written, in order (the run report links the last)
        self.shown: list[list[str]] = []  # the questions drawn, per directory written
        self._samples: list[tuple[torch.Tensor, Column]] = []
        self._left = 0
        self._said_features = False

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._samples = []
        draw = not trainer.sanity_checking and self.validations % self.every == 0 and trainer.is_global_zero
        self._left = self.num_samples if draw else 0

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        if self._left <= 0 or not hasattr(outputs, "allocation"):  # a module whose validation_step returns no answers
            return
        if batch.get("pixel_values") is None:  # a feature cache: nothing to draw on
            if not self._said_features:
                log.info("AllocationFigures: the validation data are cached encoder features, so there is no image "
                         "to draw the allocation on; no figures")
                self._said_features = True
            self._left = 0
            return
        rows = batch["valid"].nonzero().flatten()[: self._left].tolist()
        if not rows:
            return
        # the answers and allocations validation_step just made: nothing runs the model again (and every rank runs
        # the same forward passes, which ZeRO-3 needs)
        columns = columns_of(outputs, [batch["question"][i] for i in rows], [batch["answers"][i] for i in rows], rows)
        self._samples += [(batch["pixel_values"][i].float().cpu(), col) for i, col in zip(rows, columns, strict=True)]
        self._left -= len(rows)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.validations += 1
        log_dir = trainer.log_dir or trainer.default_root_dir  # a broadcast under DDP: every rank asks
        if not self._samples:
            return
        import matplotlib.pyplot as plt
        from lightning.pytorch.loggers import TensorBoardLogger

        out = Path(log_dir) / "figures" / f"step{trainer.global_step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for n, (pixels, column) in enumerate(self._samples):
            fig = figure(pl_module.model, pixels, [column])
            with atomic_path(out / f"sample{n}.png") as tmp:
                fig.savefig(tmp, format="png", dpi=110)
            for board in boards:
                board.experiment.add_figure(f"allocation/sample{n}", fig, global_step=trainer.global_step)
            plt.close(fig)
        self.written.append(out)
        self.shown.append([column.question for _, column in self._samples])
        log.info("val: %d allocation figures in %s", len(self._samples), out)
        self._samples = []
