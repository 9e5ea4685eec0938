"""Vision encoder: any open_clip image tower, returning a grid of patch tokens.

The encoder is the first stage of the data flow (pixels -> patch grid). It wraps an open_clip model
by name (real preset: ``EVA02-L-14-336``, 24x24 = 576 patches of width 1024) and keeps only its
image tower. The embedded tiny preset ``arrcoc-tiny-vit`` is registered as an ordinary open_clip
model config (:mod:`arrcoc.presets`), so the offline default runs through exactly the same code path as the
real one. The same preprocessing without the model, for data workers: :func:`arrcoc.processing.build_transform`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import open_clip
import torch
from torch import Tensor, nn

from arrcoc.presets import SHAPES_TAG, TINY_ENCODER, register_encoder_presets, shapes_checkpoint


@dataclass
class EncoderOutput:
    """Patch tokens as a grid, and the class token where the model has one."""

    patches: Tensor  # [B, H', W', D]
    cls: Tensor | None  # [B, D] or None

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.patches.shape[1]), int(self.patches.shape[2])

    def flat(self) -> Tensor:
        """Patches in raster order."""
        b, h, w, d = self.patches.shape
        return self.patches.reshape(b, h * w, d)  # [B, N, D]


class VisionEncoder(nn.Module):
    """Wraps an open_clip image tower; frozen and in eval mode by default.

    Args:
        name: open_clip model name (``open_clip.list_models()``), e.g. ``EVA02-L-14-336``.
        pretrained: an open_clip pretrained tag (e.g. ``merged2b_s6b_b61k``) or a local checkpoint
            path; ``None`` keeps random weights. The tiny preset also takes ``shapes``: weights
            pretrained by ``arrcoc pretrain-encoder`` on the sample task, shipped with the package.
        layer: which transformer block's output to return; ``-1`` is the last, ``-2`` (LLaVA's
            choice, the default) the second-to-last.
        frozen: no parameter trains and the tower stays in eval mode even when the model is put in
            train mode. Freezing callbacks may later unfreeze top blocks (see :meth:`blocks`).
    """

    def __init__(
        self,
        name: str = TINY_ENCODER,
        pretrained: str | None = None,
        layer: int = -2,
        frozen: bool = True,
    ) -> None:
        super().__init__()
        register_encoder_presets()
        if name not in open_clip.list_models():
            raise ValueError(
                f"encoder.name={name!r} is not an open_clip model; valid names include "
                f"{TINY_ENCODER!r}, 'EVA02-L-14-336', 'ViT-L-14-336' (see open_clip.list_models())"
            )
        self.pretrained = pretrained  # as given (a tag, a path, or None for random init)
        if name == TINY_ENCODER and pretrained == SHAPES_TAG:
            # The tiny preset's own weights: pretrained by arrcoc on the sample task, shipped in presets/.
            pretrained = str(shapes_checkpoint())
        clip, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained)
        self.name = name
        self.visual: nn.Module = clip.visual  # the text tower is dropped: it is never used
        self.transform: Callable = preprocess  # PIL image (any size, any mode) -> [3, S, S]
        del clip

        num_blocks = len(self._all_blocks())
        if not -num_blocks <= layer < num_blocks:
            raise ValueError(
                f"encoder.layer={layer} is out of range for {name} with {num_blocks} blocks; "
                f"valid: {-num_blocks}..{num_blocks - 1} (-1 = last, -2 = second-to-last)"
            )
        self.layer = layer % num_blocks
        self.image_size: tuple[int, int] = tuple(self.visual.preprocess_cfg["size"])
        with torch.no_grad():
            probe = self._forward_tokens(torch.zeros(1, 3, *self.image_size))
        self.grid: tuple[int, int] = probe.grid
        self.width: int = int(probe.patches.shape[-1])
        self.has_cls: bool = probe.cls is not None
        if frozen:
            self.freeze()

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def freeze(self) -> VisionEncoder:
        self.requires_grad_(False)
        self.visual.eval()
        return self

    def train(self, mode: bool = True) -> VisionEncoder:
        # Frozen parts keep eval behaviour (dropout, drop-path off) inside a training model; only
        # blocks with trainable parameters (unfrozen by a freezing schedule) follow ``mode``.
        super().train(mode and not self.frozen)
        if mode and not self.frozen:
            for block in self._all_blocks():
                block.train(any(p.requires_grad for p in block.parameters()))
        return self

    def _all_blocks(self) -> nn.ModuleList:
        if hasattr(self.visual, "trunk"):  # timm-based towers (EVA02, SigLIP, ...)
            return self.visual.trunk.blocks
        return self.visual.transformer.resblocks  # open_clip's own VisionTransformer

    def blocks(self) -> nn.ModuleList:
        """The blocks that produce the features, input to output (up to and including ``layer``):
        what a freezing schedule unfreezes from the top. Blocks above ``layer`` never run."""
        return self._all_blocks()[: self.layer + 1]

    def _forward_tokens(self, pixels: Tensor) -> EncoderOutput:
        out = self.visual.forward_intermediates(
            pixels,
            indices=[self.layer],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=True,
        )
        tokens = out["image_intermediates"][0]  # [B, N, D]
        prefix = out.get("image_intermediates_prefix")
        cls = prefix[0][:, 0] if prefix and prefix[0].shape[1] > 0 else None  # [B, D]
        b, n, d = tokens.shape
        h, w = self._grid_for(pixels, n)
        return EncoderOutput(patches=tokens.reshape(b, h, w, d), cls=cls)

    def _grid_for(self, pixels: Tensor, n: int) -> tuple[int, int]:
        ph, pw = self.patch_size
        h, w = pixels.shape[-2] // ph, pixels.shape[-1] // pw
        if h * w != n:
            raise RuntimeError(f"{self.name}: {n} patch tokens do not form a {h}x{w} grid")
        return h, w

    @property
    def patch_size(self) -> tuple[int, int]:
        if hasattr(self.visual, "trunk"):
            return tuple(self.visual.trunk.patch_embed.patch_size)
        ps = self.visual.patch_size
        return (ps, ps) if isinstance(ps, int) else tuple(ps)

    def forward(self, pixels: Tensor) -> EncoderOutput:
        """[B, 3, S, S] preprocessed pixels -> patch grid [B, H', W', D] (+ class token [B, D])."""
        dtype = next(self.blocks().parameters()).dtype
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            return self._forward_tokens(pixels.to(dtype))
