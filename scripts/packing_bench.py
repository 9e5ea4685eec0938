"""Time the LLM part of a training step (forward + backward) for variable vs fixed visual-token budgets.

Variants, interleaved over repeats so that a shared machine's drift hits all alike; medians reported:
  fixed-pad      every sample k = the mean budget, padded batch (no padding to speak of): the reference
  adaptive-pad   budgets spread over min..max at the same mean, padded to the batch's longest row
  adaptive-group the same batch run as length groups (packing="group")
  adaptive-varlen the same batch flattened to one row with restarting positions (packing="varlen")

Usage: python scripts/packing_bench.py [--batch 16] [--repeats 15] [--device cpu] [--attn sdpa]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from arrcoc.language_model import LanguageModel
from arrcoc.packing import IGNORE_INDEX, pack_multimodal


def spread_budgets(b: int, low: int, high: int, mean: int) -> list[int]:
    """b budgets spread over low..high (both ends included), skewed so their mean is ``mean``."""
    u = torch.linspace(0, 1, b)
    lo, hi = 0.1, 10.0  # bisect the exponent p of low + (high - low) * u**p to hit the mean
    for _ in range(60):
        p = (lo * hi) ** 0.5
        m = float((low + (high - low) * u ** p).mean())
        lo, hi = (p, hi) if m > mean else (lo, p)
    return [int(round(v)) for v in (low + (high - low) * u ** p).tolist()]


def make_batch(lm: LanguageModel, budgets: list[int], device, seed: int = 0):
    """Prompts of 24..40 text tokens (one ``<image>`` each, 3 answer tokens) and ``budgets[i] + 1`` visual
    tokens (kept + one summary token) -> the padded PackedInputs and the visual leaf to take gradients of."""
    gen = torch.Generator().manual_seed(seed)
    b, e, vocab = len(budgets), lm.hidden_size, lm.model.get_input_embeddings().num_embeddings
    t = 40
    ids = torch.full((b, t), lm.tokenizer.pad_token_id)
    mask = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX)
    for i in range(b):
        n = int(torch.randint(24, t + 1, (1,), generator=gen))
        ids[i, :n] = torch.randint(5, vocab - 1, (n,), generator=gen)
        ids[i, 3] = lm.image_token_id
        mask[i, :n] = 1
        labels[i, n - 3:n] = ids[i, n - 3:n]
    k = max(budgets) + 1
    visual = torch.randn(b, k, e, generator=gen).to(device).requires_grad_(True)
    vmask = torch.arange(k)[None] < torch.tensor(budgets)[:, None] + 1
    ids, mask, labels, vmask = ids.to(device), mask.to(device), labels.to(device), vmask.to(device)
    return ids, mask, labels, visual, vmask


def step(lm: LanguageModel, batch, packing: str) -> float:
    """One forward + backward of the LLM part (splice, decoder, answer logits, loss) -> seconds."""
    ids, mask, labels, visual, vmask = batch
    lm.packing = packing
    if visual.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    packed = pack_multimodal(lm.embed(ids), ids, mask, visual, vmask, lm.image_token_id, labels=labels)
    hidden = lm.packed_hidden_states(packed.embeds, packed.attention_mask, packed.position_ids)  # [B, L, E]
    targets = packed.labels[:, 1:]
    supervised = targets != IGNORE_INDEX
    loss = F.cross_entropy(lm.logits(hidden[:, :-1][supervised]).float(), targets[supervised])
    loss.backward()
    if visual.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    lm.zero_grad(set_to_none=True)
    visual.grad = None
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--low", type=int, default=64)
    ap.add_argument("--high", type=int, default=400)
    ap.add_argument("--mean", type=int, default=198)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attn", default=None, help="attn_implementation (default: the preset's, sdpa)")
    ap.add_argument("--overheads", default="256", help="comma-separated group overheads (tokens) to try")
    ap.add_argument("--json", default=None, help="also write the medians here")
    a = ap.parse_args()

    torch.manual_seed(0)
    lm = LanguageModel(attn_implementation=a.attn).to(a.device)
    budgets = spread_budgets(a.batch, a.low, a.high, a.mean)
    fixed = [a.mean] * a.batch
    adaptive_batch, fixed_batch = make_batch(lm, budgets, a.device), make_batch(lm, fixed, a.device)
    variants = {"fixed-pad": (fixed_batch, "pad", None), "adaptive-pad": (adaptive_batch, "pad", None),
                "adaptive-varlen": (adaptive_batch, "varlen", None)}
    for o in [int(x) for x in a.overheads.split(",")]:
        variants[f"adaptive-group[{o}]"] = (adaptive_batch, "group", o)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.repeats + 2):  # two warm-up rounds, not counted
        for name, (batch, packing, overhead) in variants.items():
            if overhead is not None:
                lm.group_overhead = overhead
            t = step(lm, batch, packing)
            if r >= 2:
                times[name].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    ref = med["fixed-pad"]
    print(f"budgets (mean {sum(budgets) / len(budgets):.1f}): {budgets}")
    print(f"device={a.device} attn={lm.model.config._attn_implementation} batch={a.batch} repeats={a.repeats} "
          f"threads={torch.get_num_threads()}")
    for name, m in med.items():
        print(f"{name:22s} median {m * 1e3:8.1f} ms   x{m / ref:5.2f} of fixed-pad")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"budgets": budgets, "median_s": med, "args": vars(a)}, f, indent=1)


if __name__ == "__main__":
    main()
