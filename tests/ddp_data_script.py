"""Run by tests/test_ddp_data.py: a real two-process CPU DDP (gloo) fit over uneven shards.

Every training step logs with ``sync_dist=True`` (a collective), so ranks with different batch
counts would hang; the test runs this under a timeout that fails instead.
"""

import json
import sys

import hang_watchdog  # noqa: F401  (first: a hang prints every thread's stack; see tests/hang_watchdog.py)
import lightning as L
import torch

from arrcoc.callbacks import DataStatsLogger
from arrcoc.data.datamodule import VQADataModule


class Probe(L.LightningModule):
    def __init__(self, out: str) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.out = out
        self.train_batches: list[int] = []
        self.val_epochs: list[dict] = []

    def on_train_epoch_start(self) -> None:
        self.train_batches.append(0)

    def training_step(self, batch, idx):
        self.train_batches[-1] += 1
        assert len(batch["question_id"]) == 4, "training batches are full"
        self.log("seen", float(len(batch["question_id"])), sync_dist=True, reduce_fx="sum")
        return (self.w * batch["pixel_values"].mean()).sum() + (self.w**2).sum()

    def on_validation_epoch_start(self) -> None:
        self.val_epochs.append({"batches": 0, "ids": []})

    def validation_step(self, batch, idx):
        self.val_epochs[-1]["batches"] += 1
        self.val_epochs[-1]["ids"] += [int(q) for q, v in zip(batch["question_id"], batch["valid"], strict=True) if v]
        self.log("valid", float(batch["valid"].sum()), sync_dist=True, reduce_fx="sum")

    def on_fit_end(self) -> None:
        record = {"rank": self.global_rank, "world": self.trainer.world_size, "train_batches": self.train_batches,
                  "val": self.val_epochs, "skipped": self.trainer.datamodule.skipped,
                  "logged_skipped": float(self.trainer.callback_metrics.get("data/skipped", -1))}
        with open(f"{self.out}/rank{self.global_rank}.json", "w") as f:
            json.dump(record, f)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


if __name__ == "__main__":
    train, val, out = sys.argv[1:4]
    dm = VQADataModule(train=train, val=val, batch_size=4, eval_batch_size=3, samples_per_epoch=40, num_workers=2,
                       shuffle_buffer=4, cache_dir=f"{out}/cache")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[DataStatsLogger()])
    trainer.fit(Probe(out), datamodule=dm)
