"""Pretraining the embedded tiny encoder, so the offline default can see.

A randomly initialised, frozen tiny ViT cannot support the sample task (measured: a full-token model
trained on it stays at the answer priors). This module pretrains ``arrcoc-tiny-vit`` with dense
supervision that the sample task's generator provides for free: for every patch, the colour and the
shape of the object under it (or background), and whether the patch holds an object's centre. The
result is an ordinary open_clip checkpoint, cached and then loaded through open_clip's own
``pretrained=<path>`` code path, exactly as a real preset's weights would be.

Reproduce: ``arrcoc pretrain-encoder --out FILE [--steps N --seed S]``; the tiny preset's
``pretrained: shapes`` tag runs it on first use into ``~/.cache/arrcoc``.
"""

from __future__ import annotations

import argparse
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

from arrcoc.data.sample_task import COLORS, SHAPES, label_map, make_scene, render
from arrcoc.encoder import TINY_ENCODER, build_transform, register_presets

log = logging.getLogger("arrcoc")

SHAPES_TAG = "shapes"
def cache_dir() -> Path:
    return Path(os.path.expanduser(os.environ.get("ARRCOC_CACHE", "~/.cache/arrcoc")))
COLOR_IDS = {c: i + 1 for i, c in enumerate(sorted(COLORS))}
SHAPE_IDS = {s: i + 1 for i, s in enumerate(SHAPES)}


def shapes_checkpoint(steps: int | None = None, seed: int = 0) -> Path:
    """The cached pretrained tiny encoder, made on first use (under a file lock).

    ``steps`` defaults to ``$ARRCOC_TINY_PRETRAIN_STEPS`` or 600 (tests use a few steps)."""
    from filelock import FileLock

    steps = int(os.environ.get("ARRCOC_TINY_PRETRAIN_STEPS", 600)) if steps is None else steps
    path = cache_dir() / f"{TINY_ENCODER}-{SHAPES_TAG}-s{steps}-seed{seed}.pt"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            log.info("pretraining the tiny encoder on the shapes task (first use; cached in %s)", path)
            pretrain(path, steps=steps, seed=seed)
    return path


def _batch(rng: random.Random, transform, n: int, image_size: int, grid: int, layer_px: float):
    images, colors, shapes, centres = [], [], [], []
    # centre of every patch, in source-image pixels (the transform only rescales a square image)
    idx = ((np.arange(grid) + 0.5) * layer_px).astype(int).clip(0, image_size - 1)
    for _ in range(n):
        objs = make_scene(rng, image_size)
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


def pretrain(out: Path, steps: int = 600, seed: int = 0, batch_size: int = 32, lr: float = 2e-3,
             image_size: int = 128, layer: int = -2) -> dict[str, float]:
    """Train the tiny tower's blocks up to ``layer`` with per-patch colour/shape/centre heads; save
    the full open_clip state dict to ``out``. Returns the final per-patch accuracies."""
    register_presets()
    torch.manual_seed(seed)
    rng = random.Random(f"arrcoc-pretrain/{seed}")
    clip = open_clip.create_model(TINY_ENCODER)
    visual = clip.visual
    transform = build_transform(TINY_ENCODER)
    grid, width = visual.grid_size[0], visual.transformer.width
    heads = nn.ModuleDict({"color": nn.Linear(width, len(COLORS) + 1), "shape": nn.Linear(width, len(SHAPES) + 1),
                           "centre": nn.Linear(width, 1)})
    params = list(visual.parameters()) + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    n_blocks = len(visual.transformer.resblocks)
    take = layer % n_blocks
    t0, stats = time.perf_counter(), {}
    for step in range(steps):
        pixels, color, shape, centre = _batch(rng, transform, batch_size, image_size, grid, image_size / grid)
        feats = visual.forward_intermediates(pixels, indices=[take], stop_early=True, intermediates_only=True,
                                             output_fmt="NLC")["image_intermediates"][0]  # [B, N, D]
        lc, ls, lz = heads["color"](feats), heads["shape"](feats), heads["centre"](feats).squeeze(-1)
        loss = (F.cross_entropy(lc.flatten(0, 1), color.flatten()) + F.cross_entropy(ls.flatten(0, 1), shape.flatten())
                + F.binary_cross_entropy_with_logits(lz, centre, pos_weight=torch.tensor(20.0)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            on_obj = color > 0
            stats = {"loss": loss.item(),
                     "color_acc_on_objects": (lc.argmax(-1)[on_obj] == color[on_obj]).float().mean().item(),
                     "shape_acc_on_objects": (ls.argmax(-1)[on_obj] == shape[on_obj]).float().mean().item()}
            log.info("pretrain step %d/%d %s (%.0f s)", step, steps,
                     " ".join(f"{k} {v:.3f}" for k, v in stats.items()), time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(clip.state_dict(), tmp)
    os.replace(tmp, out)
    return stats


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="arrcoc pretrain-encoder", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="checkpoint file (default: the cache the preset reads)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = args.out or cache_dir() / f"{TINY_ENCODER}-{SHAPES_TAG}-s{args.steps}-seed{args.seed}.pt"
    stats = pretrain(out, steps=args.steps, seed=args.seed)
    print(f"saved {out}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))
    return 0
