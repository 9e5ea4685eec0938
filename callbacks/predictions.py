"""Writes ``arrcoc predict`` results: ``predictions.jsonl`` and a VQAv2 results file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from arrcoc.processing.files import write_text

log = logging.getLogger("arrcoc.train")


class PredictionWriter(BasePredictionWriter):
    """Each rank writes its part; rank 0 merges them, in question-id order, into
    ``predictions.jsonl`` (question, prediction, budget, visual tokens) and ``vqa_results.json``
    (``[{"question_id", "answer"}]``, ready for the official evaluation server).

    Args:
        output_dir: where the files go (default: the trainer's ``default_root_dir``).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        out = Path(self.output_dir or trainer.default_root_dir)
        out.mkdir(parents=True, exist_ok=True)
        rows = [row for batch in predictions for row in batch]
        part = out / f".predictions.rank{trainer.global_rank}.jsonl"
        part.write_text("".join(json.dumps(r) + "\n" for r in rows))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged = []
            for p in (out / f".predictions.rank{r}.jsonl" for r in range(trainer.world_size)):
                merged += [json.loads(line) for line in p.read_text().splitlines() if line]
                p.unlink()
            merged.sort(key=lambda r: (str(type(r["question_id"])), r["question_id"]))
            write_text(out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in merged))
            results = [{"question_id": r["question_id"], "answer": r["prediction"]} for r in merged]
            write_text(out / "vqa_results.json", json.dumps(results))
            log.info("wrote %d predictions to %s", len(merged), out)
        trainer.strategy.barrier()
