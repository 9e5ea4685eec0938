"""Token-budget annealing: moves the allocator's target mean budget (and optionally its bounds)."""

from __future__ import annotations

import math
from typing import Any

import lightning as L


class BudgetAnnealing(L.Callback):
    """Anneals the target mean budget from ``start`` to ``end`` over ``steps`` optimizer steps.

    Optionally the per-sample bounds move too (``start_max`` -> ``end_max``, ``start_min`` ->
    ``end_min``), so a run can begin at all 576 tokens and settle at 198 within [64, 400]. Logs
    ``budget/target``, ``budget/min`` and ``budget/max``. The schedule position is saved in
    checkpoints, so a resumed run continues where it stopped.

    Args:
        start, end: target mean budget at step 0 and at ``steps`` (and after).
        steps: length of the schedule in optimizer steps.
        mode: ``linear`` or ``cosine``.
        start_min, end_min, start_max, end_max: bounds schedule; ``None`` keeps the model's bounds.
    """

    def __init__(self, start: float = 576, end: float = 198, steps: int = 1000, mode: str = "cosine",
                 start_min: int | None = None, end_min: int | None = None, start_max: int | None = None,
                 end_max: int | None = None) -> None:
        if mode not in ("linear", "cosine"):
            raise ValueError(f"BudgetAnnealing mode={mode!r}; valid: 'linear', 'cosine'")
        if steps < 1:
            raise ValueError(f"BudgetAnnealing steps={steps} must be >= 1")
        self.start, self.end, self.steps, self.mode = start, end, steps, mode
        self.bounds = {"min": (start_min, end_min), "max": (start_max, end_max)}
        self.step = 0  # schedule position: restored from checkpoints

    def fraction(self, step: int) -> float:
        p = min(max(step / self.steps, 0.0), 1.0)
        return p if self.mode == "linear" else 0.5 * (1 - math.cos(math.pi * p))

    def values(self, step: int) -> dict[str, float | None]:
        f = self.fraction(step)
        lerp = lambda a, b: None if a is None or b is None else a + (b - a) * f  # noqa: E731
        return {"target": lerp(self.start, self.end), "min": lerp(*self.bounds["min"]),
                "max": lerp(*self.bounds["max"])}

    def _apply(self, pl_module: L.LightningModule) -> dict[str, float | None]:
        v = self.values(self.step)
        alloc = pl_module.model.allocator
        lo = alloc.min_tokens if v["min"] is None else round(v["min"])
        hi = alloc.max_tokens if v["max"] is None else round(v["max"])
        target = min(max(v["target"], lo), hi)
        alloc.set_budget(min_tokens=lo, max_tokens=hi, target_tokens=target)
        return {"target": target, "min": lo, "max": hi}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(pl_module)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self.step = trainer.global_step
        v = self._apply(pl_module)
        pl_module.log_dict({f"budget/{k}": float(x) for k, x in v.items()}, on_step=True, on_epoch=False)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "start": self.start, "end": self.end, "steps": self.steps, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
