"""Run by tests/test_ddp_freezing.py: a two-process CPU DDP fit in which the top encoder block is
unfrozen at step 2 by EncoderFreezing; each rank records that block's weights every step."""

import json
import sys

import hang_watchdog  # noqa: F401  (first: a hang prints every thread's stack; see tests/hang_watchdog.py)
import lightning as L
import torch

from arrcoc.callbacks import EncoderFreezing, Unfreeze
from arrcoc.data.datamodule import VQADataModule
from arrcoc.data.sample_task import SampleTaskConfig
from arrcoc.encoder import VisionEncoder
from arrcoc.model import ARRCOCModel
from arrcoc.phases import AlignPhase


class Recorder(L.Callback):
    def __init__(self, out: str) -> None:
        self.out, self.top, self.bottom = out, [], []

    def _snap(self, pl_module):
        blocks = pl_module.model.encoder.blocks()
        self.top.append(blocks[-1].attn.in_proj_weight.detach().flatten()[:64].tolist())
        self.bottom.append(blocks[0].attn.in_proj_weight.detach().flatten()[:64].tolist())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._snap(pl_module)

    def on_fit_end(self, trainer, pl_module):
        self._snap(pl_module)
        with open(f"{self.out}/rank{trainer.global_rank}.json", "w") as f:
            json.dump({"top": self.top, "bottom": self.bottom, "world": trainer.world_size}, f)


if __name__ == "__main__":
    out = sys.argv[1]
    torch.manual_seed(0)
    dm = VQADataModule(sample_task=SampleTaskConfig(train=64, val=8), cache_dir=f"{out}/cache", batch_size=4,
                       samples_per_epoch=64, num_workers=0, shuffle_buffer=4)
    encoder = VisionEncoder("arrcoc-tiny-vit", layer=-1)  # both tiny blocks produce the features
    phase = AlignPhase(ARRCOCModel(encoder=encoder), lr={"projector": 1e-3, "positions": 1e-3, "llm": 1e-3})
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5, limit_val_batches=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False,
                        callbacks=[EncoderFreezing([Unfreeze(at=2, blocks=1, lr_scale=1.0)], lr=5e-2),
                                   Recorder(out)])
    trainer.fit(phase, datamodule=dm)
