"""Run by tests/test_ddp_nan.py: a two-process CPU DDP fit in which rank 1 alone gets a non-finite loss
at step 2; each rank records the projector's weights at every step and its skip count. Validation runs
at the end, on both ranks."""

import json
import sys

import hang_watchdog  # noqa: F401  (first: a hang prints every thread's stack; see tests/hang_watchdog.py)
import lightning as L
import torch

from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.sample_task import SampleTaskConfig
from arrcoc.model import ARRCOCModel
from arrcoc.phases import AlignPhase

BAD_STEP = 2


class NaNOnRank1(AlignPhase):
    def compute_losses(self, inputs, out):
        losses = super().compute_losses(inputs, out)
        if self.global_step == BAD_STEP and self.global_rank == 1:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


class Recorder(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.snaps, self.skips = out, [], []

    def _snap(self, pl_module):
        self.snaps.append(pl_module.model.projector[0].weight.detach().flatten()[:64].tolist())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._snap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.skips.append(pl_module.nan_guard.in_a_row)

    def on_fit_end(self, trainer, pl_module):
        self._snap(pl_module)
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"snaps": self.snaps, "skips": self.skips, "world": trainer.world_size,
                       "steps": trainer.global_step}, f)


if __name__ == "__main__":
    out = sys.argv[1]
    torch.manual_seed(0)
    dm = VQADataModule(sample_task=SampleTaskConfig(train=64, val=8), cache_dir=f"{out}/cache", batch_size=4,
                       samples_per_epoch=64, num_workers=0, shuffle_buffer=4)
    phase = NaNOnRank1(ARRCOCModel(), lr={"projector": 1e-2, "positions": 1e-3, "llm": 1e-3})
    # Validation at the end (and the sanity check before): the budget histogram is written under DDP too.
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5, val_check_interval=5,
                        default_root_dir=out,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[Recorder(out)])
    trainer.fit(phase, datamodule=dm)
