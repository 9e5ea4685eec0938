"""A real two-process DDP fit through the CLI, as a user starts one (`arrcoc fit ... --trainer.devices 2`): gloo
on CPU, a few steps of phase 1 on the sample task, a checkpoint at the end and one evaluation over both ranks."""

import pytest
import torch

from conftest import TINY, arrcoc

pytestmark = pytest.mark.slow  # two processes, each building the model


def test_two_process_fit_through_the_cli(tmp_path):
    run = tmp_path / "run"
    out = arrcoc("fit", "--config", "configs/phase1.yaml", *TINY, "--data.cache_dir", str(tmp_path / "cache"),
                 "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                 "--trainer.default_root_dir", str(run), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    log = out.stdout + out.stderr
    # 24 validation questions, split over the two ranks and summed back: every one evaluated once
    assert "val: evaluated 24 samples; not evaluated: none" in log
