"""Per-sample preprocessing in the data workers: the encoder's transform and the VQA prompt."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.data.shards import BadSample
from arrcoc.processing import majority_answer


class VQAPreprocessor:
    """Decoded sample -> model-ready sample (tensors + the metadata metrics need).

    Training targets the majority answer; evaluation keeps all answers for the VQA soft accuracy
    (and builds the prompt without an answer when a split has none, e.g. VQAv2 test).

    Args:
        transform: the encoder's preprocessing (``arrcoc.processing.build_transform``).
        prompt: builds token ids and labels from question and answer.
        train: a sample without answers is skipped in training.
        image_size: (H, W) of the transform's output, for placeholders.
    """

    def __init__(self, transform: Callable, prompt: VQAPromptBuilder, train: bool,
                 image_size: tuple[int, int]) -> None:
        self.transform, self.prompt, self.train = transform, prompt, train
        self.image_size = image_size
        self._feature_shape: tuple[int, ...] | None = None

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        answers = sample["answers"]
        if self.train and not answers:
            raise BadSample("no_answer", "training samples need at least one answer")
        out = self.prompt(sample["question"], majority_answer(answers) if answers else None)
        if "features" in sample:
            feats = torch.from_numpy(sample["features"]).float()
            if feats.ndim != 2:
                raise BadSample("bad_features", f"expected [N, D] features, got shape {tuple(feats.shape)}")
            out["patch_features"] = feats  # [N, D]
            self._feature_shape = tuple(feats.shape)
        else:
            try:
                out["pixel_values"] = self.transform(sample["image"])  # [3, S, S]
            except Exception as err:  # noqa: BLE001 - a decodable but unusable image
                raise BadSample("bad_image", f"transform failed: {err}") from err
        out.update(question=sample["question"], answers=answers, question_id=sample["question_id"],
                   question_type=str(sample.get("question_type") or ""), valid=True)
        return out

    def calibrate(self, sample: dict[str, Any] | None) -> None:
        """Make placeholders look like the source's samples (image or cached features) up front."""
        if sample is not None and "features" in sample:
            self._feature_shape = tuple(sample["features"].shape)

    def placeholder(self) -> dict[str, Any]:
        """A stand-in that keeps batch counts equal; ``valid=False`` keeps it out of every metric."""
        out = self.prompt("", None)
        if self._feature_shape is not None:
            out["patch_features"] = torch.zeros(self._feature_shape)
        else:
            out["pixel_values"] = torch.zeros(3, *self.image_size)
        out.update(question="", answers=[], question_id=-1, question_type="", valid=False)
        return out
