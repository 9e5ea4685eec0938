"""A test-only callback for the signal tests (tests/test_stopping.py): it slows every training step down
and touches a file once training is under way, so a test knows when to send the signal."""

import time
from pathlib import Path

import lightning as L


class Marker(L.Callback):
    def __init__(self, path: str, at_step: int = 2, step_seconds: float = 0.2) -> None:
        self.path, self.at_step, self.step_seconds = Path(path), at_step, step_seconds

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        time.sleep(self.step_seconds)
        if trainer.global_step >= self.at_step and not self.path.exists():
            self.path.write_text(str(trainer.global_step))
