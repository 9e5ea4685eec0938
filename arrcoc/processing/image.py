"""The encoder's image preprocessing, from open_clip's configs, without building the encoder; where
it puts an image (boxes in the original image -> boxes in the encoder's input crop); which patches
objects cover."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from arrcoc.presets import TINY_ENCODER, register_encoder_presets


def _preprocess_cfg(name: str, pretrained: str | None) -> dict[str, Any]:
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    register_encoder_presets()
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise ValueError(f"encoder={name!r} is not an open_clip model; valid names include {TINY_ENCODER!r}, "
                         "'EVA02-L-14-336', 'ViT-L-14-336' (see open_clip.list_models())")
    cfg = merge_preprocess_dict(PreprocessCfg(), model_cfg.get("preprocess_cfg", {}))
    if pretrained:
        cfg = merge_preprocess_dict(cfg, get_pretrained_cfg(name, pretrained))
    cfg["size"] = model_cfg["vision_cfg"]["image_size"]
    return cfg


def build_transform(name: str = TINY_ENCODER, pretrained: str | None = None) -> Callable:
    """The encoder's own evaluation preprocessing (resize, centre crop, RGB, normalise): a PIL image of
    any size and mode -> ``[3, H, W]``. What data workers use; equal to
    ``VisionEncoder(name, pretrained).transform``."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**_preprocess_cfg(name, pretrained)), is_train=False)


def transform_size(name: str = TINY_ENCODER, pretrained: str | None = None) -> tuple[int, int]:
    """(H, W) of what :func:`build_transform` outputs, read from the same config (not from where
    open_clip puts its crop in the pipeline)."""
    size = _preprocess_cfg(name, pretrained)["size"]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


#: open_clip's evaluation resize modes (``PreprocessCfg.resize_mode``)
RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class CropGeometry:
    """Where :func:`build_transform` puts an image: its output ``size`` (H, W) and open_clip's
    ``resize_mode``. Maps boxes normalised to an original image into boxes normalised to the output
    crop; build it once with :func:`crop_geometry` (reading the config is not free), call it per sample.
    Plain values only, so it pickles into loader workers."""

    size: tuple[int, int]  # (H, W) of the transform's output
    resize_mode: str = "shortest"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode={self.resize_mode!r}; valid: {RESIZE_MODES}")

    def resized(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(W, H) of the image after the transform's resize, before the crop or pad (open_clip 3.x
        eval path, with torchvision's rounding)."""
        w, h = image_size
        th, tw = self.size
        if self.resize_mode == "squash":
            return tw, th
        if self.resize_mode == "shortest" and th == tw:  # torchvision Resize(int): short side to S, long truncated
            if w <= h:
                return th, int(th * h / w)
            return int(th * w / h), th
        # open_clip's ResizeKeepRatio: shortest (longest=0) for a non-square target, or longest (longest=1)
        rh, rw = h / th, w / tw
        ratio = max(rh, rw) if self.resize_mode == "longest" else min(rh, rw)
        return round(w / ratio), round(h / ratio)

    def offset(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(left, top) in resized pixels of the output crop's corner: a centre crop (positive) or a
        centre pad (negative), as torchvision's ``center_crop`` and open_clip's ``CenterCropOrPad``."""
        rw, rh = self.resized(image_size)
        th, tw = self.size

        def one(have: int, want: int) -> int:
            pad = (want - have) // 2 if want > have else 0
            return int(round((max(have, want) - want) / 2.0)) - pad

        return one(rw, tw), one(rh, th)

    def __call__(self, boxes, image_size: tuple[int, int]) -> list[list[float]]:
        """``boxes`` ``[[x0, y0, x1, y1], ...]`` normalised to an image of ``image_size`` (W, H) ->
        the same boxes normalised to the output crop, clipped to [0, 1] (a box the crop cuts off
        entirely comes out empty: ``x0 == x1`` or ``y0 == y1``)."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        rw, rh = self.resized(image_size)
        left, top = self.offset(image_size)
        th, tw = self.size
        x = (b[:, 0::2] * rw - left) / tw
        y = (b[:, 1::2] * rh - top) / th
        out = np.clip(np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], axis=1), 0.0, 1.0)
        return out.tolist()



def crop_geometry(name: str = TINY_ENCODER, pretrained: str | None = None) -> CropGeometry:
    """The geometry of ``build_transform(name, pretrained)``, read from the same preprocess config."""
    cfg = _preprocess_cfg(name, pretrained)
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    return CropGeometry(size, cfg.get("resize_mode") or "shortest")


def crop_boxes(boxes, image_size: tuple[int, int], name: str = TINY_ENCODER,
               pretrained: str | None = None) -> list[list[float]]:
    """Boxes ``[[x0, y0, x1, y1], ...]`` normalised to an original image of ``image_size`` (W, H)
    (x to the right, y down) -> normalised to the crop ``build_transform(name, pretrained)`` outputs.
    ``shortest``: the short side resized to S, then a centre crop (boxes clipped; one cut off entirely
    comes out empty); ``squash``: resized to S x S (boxes unchanged); ``longest``: the long side
    resized to S, then centred padding. For many images, build :func:`crop_geometry` once."""
    return crop_geometry(name, pretrained)(boxes, image_size)


def patch_masks(objects, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Which patches of an ``(h, w)`` grid the objects cover: ``(named, other)``, each ``[h * w]``
    bool in row-major order (patch ``j * w + i`` is row ``j``, column ``i``, as a ViT flattens).

    ``objects``: ``[{"box": [x0, y0, x1, y1], "named": bool}, ...]`` with boxes normalised to the
    encoder's input crop (what batches carry). A patch belongs to an object when its centre
    ``((i + 0.5) / w, (j + 0.5) / h)`` lies in the box (``x0 <= cx < x1``, same for y; an empty box
    covers nothing). ``named``: patches of the named objects; ``other``: patches of the other objects
    that are not also patches of a named one."""
    h, w = grid
    cy = ((torch.arange(h, dtype=torch.float64) + 0.5) / h)[:, None]  # [h, 1]
    cx = ((torch.arange(w, dtype=torch.float64) + 0.5) / w)[None, :]  # [1, w]
    named = torch.zeros(h, w, dtype=torch.bool)
    other = torch.zeros(h, w, dtype=torch.bool)
    for o in objects:
        x0, y0, x1, y1 = (float(v) for v in o["box"])
        inside = (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)  # [h, w]
        if o["named"]:
            named |= inside
        else:
            other |= inside
    return named.flatten(), (other & ~named).flatten()
