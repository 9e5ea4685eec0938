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

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.sample_task.train", "96",
        "--data.sample_task.val", "24", "--data.samples_per_epoch", "96", "--data.num_workers", "0",
        "--data.batch_size", "8", "--data.eval_batch_size", "12", "--trainer.log_every_n_steps", "1"]


def arrcoc(*args, cwd=ROOT, timeout=300):
    """``arrcoc ARGS`` in a subprocess (outside any SLURM job), from the repository root."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([sys.executable, "-m", "arrcoc.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return out


def state(path):
    """The state dict of a Lightning checkpoint file."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """Phase 1 -> 2 -> 3 on the sample task, a few steps each, each phase starting from the last (through
    ``arrcoc fit`` subprocesses; shared by the CLI and demo tests). Read-only for its users."""
    tmp = tmp_path_factory.mktemp("chain")
    cache = ["--data.cache_dir", str(tmp / "cache")]
    runs = {}
    for phase in (1, 2, 3):
        extra = [] if phase == 1 else ["--model.init_args.init_from", str(runs[phase - 1] / "checkpoints/last.ckpt")]
        run_dir = tmp / f"phase{phase}"
        out = arrcoc("fit", "--config", f"configs/phase{phase}.yaml", *TINY, *cache,
                     "--trainer.default_root_dir", str(run_dir), *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[phase] = run_dir
        runs[f"log{phase}"] = out.stderr + out.stdout
    runs["cache"] = tmp / "cache"
    return runs



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


def ddp_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child DDP run, without what would make it unlike a user's run: a cluster's
    rank variables, and the seed variables Lightning's ``seed_everything`` leaves in ``os.environ`` for the rest of
    the test session (``PL_GLOBAL_SEED``, ``PL_SEED_WORKERS``). ``ARRCOC_TEST_WATCHDOG`` arms the scripts'
    watchdog (:mod:`hang_watchdog`): a hang prints every thread's stack and exits before the test's timeout."""
    drop = ("SLURM_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "PL_GLOBAL_SEED", "PL_SEED_WORKERS")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = str(Path(__file__).parent) + os.pathsep + env.get("PYTHONPATH", "")
    return {**env, **extra}


def run_ddp(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a two-process CPU DDP script (``python *args``) outside any cluster environment. A hang ends in the
    script's watchdog (stacks of every thread of every rank) a minute before ``timeout``; the failure message
    shows the end of stderr, where those stacks are."""
    env = ddp_env(ARRCOC_TEST_WATCHDOG=str(max(timeout - 60, 30)))
    try:
        run = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"DDP run hung (killed after {timeout} s): ...{str(err.stderr)[-6000:]}") from err
    assert run.returncode == 0, run.stderr[-6000:]
    return run


def run_ddp_script(script: Path, out: Path, timeout: int = 300) -> None:
    """Run a two-process CPU DDP script (``python script OUT``); fail with its stderr if it fails or hangs."""
    run_ddp([str(script), str(out)], timeout)
