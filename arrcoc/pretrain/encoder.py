"""Pretraining the embedded tiny encoder, so the offline default can see.

A randomly initialised, frozen tiny ViT cannot support the sample task (measured: a full-token model
trained on it stays at the answer priors). This module pretrains ``arrcoc-tiny-vit`` with dense
supervision that the sample task's generator provides for free: for every patch, the colour and the
shape of the object under it (or background), and whether the patch holds an object's centre. The
result is an ordinary open_clip checkpoint, loaded through open_clip's own ``pretrained=<path>`` code
path, exactly as a real preset's weights would be.

The tiny preset's ``pretrained: shapes`` weights are this module's output, shipped in ``presets/``
with their recipe (``.recipe.json``: the command, the machine and the held-out accuracy). Reproduce:
``arrcoc pretrain-encoder --out FILE --steps 3000 --batch-size 64 --lr 5e-3 --workers 3 --device cuda
--radius 0.0357143 0.0625`` (about 2 minutes on one GPU; data generation is the bottleneck, so more
``--workers`` help).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from arrcoc.console import console_logging
from arrcoc.data.sample_task import COLORS, RADIUS, SHAPES, label_map, make_scene, render
from arrcoc.presets import SHAPES_WEIGHTS, TINY_ENCODER, register_encoder_presets
from arrcoc.processing import build_transform

log = logging.getLogger("arrcoc")

COLOR_IDS = {c: i + 1 for i, c in enumerate(sorted(COLORS))}
SHAPE_IDS = {s: i + 1 for i, s in enumerate(SHAPES)}



def _batch(rng: random.Random, transform, n: int, image_size: int, grid: int, layer_px: float,
           radius: tuple[float, float] = RADIUS):
    images, colors, shapes, centres = [], [], [], []
    # centre of every patch, in source-image pixels (the transform only rescales a square image)
    idx = ((np.arange(grid) + 0.5) * layer_px).astype(int).clip(0, image_size - 1)
    for _ in range(n):
        objs = make_scene(rng, image_size, radius)
        images.append(transform(render(objs, image_size, rng.randrange(2**32))))
        labels = label_map(objs, image_size)[np.ix_(idx, idx)]  # [grid, grid] object index + 1
        color = np.zeros_like(labels, dtype=np.int64)
        shape = np.zeros_like(labels, dtype=np.int64)
        centre = np.zeros_like(labels, dtype=np.float32)
        for i, o in enumerate(objs):
            color[labels == i + 1] = COLOR_IDS[o.color]
            shape[labels == i + 1] = SHAPE_IDS[o.shape]
            centre[min(int(o.y / layer_px), grid - 1), min(int(o.x / layer_px), grid - 1)] = 1.0
        colors.append(color.reshape(-1))
        shapes.append(shape.reshape(-1))
        centres.append(centre.reshape(-1))
    return (torch.stack(images), torch.from_numpy(np.stack(colors)), torch.from_numpy(np.stack(shapes)),
            torch.from_numpy(np.stack(centres)))


class _Batches(torch.utils.data.IterableDataset):
    """Batch ``i`` comes from its own RNG, so the stream is the same for any number of workers."""

    def __init__(self, name: str, count: int, batch_size: int, image_size: int, grid: int,
                 radius: tuple[float, float]) -> None:
        self.name, self.count, self.batch_size, self.image_size, self.grid = name, count, batch_size, image_size, grid
        self.radius = radius

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        transform = build_transform(TINY_ENCODER)
        for i in range(worker, self.count, workers):
            rng = random.Random(f"arrcoc-pretrain/{self.name}/{i}")
            yield _batch(rng, transform, self.batch_size, self.image_size, self.grid, self.image_size / self.grid,
                         self.radius)


def _hits(lc, ls, color, shape):
    """[colour hits, shape hits, count] over the patches that lie on an object."""
    on_obj = color > 0
    return torch.stack([(lc.argmax(-1)[on_obj] == color[on_obj]).sum(), (ls.argmax(-1)[on_obj] == shape[on_obj]).sum(),
                        on_obj.sum()]).float()


def _loader(name: str, count: int, batch_size: int, image_size: int, grid: int, workers: int, radius):
    return torch.utils.data.DataLoader(_Batches(name, count, batch_size, image_size, grid, radius),
                                       batch_size=None, num_workers=workers, persistent_workers=False)


def pretrain(out: Path, steps: int = 600, seed: int = 0, batch_size: int = 32, lr: float = 2e-3,
             image_size: int = 128, layer: int = -2, workers: int = 0, device: str = "cpu",
             radius: tuple[float, float] = RADIUS) -> dict[str, float]:
    """Train the tiny tower's blocks up to ``layer`` with per-patch colour/shape/centre heads; save
    the full open_clip state dict to ``out`` and the recipe beside it (``.recipe.json``). Returns the
    per-patch accuracies on 512 held-out scenes (``*_acc_on_objects``: over patches on an object)."""
    register_encoder_presets()
    torch.manual_seed(seed)
    clip = open_clip.create_model(TINY_ENCODER)
    visual = clip.visual.to(device)
    grid, width = visual.grid_size[0], visual.transformer.width
    heads = nn.ModuleDict({"color": nn.Linear(width, len(COLORS) + 1), "shape": nn.Linear(width, len(SHAPES) + 1),
                           "centre": nn.Linear(width, 1)}).to(device)
    params = list(visual.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    take = layer % len(visual.transformer.resblocks)
    pos_weight = torch.tensor(20.0, device=device)

    def run(pixels):
        feats = visual.forward_intermediates(pixels.to(device), indices=[take], stop_early=True,
                                             intermediates_only=True, output_fmt="NLC")["image_intermediates"][0]
        return heads["color"](feats), heads["shape"](feats), heads["centre"](feats).squeeze(-1)  # [B, N, *]

    t0 = time.perf_counter()
    train = _loader(f"{seed}/train", steps, batch_size, image_size, grid, workers, radius)
    for step, (pixels, color, shape, centre) in enumerate(train):
        color, shape, centre = color.to(device), shape.to(device), centre.to(device)
        lc, ls, lz = run(pixels)
        loss = (F.cross_entropy(lc.flatten(0, 1), color.flatten()) + F.cross_entropy(ls.flatten(0, 1), shape.flatten())
                + F.binary_cross_entropy_with_logits(lz, centre, pos_weight=pos_weight))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            c_hit, s_hit, n = _hits(lc, ls, color, shape).tolist()
            log.info("pretrain step %d/%d loss %.3f colour %.3f shape %.3f (%.0f s)", step, steps, loss.item(),
                     c_hit / max(n, 1), s_hit / max(n, 1), time.perf_counter() - t0)
    hits = torch.zeros(3, device=device)
    visual.eval()
    with torch.no_grad():
        for pixels, color, shape, _ in _loader("heldout", 512 // 64, 64, image_size, grid, workers, radius):
            color, shape = color.to(device), shape.to(device)
            lc, ls, _ = run(pixels)
            hits += _hits(lc, ls, color, shape)
    stats = {"color_acc_on_objects": (hits[0] / hits[2]).item(), "shape_acc_on_objects": (hits[1] / hits[2]).item(),
             "seconds": time.perf_counter() - t0}
    log.info("pretrain held-out: %s", " ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save({k: v.cpu() for k, v in clip.state_dict().items()}, tmp)
    os.replace(tmp, out)
    recipe = {"steps": steps, "seed": seed, "batch_size": batch_size, "lr": lr, "image_size": image_size,
              "layer": layer, "radius": list(radius), "device": str(device), "torch": torch.__version__,
              "held_out": stats}
    out.with_suffix(".recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    console_logging()
    p = argparse.ArgumentParser(prog="arrcoc pretrain-encoder", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help=f"checkpoint file (the preset's own: {SHAPES_WEIGHTS})")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=0, help="data-generating processes (0: in the main process)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--radius", type=float, nargs=2, default=RADIUS, metavar=("MIN", "MAX"),
                   help="object half sizes as fractions of the image side (default: the sample task's)")
    args = p.parse_args(argv)
    stats = pretrain(args.out, steps=args.steps, seed=args.seed, batch_size=args.batch_size, lr=args.lr,
                     workers=args.workers, device=args.device, radius=tuple(args.radius))
    print(f"saved {args.out}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return 0
