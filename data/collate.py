"""Batching: pad variable-length prompts and questions, stack images (or cached features)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence

from arrcoc.processing import IGNORE_INDEX


def collate_vqa(samples: Sequence[dict[str, Any]], pad_token_id: int) -> dict[str, Any]:
    """Samples from :class:`~arrcoc.data.prompt.VQAPromptBuilder` (+ ``pixel_values`` [3, S, S] or
    ``patch_features`` [N, D]) -> a batch for ``ARRCOCModel.forward`` (right-padded)."""
    keys = {k for k in ("pixel_values", "patch_features") if k in samples[0]}
    for s in samples[1:]:
        if {k for k in ("pixel_values", "patch_features") if k in s} != keys:
            raise ValueError("a batch mixes image samples and cached-feature samples; keep them in separate sources")
    ids = [s["input_ids"] for s in samples]
    batch: dict[str, Any] = {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=pad_token_id),  # [B, T]
        "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True),  # [B, T]
        "labels": pad_sequence([s["labels"] for s in samples], batch_first=True,
                               padding_value=IGNORE_INDEX),  # [B, T]
    }
    q = [s["question_ids"] for s in samples]
    if max(len(x) for x in q) == 0:
        batch["question_ids"] = torch.zeros(len(q), 0, dtype=torch.long)
        batch["question_mask"] = torch.zeros(len(q), 0, dtype=torch.bool)
    else:
        batch["question_ids"] = pad_sequence(q, batch_first=True, padding_value=pad_token_id)  # [B, Tq]
        batch["question_mask"] = pad_sequence([torch.ones_like(x, dtype=torch.bool) for x in q],
                                              batch_first=True)  # [B, Tq]
    for key in ("pixel_values", "patch_features", "cls_features"):
        if key in samples[0]:
            batch[key] = torch.stack([s[key] for s in samples])
    if "valid" in samples[0]:
        batch["valid"] = torch.tensor([bool(s["valid"]) for s in samples])  # [B]; False on placeholders
    for key in ("question", "answers", "question_id", "question_type", "objects"):  # objects: per sample
        if key in samples[0]:  # a list of {"box": [x0, y0, x1, y1] in the encoder's crop, "named": bool}
            batch[key] = [s[key] for s in samples]
    return batch


#: The batch entries ``ARRCOCModel.forward`` takes; the rest (answers, ids, flags) are for metrics.
MODEL_KEYS = ("input_ids", "attention_mask", "labels", "question_ids", "question_mask", "pixel_values",
              "patch_features", "cls_features")


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    """The part of a batch that goes into the model: ``model(**model_inputs(batch))``."""
    return {k: batch[k] for k in MODEL_KEYS if k in batch}
