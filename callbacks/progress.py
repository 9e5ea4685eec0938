"""Progress in a log: one line every N training steps where no progress bar is drawn (a batch job, a pipe)."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning as L

log = logging.getLogger("arrcoc.train")


class ProgressLines(L.Callback):
    """Every ``every_n_steps`` optimizer steps, one line: the step of ``max_steps``, the loss, the mean visual tokens,
    samples per second and the time left. Only where no progress bar is drawn in a terminal: the bar already shows
    the same (``train/loss``, ``train/visual_tokens``, ``perf/samples_per_s``) in place, while a SLURM log or a pipe
    would otherwise show nothing between validations (or the bar's carriage-return clutter).

    Args:
        every_n_steps: lines apart, in optimizer steps.
        force: print the lines even when a bar is drawn in a terminal.
    """

    def __init__(self, every_n_steps: int = 50, force: bool = False) -> None:
        if every_n_steps < 1:
            raise ValueError(f"ProgressLines: every_n_steps={every_n_steps} must be >= 1")
        self.every, self.force = every_n_steps, force
        self.active = False
        self._start: tuple[float, int] = (0.0, 0)
        self._last = -1  # the step of the last line (one per optimizer step, also under gradient accumulation)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        bar = trainer.progress_bar_callback is not None and getattr(trainer.progress_bar_callback, "is_enabled", True)
        self.active = trainer.is_global_zero and (self.force or not (bar and sys.stderr.isatty()))
        self._start = (time.monotonic(), trainer.global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = trainer.global_step
        if not self.active or step == 0 or step % self.every or self._last == step:
            return
        self._last = step
        m = trainer.callback_metrics
        parts = [f"{type(pl_module).__name__} step {step}"]
        total = trainer.max_steps if trainer.max_steps and trainer.max_steps > 0 else None
        if total:
            parts[0] += f"/{total} ({step / total:.0%})"
        for key, label, fmt in (("train/loss", "loss", ".4f"), ("train/visual_tokens", "visual tokens", ".0f"),
                                ("perf/samples_per_s", "samples/s", ".1f")):
            if key in m:
                parts.append(f"{label} {float(m[key]):{fmt}}")
        began, first = self._start
        done = step - first
        if total and done > 0:
            left = (time.monotonic() - began) / done * (total - step)
            parts.append(f"about {_duration(left)} left")
        log.info(", ".join(parts))


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
