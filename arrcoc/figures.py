"""Drawing an allocation: the image with the kept patches outlined and the dropped ones dimmed, each scorer's map
and the balanced map, the question, the answer (and the references, where known), the budget k and the balancer's
weights. Used by ``arrcoc visualize`` (any image and question) and the ``AllocationFigures`` callback (validation)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from arrcoc.model import AllocationRecord, ARRCOCModel

DIM = 0.3  # brightness left to a dropped patch


@dataclass
class Column:
    """One question's allocation on the image."""

    question: str
    answer: str
    record: AllocationRecord
    relevance: np.ndarray | None  # [N] the balanced map (None in full-token mode)
    references: list[str] = field(default_factory=list)  # the reference answers, where known (validation)


def columns_of(generated, questions: list[str], references: list[list[str]] | None = None,
               rows: list[int] | None = None) -> list[Column]:
    """One :class:`Column` per row of a ``model.generate`` output (its answers and allocation), or per row in
    ``rows``; ``questions`` and ``references`` are given for those rows only."""
    rows = list(range(len(generated.texts))) if rows is None else rows
    rel = generated.allocation.relevance  # [B, N] or None
    records = generated.allocation.records()
    refs = references or [[] for _ in rows]
    return [Column(q, generated.texts[i], records[i], None if rel is None else rel[i].float().cpu().numpy(),
                   list(r)) for q, i, r in zip(questions, rows, refs, strict=True)]


def shown_image(model: ARRCOCModel, pixels: torch.Tensor) -> np.ndarray:
    """The encoder's input [3, S, S] back to an RGB array [S, S, 3] in [0, 1] (its normalisation undone)."""
    cfg = getattr(model.encoder.visual, "preprocess_cfg", {}) or {}
    mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0))).view(3, 1, 1)
    std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0))).view(3, 1, 1)
    return (pixels * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def figure(model: ARRCOCModel, pixels: torch.Tensor, columns: list[Column]):
    """A matplotlib figure: one column per question (image with the selection; scorer and balanced maps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    gh, gw = model.encoder.grid
    img = shown_image(model, pixels)  # [S, S, 3]
    size_h, size_w = img.shape[0] / gh, img.shape[1] / gw
    names = list(columns[0].record.scorer_maps) + (["balanced"] if columns[0].relevance is not None else [])
    fig = plt.figure(figsize=(4.2 * len(columns), 5.8 if names else 4.6))
    outer = fig.add_gridspec(2 if names else 1, len(columns), height_ratios=[3, 1] if names else [1])
    for c, col in enumerate(columns):
        kept = np.zeros(gh * gw, dtype=bool)
        kept[col.record.kept_indices.numpy()] = True
        shade = np.where(kept.reshape(gh, gw), 1.0, DIM).repeat(round(size_h), 0).repeat(round(size_w), 1)
        ax = fig.add_subplot(outer[0, c])
        ax.imshow(img * shade[: img.shape[0], : img.shape[1], None])
        for idx in np.flatnonzero(kept):  # outline kept patches
            y, x = divmod(int(idx), gw)
            ax.add_patch(Rectangle((x * size_w - 0.5, y * size_h - 0.5), size_w, size_h, fill=False,
                                   edgecolor="yellow", linewidth=0.4))
        weights = ", ".join(f"{n[:4]} {w:.2f}" for n, w in col.record.weights.items())
        refs = ", ".join(dict.fromkeys(col.references))  # each distinct reference once, in order
        ax.set_title(f"Q: {col.question}\nA: {col.answer}" + (f"    ref: {refs}" if refs else "")
                     + f"\nk = {col.record.budget} of {gh * gw}" + (f"    weights: {weights}" if weights else ""),
                     fontsize=8)
        ax.axis("off")
        if names:
            inner = outer[1, c].subgridspec(1, len(names))
            maps = [col.record.scorer_maps[n].numpy() for n in names if n != "balanced"]
            if col.relevance is not None:
                maps.append(col.relevance)
            for j, (name, m) in enumerate(zip(names, maps, strict=True)):
                mx = fig.add_subplot(inner[0, j])
                mx.imshow(m.reshape(gh, gw), cmap="magma")
                mx.set_title(name, fontsize=7)
                mx.axis("off")
    fig.tight_layout()
    return fig
