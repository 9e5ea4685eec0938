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

from arrcoc.phases.zero3 import gathered
from arrcoc.processing.files import atomic_path

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
    it); where the optimizer state is offloaded to the CPU, lets DeepSpeed step torch's AdamW there
    (:func:`allow_torch_optimizer_offload`); after the first optimizer step, logs what each rank holds
    (its trainable parameters, optimizer state, CUDA memory); at fit end converts the last ZeRO
    checkpoint directory into one weights file (``consolidated``: ``{'state_dict', 'global_step'}``) for
    ``init_from``: the trained weights in fp32, with the frozen ones added back in their own dtype, so the
    next phase gets the whole model.
    Without DeepSpeed it does nothing and says so once.

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
        allow_torch_optimizer_offload(trainer.strategy)
        self._reported = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # once, after the first optimizer step (not micro-batch): before it the optimizer state is empty
        if not self.active or self._reported or trainer.global_step < 1:
            return
        self._reported = True
        params = sum(_local_numel(p) * p.element_size() for p in pl_module.parameters() if p.requires_grad)
        opt_bytes = sum(t.numel() * t.element_size() for opt in trainer.optimizers for s in opt.state.values()
                        for t in s.values() if torch.is_tensor(t))
        cuda = f", {torch.cuda.memory_allocated() / 2**30:.2f} GiB CUDA memory" if torch.cuda.is_available() else ""
        log.info("rank %d holds %.1f MiB of trainable parameters, %.1f MiB of optimizer state (ZeRO stage %s)%s",
                 trainer.global_rank, params / 2**20, opt_bytes / 2**20,
                 trainer.strategy.config.get("zero_optimization", {}).get("stage"), cuda)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        ckpt = _last_checkpoint(trainer)
        if ckpt is None:
            log.warning("DeepSpeedSharding: no checkpoint to consolidate (add a ModelCheckpoint)")
            return
        # Every rank joins (a gather under ZeRO-3); only rank 0 keeps a copy.
        frozen = frozen_state(pl_module, zero3=trainer.strategy.zero_stage_3, keep=trainer.is_global_zero)
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

            out = Path(ckpt).parent / self.consolidated
            # Written beside `out` and renamed into place: a kill or a full disk keeps the previous file.
            with atomic_path(out) as tmp:
                convert_zero_checkpoint_to_fp32_state_dict(ckpt, tmp)
                # Keep the weights alone: the full client state pickles hyperparameter objects, which a
                # `torch.load(weights_only=True)` (what init_from does) refuses. We wrote it just above.
                full = torch.load(tmp, map_location="cpu", weights_only=False)
                state, added = add_frozen(full["state_dict"], frozen)
                torch.save({"state_dict": state, "global_step": full.get("global_step")}, tmp)
            log.info("consolidated %s -> %s with %d frozen tensors added back (give it to the next phase as "
                     "init_from)", ckpt, out, added)
        trainer.strategy.barrier()


def allow_torch_optimizer_offload(strategy: DeepSpeedStrategy) -> bool:
    """Where ``strategy`` offloads the optimizer state to the CPU (ZeRO-Offload), let DeepSpeed step the phases'
    torch AdamW there: DeepSpeed refuses any optimizer but its own CPU Adam under offload unless
    ``zero_force_ds_cpu_optimizer`` is false. Sets that (unless the config already says), logs it, and returns
    whether the strategy offloads. torch's AdamW on the CPU is slower than DeepSpeed's CPU Adam; see
    docs/scale-out.md."""
    zero = strategy.config.get("zero_optimization", {}) if isinstance(strategy.config, dict) else {}
    device = (zero.get("offload_optimizer") or {}).get("device", "none")
    if device in (None, "none"):
        return False
    if "zero_force_ds_cpu_optimizer" not in strategy.config:
        strategy.config["zero_force_ds_cpu_optimizer"] = False
        log.info("DeepSpeedSharding: optimizer state offloaded to %s; torch's AdamW steps there "
                 "(zero_force_ds_cpu_optimizer: false)", device)
    return True


def frozen_state(module: nn.Module, zero3: bool = False, keep: bool = True) -> dict[str, Tensor]:
    """CPU copies of every state-dict entry that is not a trainable parameter (frozen parameters, tied
    copies of them, persistent buffers): what ``exclude_frozen_parameters`` leaves out of a checkpoint.
    Under ZeRO-3 each frozen parameter is gathered in turn, which every rank must join; ranks with
    ``keep=False`` take part and copy nothing (returns ``{}``)."""
    entries = module.state_dict(keep_vars=True)
    keys = [k for k, t in entries.items() if not (isinstance(t, nn.Parameter) and t.requires_grad)]
    out: dict[str, Tensor] = {}
    for key in keys:
        tensor = entries[key]
        with gathered([tensor]) if zero3 else contextlib.nullcontext():  # a collective for a split weight
            if keep:
                out[key] = tensor.detach().cpu().clone()
    return out


def add_frozen(state: dict[str, Tensor], frozen: dict[str, Tensor]) -> tuple[dict[str, Tensor], int]:
    """``state`` (consolidated trainable weights) with the frozen tensors it lacks added; returns the
    merged dict and how many were added. A key in both keeps ``state``'s tensor (what was trained)."""
    added = {k: v for k, v in frozen.items() if k not in state}
    return {**state, **added}, len(added)


def _local_numel(p: Tensor) -> int:
    """Elements this rank holds: under ZeRO-3 its partition (``ds_tensor``), else the whole parameter."""
    part = getattr(p, "ds_tensor", None)
    return int(part.numel()) if part is not None else p.numel()


def _last_checkpoint(trainer: L.Trainer) -> str | None:
    cb = trainer.checkpoint_callback
    if cb is None:
        return None
    return getattr(cb, "last_model_path", None) or getattr(cb, "best_model_path", None) or None
