"""Variable budgets in one batch: splice each sample's visual tokens into its text, then pad.

Each sample's prompt holds exactly one ``<image>`` placeholder; it is replaced by that sample's
visual tokens (kept patches, then summary tokens). Sequences are compacted (no holes), padded to
the batch maximum on one side, with an attention mask that hides padding from the LLM, position
ids that count real tokens only, and labels that are -100 everywhere but on answer tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arrcoc.processing import IGNORE_INDEX


@dataclass
class PackedInputs:
    embeds: Tensor  # [B, L, E]
    attention_mask: Tensor  # [B, L] long, 1 on real tokens
    position_ids: Tensor  # [B, L] long
    labels: Tensor | None  # [B, L] long, IGNORE_INDEX outside answer tokens
    visual_mask: Tensor  # [B, L] bool, True on visual tokens


def pack_multimodal(
    text_embeds: Tensor,
    input_ids: Tensor,
    attention_mask: Tensor,
    visual: Tensor,
    visual_mask: Tensor,
    image_token_id: int,
    labels: Tensor | None = None,
    padding_side: str = "right",
) -> PackedInputs:
    """text_embeds [B, T, E], input_ids/attention_mask/labels [B, T], visual [B, V, E],
    visual_mask [B, V] -> :class:`PackedInputs` of length L = max_b(T_b - 1 + V_b).

    ``padding_side`` is "right" for training and "left" for generation.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; valid: 'left', 'right'")
    b, _, e = text_embeds.shape
    seqs, labs, vis_flags = [], [], []
    for i in range(b):
        real = attention_mask[i].bool()
        ids = input_ids[i][real]
        where = (ids == image_token_id).nonzero().flatten()
        if where.numel() != 1:
            raise ValueError(
                f"input_ids[{i}] holds {where.numel()} image placeholder tokens (id {image_token_id}); "
                "each prompt needs exactly one"
            )
        p = int(where[0])
        text = text_embeds[i][real]  # [T_i, E]
        vis = visual[i][visual_mask[i]].to(text.dtype)  # [V_i, E]
        seqs.append(torch.cat([text[:p], vis, text[p + 1:]]))
        vis_flags.append(torch.cat([
            torch.zeros(p, dtype=torch.bool, device=text.device),
            torch.ones(vis.shape[0], dtype=torch.bool, device=text.device),
            torch.zeros(text.shape[0] - p - 1, dtype=torch.bool, device=text.device),
        ]))
        if labels is not None:
            lab = labels[i][real]
            ignore = lab.new_full((vis.shape[0],), IGNORE_INDEX)
            labs.append(torch.cat([lab[:p], ignore, lab[p + 1:]]))

    length = max(s.shape[0] for s in seqs)
    embeds = text_embeds.new_zeros(b, length, e)
    mask = attention_mask.new_zeros(b, length, dtype=torch.long)
    positions = attention_mask.new_zeros(b, length, dtype=torch.long)
    vmask = torch.zeros(b, length, dtype=torch.bool, device=text_embeds.device)
    out_labels = None if labels is None else labels.new_full((b, length), IGNORE_INDEX)
    for i, seq in enumerate(seqs):
        n = seq.shape[0]
        sl = slice(0, n) if padding_side == "right" else slice(length - n, length)
        embeds[i, sl] = seq
        mask[i, sl] = 1
        positions[i, sl] = torch.arange(n, device=seq.device)
        vmask[i, sl] = vis_flags[i]
        if out_labels is not None:
            out_labels[i, sl] = labs[i]
    return PackedInputs(embeds, mask, positions, out_labels, vmask)
