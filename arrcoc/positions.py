"""2-D grid positions: the kept set is no longer a raster, so each token carries where it came from."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GridPositionEmbedding(nn.Module):
    """Factorised learned embedding row[i] + col[j], added to patch features before projection."""

    def __init__(self, grid: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.grid = grid
        self.row = nn.Parameter(0.02 * torch.randn(grid[0], dim))
        self.col = nn.Parameter(0.02 * torch.randn(grid[1], dim))

    def forward(self) -> Tensor:
        """-> [N, D] embeddings in raster order."""
        h, w = self.grid
        return (self.row[:, None, :] + self.col[None, :, :]).reshape(h * w, -1)
