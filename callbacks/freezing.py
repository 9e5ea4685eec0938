"""Encoder freezing/unfreezing on a schedule, correct under DDP and honest under DeepSpeed."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import lightning as L
from lightning.pytorch.strategies import DeepSpeedStrategy
from torch import Tensor

from arrcoc.language_model import is_adapter_key

log = logging.getLogger("arrcoc.train")


@dataclass
class Unfreeze:
    """From ``at`` (step or epoch) on, the top ``blocks`` encoder blocks train at ``lr_scale`` x ``lr``."""

    at: int
    blocks: int
    lr_scale: float = 0.1


class EncoderFreezing(L.Callback):
    """Unfreezes the top encoder blocks on a schedule, and prints what trains at fit start.

    Under DDP, flipping ``requires_grad`` after the model is wrapped is broken (DDP registers its
    hooks once). So every block the schedule will ever unfreeze is made trainable at fit start, in
    its own optimizer group at learning rate 0, and the schedule raises that group's rate when its
    time comes: the weights do not move before then, and DDP keeps them synchronised after.
    Under DeepSpeed only entries with ``at=0`` are allowed (DeepSpeed fixes the trainable set at
    set-up); anything else is a clear error.

    Args:
        schedule: list of :class:`Unfreeze` entries (YAML: ``[{at: 0, blocks: 2, lr_scale: 0.1}]``).
        unit: ``step`` or ``epoch``.
        lr: base learning rate of the encoder blocks (times each entry's ``lr_scale``).
    """

    def __init__(self, schedule: list[Unfreeze] | None = None, unit: str = "step", lr: float = 1e-4) -> None:
        if unit not in ("step", "epoch"):
            raise ValueError(f"EncoderFreezing unit={unit!r}; valid: 'step', 'epoch'")
        self.schedule = sorted(schedule or [], key=lambda u: u.at)
        for u in self.schedule:
            if u.blocks < 0 or u.at < 0 or u.lr_scale < 0:
                raise ValueError(f"EncoderFreezing entry {u}: at, blocks and lr_scale must be >= 0")
        self.unit, self.lr = unit, lr

    def _active(self, now: int) -> dict[int, float]:
        """Block index -> lr scale of the blocks that train at ``now``."""
        scales: dict[int, float] = {}
        for u in self.schedule:
            if u.at <= now:
                scales = {i: u.lr_scale for i in range(u.blocks)}  # later entries replace earlier ones
        return scales

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.schedule:
            return
        if isinstance(trainer.strategy, DeepSpeedStrategy) and any(u.at > 0 for u in self.schedule):
            raise ValueError("EncoderFreezing: DeepSpeed fixes the trainable parameters at set-up; use only "
                             "schedule entries with at=0 (unfreeze at a phase boundary instead)")
        blocks = pl_module.model.encoder.blocks()
        most = max(u.blocks for u in self.schedule)
        if most > len(blocks):
            raise ValueError(f"EncoderFreezing: blocks={most} but the encoder has {len(blocks)}")
        self.groups = []
        for depth in range(most):  # depth 0 = the top block
            block = blocks[len(blocks) - 1 - depth]
            block.requires_grad_(True)
            params = list(block.parameters())
            self.groups.append({"params": params, "name": f"encoder.block-{depth}", "base_lr": self.lr,
                                "lr": 0.0, "scale": 0.0, "weight_decay": 0.0})
        pl_module.extra_param_groups = self.groups

    def _update(self, trainer: L.Trainer, now: int) -> None:
        active = self._active(now)
        names = {f"encoder.block-{d}": s for d, s in active.items()}
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                if group.get("name", "").startswith("encoder.block-"):
                    group["scale"] = names.get(group["name"], 0.0)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        """Blocks still waiting (scale 0) drop their gradients: they neither count in gradient
        clipping's global norm nor build up Adam moments before their time."""
        for group in optimizer.param_groups:
            if group.get("name", "").startswith("encoder.block-") and group.get("scale", 0.0) == 0.0:
                for p in group["params"]:
                    p.grad = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule:
            self._update(trainer, 0)
        if trainer.is_global_zero:
            log.info("trainable parameters at fit start:\n%s", parameter_table(pl_module))
            if self.schedule:  # the table counts scheduled blocks from the start: they wait at lr 0
                log.info("encoder schedule: %s", "; ".join(
                    f"top {u.blocks} block(s) train from {self.unit} {u.at} at lr {u.lr_scale * self.lr:g}"
                    for u in self.schedule))

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.schedule and self.unit == "step":
            self._update(trainer, trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule and self.unit == "epoch":
            self._update(trainer, trainer.current_epoch)


def parameter_table(pl_module: L.LightningModule) -> str:
    """Trainable / total parameters per component, in data-flow order. An LLM with LoRA adapters gets two more
    rows, ``llm.lora`` (the adapters) and ``llm.base`` (the wrapped model's own weights), so the table shows
    which of the two trains."""
    rows = [("component", "trainable", "total")]
    for name, module in pl_module.model.components().items():
        rows.append((name, *_counts(module.named_parameters())))
        if getattr(module, "lora", None) is not None:
            named = list(module.named_parameters())
            rows.append((f"{name}.lora", *_counts((n, p) for n, p in named if is_adapter_key(n))))
            rows.append((f"{name}.base", *_counts((n, p) for n, p in named if not is_adapter_key(n))))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{r[0]:<{width[0]}}  {r[1]:>{width[1]}}  {r[2]:>{width[2]}}" for r in rows)


def _counts(named: Iterable[tuple[str, Tensor]]) -> tuple[str, str]:
    """(trainable, total) parameter counts of ``named`` parameters, formatted with thousands separators."""
    train = total = 0
    for _, p in named:
        n = int(getattr(p, "ds_numel", p.numel()))  # a ZeRO-3 parameter's own numel is 0 between uses
        total += n
        train += n if p.requires_grad else 0
    return f"{train:,}", f"{total:,}"


__all__ = ["EncoderFreezing", "Unfreeze", "parameter_table"]
