"""DeepSpeed sharding: frozen weights out of ZeRO checkpoints, per-rank memory in the logs, one
consolidated weights file at fit end that ``init_from`` accepts."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy

log = logging.getLogger("arrcoc.train")


def deepspeed_strategy(stage: int = 2, offload_optimizer: bool = False, batch_size: int | None = None,
                       **kwargs) -> DeepSpeedStrategy:
    """A ZeRO strategy configured for arrcoc: frozen parameters (the encoder) never enter a
    checkpoint, and DeepSpeed's timing logs know the batch size (WebDataset loaders have no
    batch sampler to read it from)."""
    return DeepSpeedStrategy(stage=stage, offload_optimizer=offload_optimizer, exclude_frozen_parameters=True,
                             logging_batch_size_per_gpu=batch_size or "auto", **kwargs)


class DeepSpeedSharding(L.Callback):
    """Makes a DeepSpeed run's checkpoints usable by the next phase.

    When the strategy is DeepSpeed: turns on ``exclude_frozen_parameters`` (a frozen encoder is not
    written into every sharded checkpoint), logs each rank's parameter and optimizer-state size at fit
    start, and at fit end converts the last ZeRO checkpoint directory into one fp32 weights file
    (``consolidated``: ``{'state_dict', 'global_step'}``) for ``init_from``. Without DeepSpeed it does
    nothing and says so once.

    Args:
        consolidated: output file name, relative to the checkpoint's directory.
    """

    def __init__(self, consolidated: str = "consolidated.pt") -> None:
        self.consolidated = consolidated
        self.active = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.active = isinstance(trainer.strategy, DeepSpeedStrategy)
        if not self.active:
            log.info("DeepSpeedSharding: strategy is %s, not DeepSpeed; nothing to do",
                     type(trainer.strategy).__name__)
            return
        trainer.strategy.exclude_frozen_parameters = True

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        params = sum(p.numel() * p.element_size() for p in pl_module.parameters() if p.requires_grad)
        opt_bytes = sum(t.numel() * t.element_size() for opt in trainer.optimizers for s in opt.state.values()
                        for t in s.values() if torch.is_tensor(t))
        log.info("rank %d: %.1f MiB trainable parameters, %.1f MiB optimizer state (ZeRO stage %s)",
                 trainer.global_rank, params / 2**20, opt_bytes / 2**20,
                 trainer.strategy.config.get("zero_optimization", {}).get("stage"))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        ckpt = _last_checkpoint(trainer)
        if ckpt is None:
            log.warning("DeepSpeedSharding: no checkpoint to consolidate (add a ModelCheckpoint)")
            return
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

            out = Path(ckpt).parent / self.consolidated
            convert_zero_checkpoint_to_fp32_state_dict(ckpt, out)
            # Keep the weights alone: the full client state pickles hyperparameter objects, which a
            # `torch.load(weights_only=True)` (what init_from does) refuses. We wrote it just above.
            full = torch.load(out, map_location="cpu", weights_only=False)
            torch.save({"state_dict": full["state_dict"], "global_step": full.get("global_step")}, out)
            log.info("consolidated %s -> %s (give it to the next phase as init_from)", ckpt, out)
        trainer.strategy.barrier()


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    return getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or None
