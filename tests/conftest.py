import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

from arrcoc.data import VQAPromptBuilder, collate_vqa
from arrcoc.model import ARRCOCModel

QUESTIONS = [
    ("What color is the triangle?", "red"),
    ("How many circles are there in the image?", "3"),
    ("Is there a blue square?", "no"),
    ("", "yes"),
    ("Which object is left of the star, the circle or the cross?", "circle"),
]


def draw_image(seed: int, size=(96, 96)) -> Image.Image:
    rng = random.Random(seed)
    img = Image.new("RGB", size, tuple(rng.randint(0, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(1, 4)):
        x, y = rng.randint(0, size[0] - 20), rng.randint(0, size[1] - 20)
        d.ellipse([x, y, x + rng.randint(8, 20), y + rng.randint(8, 20)],
                  fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return img


def make_samples(model: ARRCOCModel, items, seeds):
    prompt = VQAPromptBuilder(model.tokenizer)
    out = []
    for (q, a), s in zip(items, seeds, strict=False):
        sample = prompt(q, a)
        sample["pixel_values"] = model.encoder.transform(draw_image(s))
        out.append(sample)
    return out


def make_batch(model: ARRCOCModel, n: int = 4, offset: int = 0):
    items = [QUESTIONS[(i + offset) % len(QUESTIONS)] for i in range(n)]
    return collate_vqa(make_samples(model, items, range(offset, offset + n)), model.tokenizer.pad_token_id)


@pytest.fixture
def tiny_model() -> ARRCOCModel:
    torch.manual_seed(0)
    return ARRCOCModel()


@pytest.fixture(scope="session")
def shared_tiny_model() -> ARRCOCModel:
    """Read-only use (eval mode, no training) to save build time."""
    torch.manual_seed(1)
    return ARRCOCModel().eval()


def run_ddp_script(script: Path, out: Path, timeout: int = 300) -> None:
    """Run a two-process CPU DDP script (``python script OUT``) outside any cluster environment; fail with its
    stderr if it fails or hangs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK", "RANK", "WORLD_SIZE"))}
    try:
        run = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True, text=True,
                             timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"DDP run hung (killed after {timeout} s): {err.stderr!s:.2000}") from err
    assert run.returncode == 0, run.stderr[-3000:]
