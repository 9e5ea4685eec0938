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
        crop: where the transform puts an image: ``crop(boxes, (W, H)) -> boxes``, mapping boxes
            normalised to an original image of that size into boxes normalised to the transform's
            output (``arrcoc.processing.crop_geometry(encoder, pretrained)``). With it every sample
            carries ``objects`` (``[{"box", "named"}, ...]`` in the output's frame; ``[]`` for
            samples without objects and for placeholders); without it, no sample carries objects.
    """

    def __init__(self, transform: Callable, prompt: VQAPromptBuilder, train: bool,
                 image_size: tuple[int, int], crop: Callable[[Any, tuple[int, int]], list] | None = None) -> None:
        self.transform, self.prompt, self.train = transform, prompt, train
        self.image_size = image_size
        self.crop = crop
        self._feature_shape: tuple[int, ...] | None = None
        self._cls_shape: tuple[int, ...] | None = None

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
            if "cls_features" in sample:  # from a feature cache of an encoder with a class token
                out["cls_features"] = torch.from_numpy(sample["cls_features"]).float()  # [D]
                self._cls_shape = tuple(out["cls_features"].shape)
        else:
            try:
                out["pixel_values"] = self.transform(sample["image"])  # [3, S, S]
            except Exception as err:  # noqa: BLE001 - a decodable but unusable image
                raise BadSample("bad_image", f"transform failed: {err}") from err
        if self.crop is not None:
            out["objects"] = self._objects(sample)
        out.update(question=sample["question"], answers=answers, question_id=sample["question_id"],
                   question_type=str(sample.get("question_type") or ""), valid=True)
        return out

    def _objects(self, sample: dict[str, Any]) -> list[dict[str, Any]]:
        """The sample's objects with their boxes in the transform's output frame."""
        objects = sample.get("objects") or []
        if not objects:
            return []
        boxes = [o["box"] for o in objects]
        if "image" in sample:
            boxes = self.crop(boxes, sample["image"].size)  # PIL size: (W, H), EXIF orientation applied
        # else: a feature sample (.npy) has no image, so no size to map from: its boxes pass through
        # unchanged, as written (in the frame the features were computed from, if the writer mapped them)
        return [{"box": [float(v) for v in b], "named": bool(o["named"])}
                for b, o in zip(boxes, objects, strict=True)]

    def calibrate(self, sample: dict[str, Any] | None) -> None:
        """Make placeholders look like the source's samples (image or cached features) up front."""
        if sample is not None and "features" in sample:
            self._feature_shape = tuple(sample["features"].shape)
            if "cls_features" in sample:
                self._cls_shape = tuple(sample["cls_features"].shape)

    def placeholder(self) -> dict[str, Any]:
        """A stand-in that keeps batch counts equal; ``valid=False`` keeps it out of every metric."""
        out = self.prompt("", None)
        if self._feature_shape is not None:
            out["patch_features"] = torch.zeros(self._feature_shape)
            if self._cls_shape is not None:
                out["cls_features"] = torch.zeros(self._cls_shape)
        else:
            out["pixel_values"] = torch.zeros(3, *self.image_size)
        if self.crop is not None:
            out["objects"] = []
        out.update(question="", answers=[], question_id=-1, question_type="", valid=False)
        return out
