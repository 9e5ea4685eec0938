"""Variable budgets in one batch: splice each sample's visual tokens into its text, then pad.

Each sample's prompt holds exactly one ``<image>`` placeholder; it is replaced by that sample's
visual tokens (kept patches, then summary tokens). Sequences are compacted (no holes), padded to
the batch maximum on one side, with an attention mask that hides padding from the LLM, position
ids that count real tokens only, and labels that are -100 everywhere but on answer tokens.

How the LLM then runs that padded batch without computing its padding (``LanguageModel.packing``:
length groups, or one flattened varlen row) is decided here too (:data:`PACKINGS`, :func:`length_groups`);
the padded layout stays the contract for everything downstream. See ``docs/packing.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------------------- running the padded batch
#: How the LLM runs a right-padded packed batch (see docs/packing.md):
#: ``pad`` the whole [B, L] batch (padding computed, correct with every model and attention kernel);
#: ``group`` sub-batches of similar length, each trimmed to its own longest row (every attention kernel);
#: ``varlen`` all real tokens in one [1, sum L_b] row with position ids restarting per sample, which
#: transformers turns into per-sample attention (flash-attention varlen kernels; a dense block mask on
#: sdpa/eager, costly); ``auto``: ``varlen`` under flash attention on CUDA, else ``group``.
PACKINGS = ("pad", "group", "varlen", "auto")

#: Fixed cost of one more decoder call, in padded tokens: what a group must save to be worth splitting off.
#: Measured on CPU with the tiny preset (scripts/packing_bench.py); larger models make padding dearer, so
#: a small value errs on the side of splitting.
GROUP_OVERHEAD_TOKENS = 256


def check_packing(packing: str) -> str:
    """Validate a packing mode name, return it."""
    if packing not in PACKINGS:
        raise ValueError(f"llm.packing={packing!r}; valid: {list(PACKINGS)}")
    return packing


def right_padded_lengths(attention_mask: Tensor) -> Tensor:
    """Real tokens per row [B] of a right-padded mask [B, L] (ones, then zeros); raises on any other layout,
    since grouping and varlen assume real tokens start at column 0."""
    lengths = attention_mask.sum(-1)  # [B]
    cols = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    expected = (cols[None] < lengths[:, None]).to(attention_mask.dtype)  # [B, L]
    if not torch.equal(attention_mask, expected):
        raise ValueError("attention_mask is not right-padded (ones then zeros per row); grouped and varlen "
                         "packing need pack_multimodal(..., padding_side='right'), or packing='pad'")
    return lengths


def length_groups(lengths: list[int], overhead: int = GROUP_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split rows into groups of similar length that minimise the padded area plus ``overhead`` per group.

    Rows are sorted by length; an optimal split of sorted rows into contiguous runs is found by dynamic
    programming over cost(run) = rows(run) * longest(run) + overhead. Returns row indices per group,
    shortest group first (each group's indices ascending by length)."""
    if overhead < 0:
        raise ValueError(f"overhead={overhead} must be >= 0 (padded tokens one decoder call costs)")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j sorted rows
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest = lengths[order[j - 1]]  # sorted: the run's last row is its longest
        for i in range(j):
            cost = best[i] + (j - i) * longest + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j]:j])
        j = cut[j]
    return groups[::-1]


def cu_seqlens(lengths: Tensor) -> Tensor:
    """Sequence lengths [B] -> cumulative offsets [B + 1] int32 (0, L_0, L_0 + L_1, ...), flash-attention's
    varlen layout of the flattened [1, sum L_b] row."""
    return F.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
