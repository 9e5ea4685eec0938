"""The encoder's image preprocessing, from open_clip's configs, without building the encoder."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
