"""``arrcoc demo``: a forward/backward smoke of the whole model on the embedded tiny preset.

Until the training phases land, the demo builds the tiny model, draws a few coloured-square images
with questions about them, trains every trainable part for a few steps, and reports the loss, the
per-sample budgets, and the measured step-time ratio of full-token vs adaptive mode.
"""

from __future__ import annotations

import argparse
import random
import time

import torch
from PIL import Image, ImageDraw

from arrcoc.data.collate import collate_vqa
from arrcoc.data.prompt import VQAPromptBuilder
from arrcoc.model import ARRCOCModel

COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40)}


def toy_batch(model: ARRCOCModel, size: int, seed: int) -> dict:
    """Images with one coloured square on grey noise; question: its colour."""
    rng = random.Random(seed)
    prompt = VQAPromptBuilder(model.tokenizer)
    samples = []
    for _ in range(size):
        name = rng.choice(sorted(COLORS))
        img = Image.effect_noise((96, 96), 40).convert("RGB")
        x, y, s = rng.randint(0, 70), rng.randint(0, 70), rng.randint(12, 26)
        ImageDraw.Draw(img).rectangle([x, y, x + s, y + s], fill=COLORS[name])
        sample = prompt("What color is the square?", name)
        sample["pixel_values"] = model.encoder.transform(img)
        samples.append(sample)
    return collate_vqa(samples, model.tokenizer.pad_token_id)


def _step_time(model, batch, full: bool, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(**batch, full_tokens=full, return_logits=False).loss.backward()
        times.append(time.perf_counter() - t0)
        model.zero_grad(set_to_none=True)
    return sorted(times)[len(times) // 2]  # median


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="arrcoc demo", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps (default 30)")
    parser.add_argument("--batch-size", type=int, default=16, help="samples per batch (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    print("building the tiny preset (arrcoc-tiny-vit + arrcoc-tiny-lm) ...", flush=True)
    model = ARRCOCModel()
    batch = toy_batch(model, args.batch_size, args.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_frozen = sum(p.numel() for p in model.encoder.parameters())
    print(f"parameters: {sum(p.numel() for p in trainable):,} trainable, {n_frozen:,} frozen (encoder)")
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    model.train()
    first = last = None
    for step in range(1, args.steps + 1):
        out = model(**batch, return_logits=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        vt = out.allocation.visual_tokens.float()
        last = out.lm_loss.item()
        first = last if first is None else first
        if step == 1 or step % 5 == 0 or step == args.steps:
            print(f"step {step:3d}/{args.steps}  lm_loss {last:.3f}  budget_loss {float(out.budget_loss):.4f}  "
                  f"visual tokens mean {vt.mean():.0f} (min {vt.min():.0f}, max {vt.max():.0f})", flush=True)

    print("timing forward+backward, full-token vs adaptive (median of 5, same batch) ...", flush=True)
    t_full = _step_time(model, batch, full=True, repeats=5)
    t_adapt = _step_time(model, batch, full=False, repeats=5)
    model.eval()
    with torch.no_grad():
        alloc = model(**batch, return_logits=False).allocation
    vt = alloc.visual_tokens.float()
    n = model.encoder.num_patches
    print()
    print(f"{'':28s}{'full-token':>12s}{'adaptive':>12s}")
    print(f"{'visual tokens / sample':28s}{n:>12d}{vt.mean():>12.1f}")
    print(f"{'fwd+bwd step (ms)':28s}{1000 * t_full:>12.1f}{1000 * t_adapt:>12.1f}")
    print(f"step-time ratio full/adaptive: {t_full / t_adapt:.2f}x   (tiny preset, this CPU)")
    print(f"lm_loss: {first:.3f} -> {last:.3f} over {args.steps} steps")
    weights = alloc.weights.mean(0)
    pairs = zip(alloc.scorer_names, weights.tolist(), strict=True)
    print("mean balancer weights: " + ", ".join(f"{k} {w:.2f}" for k, w in pairs))
    return 0
