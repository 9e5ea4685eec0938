"""Logs how many samples the data path skipped (``data/skipped``), summed over workers and ranks."""

from __future__ import annotations

import lightning as L


class DataStatsLogger(L.Callback):
    """Logs ``data/skipped`` (training) and ``data/skipped_eval`` from the :class:`VQADataModule`'s
    counters: bad samples are skipped and counted, never silently. Works with any datamodule that has
    ``skipped`` / ``skipped_eval`` attributes; does nothing for others."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "skipped"):
            pl_module.log("data/skipped", float(dm.skipped), on_step=True, on_epoch=False, reduce_fx="sum",
                          sync_dist=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "skipped_eval"):
            pl_module.log("data/skipped_eval", float(dm.skipped_eval), reduce_fx="sum", sync_dist=True)
