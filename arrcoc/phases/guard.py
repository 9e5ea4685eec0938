"""The non-finite-loss guard: a NaN or inf loss skips its step on every rank, and too many in a row stop
the run with a checkpoint.

Lightning refuses a skipped backward under DDP (``training_step`` returning None) and DeepSpeed cannot
skip one, so a skipped step still back-propagates: :func:`zero_loss`, whose gradients are exact zeros,
and the optimizer step then drops them (:meth:`NonFiniteGuard.before_optimizer_step`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import DeepSpeedStrategy, Strategy
from torch import Tensor, nn

log = logging.getLogger("arrcoc.train")


class NonFiniteGuard:
    """Decides, per training batch, whether its loss is used or the step is skipped.

    Counts skips in a row (``in_a_row``, reset by a finite step) and in all (``total``), logs both as
    ``train/skipped_nan_steps`` and ``train/skipped_nan_total``; the skip that makes ``in_a_row`` exceed
    ``max_in_a_row`` saves ``<default_root_dir>/nan-stop-step<N>.ckpt`` and raises. Counted per batch:
    with gradient accumulation a non-finite micro-batch drops the whole accumulated step.

    Args:
        max_in_a_row: consecutive non-finite losses tolerated (the phase's ``max_nan_steps``).
    """

    def __init__(self, max_in_a_row: int) -> None:
        self.max_in_a_row = max_in_a_row
        self.in_a_row = 0
        self.total = 0
        self.skipping = False  # the current step's gradients are the zero loss's: drop them

    def check(self, module: L.LightningModule, loss: Tensor) -> Tensor | None:
        """None when ``loss`` (a scalar) is finite on every rank; otherwise the zero loss to back-propagate
        in its place (every rank skips together, or DDP would hang on the next reduction)."""
        trainer = module.trainer
        bad = not bool(torch.isfinite(loss.detach()))
        if trainer.world_size > 1:
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if not bad:
            self.in_a_row = 0
            return None
        strategy = trainer.strategy
        if isinstance(strategy, DeepSpeedStrategy) and strategy.zero_stage_3:
            raise RuntimeError(
                f"non-finite loss at step {module.global_step} under DeepSpeed ZeRO-3, where arrcoc cannot skip a "
                "step: the parameters are partitioned outside forward, so no zero loss reaches them. Use ZeRO-2 "
                "(configs/presets/deepspeed.yaml) or remove the cause (learning rate, precision, data)")
        self._count(module)
        self.skipping = True
        return zero_loss(module)

    def before_optimizer_step(self, optimizer: torch.optim.Optimizer, strategy: Strategy) -> None:
        """On a skipped step, remove every gradient so the optimizer leaves the weights and its state alone.
        (DeepSpeed owns the gradients: there the zeros stay, and Adam's momentum and weight decay still move
        the weights a little on that step.)"""
        if self.skipping and not isinstance(strategy, DeepSpeedStrategy):
            for group in optimizer.param_groups:  # no gradient: AdamW skips the parameter entirely
                for p in group["params"]:
                    p.grad = None
        self.skipping = False

    def on_fit_start(self) -> None:
        self.skipping = False  # nothing carried over from an earlier, interrupted fit

    def _count(self, module: L.LightningModule) -> None:
        self.in_a_row += 1
        self.total += 1
        module.log("train/skipped_nan_steps", float(self.in_a_row))
        module.log("train/skipped_nan_total", float(self.total))
        log.warning("non-finite loss at step %d: step skipped (%d in a row)", module.global_step, self.in_a_row)
        if self.in_a_row > self.max_in_a_row:
            trainer = module.trainer
            path = Path(trainer.default_root_dir) / f"nan-stop-step{module.global_step}.ckpt"
            trainer.save_checkpoint(path)
            trainer.should_stop = True
            raise RuntimeError(f"{self.in_a_row} non-finite losses in a row (max_nan_steps={self.max_in_a_row}); "
                               f"stopped, checkpoint saved to {path}")


def zero_loss(module: nn.Module) -> Tensor:
    """A scalar zero that reaches every trainable weight of ``module`` and no activation: its gradients are
    exactly 0. (``nan_loss * 0`` is not: 0 * NaN is NaN in every gradient behind it.)"""
    params = [p for p in module.parameters() if p.requires_grad]
    return torch.stack([p.sum() for p in params]).sum() * 0.0
