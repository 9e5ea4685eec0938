"""What the model and the data path share: the image transform (and where it puts an image's
boxes), the tokenizer, the prompt's placeholder and the label convention. Data workers import this,
never the model modules, so a loader builds its preprocessing without building (or importing) the
model.
"""

from arrcoc.processing.image import (
    CropGeometry,
    build_transform,
    crop_boxes,
    crop_geometry,
    patch_masks,
    transform_size,
)
from arrcoc.processing.text import IGNORE_INDEX, IMAGE_TOKEN, build_tokenizer, majority_answer

__all__ = ["IGNORE_INDEX", "IMAGE_TOKEN", "CropGeometry", "build_tokenizer", "build_transform", "crop_boxes",
           "crop_geometry", "majority_answer", "patch_masks", "transform_size"]
