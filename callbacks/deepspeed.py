"""DeepSpeed sharding: frozen weights out of ZeRO checkpoints, per-rank memory in the logs, one
consolidated weights file at fit end that ``init_from`` accepts."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor, nn

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
    written into every sharded checkpoint) and lets ``--ckpt_path`` resume from such a checkpoint
    (non-strict module loading: the frozen weights come from the config, as in the run that wrote
    it); after the first optimizer step, logs what each rank holds (trainable parameters, optimizer
    state, CUDA memory); at fit end converts the last ZeRO checkpoint directory into one fp32 weights
    file (``consolidated``: ``{'state_dict', 'global_step'}``) for ``init_from``, with the frozen
    weights added back so the next phase gets the whole model. Without DeepSpeed it does nothing and
    says so once.

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
        # The checkpoints lack the frozen weights, so a strict load on resume would refuse them.
        pl_module.strict_loading = False
        self._reported = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not self.active or self._reported:
            return
        self._reported = True  # once, after the first step: before it the optimizer state is empty
        params = sum(_numel(p) * p.element_size() for p in pl_module.parameters() if p.requires_grad)
        opt_bytes = sum(t.numel() * t.element_size() for opt in trainer.optimizers for s in opt.state.values()
                        for t in s.values() if torch.is_tensor(t))
        cuda = f", {torch.cuda.memory_allocated() / 2**30:.2f} GiB CUDA memory" if torch.cuda.is_available() else ""
        log.info("rank %d: %.1f MiB trainable parameters, %.1f MiB optimizer state (ZeRO stage %s)%s",
                 trainer.global_rank, params / 2**20, opt_bytes / 2**20,
                 trainer.strategy.config.get("zero_optimization", {}).get("stage"), cuda)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        ckpt = _last_checkpoint(trainer)
        if ckpt is None:
            log.warning("DeepSpeedSharding: no checkpoint to consolidate (add a ModelCheckpoint)")
            return
        frozen = frozen_state(pl_module, zero3=trainer.strategy.zero_stage_3)  # a collective under ZeRO-3
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

            out = Path(ckpt).parent / self.consolidated
            convert_zero_checkpoint_to_fp32_state_dict(ckpt, out)
            # Keep the weights alone: the full client state pickles hyperparameter objects, which a
            # `torch.load(weights_only=True)` (what init_from does) refuses. We wrote it just above.
            full = torch.load(out, map_location="cpu", weights_only=False)
            state, added = add_frozen(full["state_dict"], frozen)
            torch.save({"state_dict": state, "global_step": full.get("global_step")}, out)
            log.info("consolidated %s -> %s with %d frozen tensors added back (give it to the next phase as "
                     "init_from)", ckpt, out, added)
        trainer.strategy.barrier()


def frozen_state(module: nn.Module, zero3: bool = False) -> dict[str, Tensor]:
    """CPU copies of every state-dict entry that is not a trainable parameter (frozen parameters, tied
    copies of them, persistent buffers): what ``exclude_frozen_parameters`` leaves out of a checkpoint.
    Under ZeRO-3 the frozen parameters are gathered first, which every rank must join."""
    entries = module.state_dict(keep_vars=True)
    keys = [k for k, t in entries.items() if not (isinstance(t, nn.Parameter) and t.requires_grad)]
    params = list({id(t): t for k in keys if isinstance(t := entries[k], nn.Parameter)}.values())
    if zero3 and params:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        gathered = contextlib.nullcontext()
    with gathered:
        return {k: entries[k].detach().cpu().clone() for k in keys}


def add_frozen(state: dict[str, Tensor], frozen: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """``state`` (consolidated trainable weights) with the frozen tensors it lacks added; returns the
    merged dict and how many were added. A key in both keeps ``state``'s tensor (what was trained)."""
    added = {k: v for k, v in frozen.items() if k not in state}
    return {**state, **added}, len(added)


def _numel(p: Tensor) -> int:
    return int(getattr(p, "ds_numel", p.numel()))  # ZeRO-3 leaves a placeholder; ds_numel is the real size


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    return getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or None
