"""Projector: encoder width -> LLM width."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class MLPProjector(nn.Sequential):
    """LLaVA-1.5's ``mlp2x_gelu``: Linear -> GELU -> Linear (``depth`` Linear layers in all)."""

    def __init__(self, in_dim: int, out_dim: int, depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"projector depth={depth} must be >= 1")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(depth - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        super().__init__(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim


PROJECTORS: dict[str, Callable[[int, int], nn.Module]] = {
    "mlp2x_gelu": lambda i, o: MLPProjector(i, o, depth=2),
    "linear": lambda i, o: MLPProjector(i, o, depth=1),
}

ProjectorSpec = str | Callable[[int, int], nn.Module]


def build_projector(spec: ProjectorSpec | nn.Module, in_dim: int, out_dim: int) -> nn.Module:
    """Resolve a projector name, factory or module, and check it maps [.., in_dim] -> [.., out_dim]."""
    if isinstance(spec, str):
        if spec not in PROJECTORS:
            raise ValueError(
                f"projector={spec!r} is unknown; valid: {sorted(PROJECTORS)} or a factory (in_dim, out_dim)"
            )
        module = PROJECTORS[spec](in_dim, out_dim)
    elif isinstance(spec, nn.Module):
        module = spec
    else:
        module = spec(in_dim, out_dim)
    try:
        with torch.no_grad():
            param = next(module.parameters(), None)
            dtype = param.dtype if param is not None else torch.float32
            out = module(torch.zeros(1, 1, in_dim, dtype=dtype))
    except RuntimeError as err:
        raise ValueError(
            f"projector {type(module).__name__} does not accept the encoder width {in_dim}: {err}"
        ) from err
    if out.shape[-1] != out_dim:
        raise ValueError(
            f"projector {type(module).__name__} outputs width {out.shape[-1]}; the LLM needs {out_dim} "
            f"(encoder width {in_dim} -> LLM width {out_dim})"
        )
    return module
