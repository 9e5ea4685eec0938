"""Nothing lost on a stop: SIGTERM and SIGUSR1 save a checkpoint at the current step and exit non-zero;
a checkpoint save that fails halfway leaves the previous file loadable; the shipped configs checkpoint
periodically."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from arrcoc.callbacks.stopping import AtomicCheckpointIO
from arrcoc.processing.files import atomic_path, write_text
from conftest import ROOT, TINY


def _fit_until_signalled(tmp_path: Path, signum: int) -> tuple[subprocess.CompletedProcess, Path]:
    """A phase-1 fit of 200 slowed-down steps, sent ``signum`` once it has trained a few."""
    marker, run = tmp_path / "started", tmp_path / "run"
    args = ["--trainer.max_steps", "200", "--trainer.val_check_interval", "200", *TINY[4:],  # TINY's data, more steps
            "--data.samples_per_epoch", "3200", "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.default_root_dir", str(run), "--trainer.callbacks+=signal_marker.Marker",
            f"--trainer.callbacks.init_args.path={marker}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "arrcoc.cli", "fit", "--config", "configs/phase1.yaml", *args],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "training never started"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), run


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_saves_the_current_step_and_exits_nonzero(tmp_path, signum):
    out, run = _fit_until_signalled(tmp_path, signum)
    assert out.returncode == 128 + signum, out.stderr[-2000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    step = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= step < 200  # where it stopped, not the start and not the end
    assert f"stopped by {signal.Signals(signum).name} at step {step}" in out.stdout
    assert f"--ckpt_path {ckpt}" in out.stdout


def test_a_failed_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 5}, path)
    real_save = torch.save

    def half_then_full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", half_then_full_disk)
    with pytest.raises(OSError, match="could not write checkpoint .*last.ckpt.*is unchanged"):
        io.save_checkpoint({"global_step": 9}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["global_step"] == 5
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_the_temporary_file_is_beside_the_destination(tmp_path, monkeypatch):
    moves = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (moves.append((Path(src), Path(dst))), real_replace(src, dst)))
    write_text(tmp_path / "sub" / "predictions.jsonl", "{}\n")
    (src, dst), = moves
    assert src.parent == dst.parent == tmp_path / "sub"  # a rename on one file system, never a copy
    assert dst.read_text() == "{}\n"


def test_an_error_inside_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("new, half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("phase", [1, 2, 3])
def test_the_shipped_configs_checkpoint_every_few_minutes(phase):
    cfg = yaml.safe_load((ROOT / f"configs/phase{phase}.yaml").read_text())
    ckpts = [c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpts and ckpts[0]["save_last"] is True
    every = ckpts[0].get("every_n_train_steps")
    assert every and every < cfg["trainer"]["max_steps"]  # not only at the end (validation is at max_steps)


def test_inside_slurm_sigusr1_is_graceful_stops_and_lightnings_requeue_is_off(monkeypatch):
    """Inside a SLURM job GracefulStop takes SIGUSR1 too (checkpoint from the training loop, then requeue; see
    tests/test_slurm_requeue.py): Lightning's own auto-requeue, which saves inside its signal handler, is off."""
    import signal as sig

    import lightning as L
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from arrcoc.callbacks.stopping import GracefulStop

    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(key, value)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, devices=1)
    env = trainer._accelerator_connector.cluster_environment
    assert isinstance(env, SLURMEnvironment) and env.auto_requeue  # Lightning's default, before the run
    stop = GracefulStop()
    stop.setup(trainer, None, "fit")
    try:
        assert sig.getsignal(sig.SIGUSR1) == stop._handle
        assert sig.getsignal(sig.SIGTERM) == stop._handle
        assert env.auto_requeue is False  # Lightning installs no SLURM handler of its own
        assert env.world_size() == 1 and env.global_rank() == 0  # SLURM still tells the ranks
    finally:
        stop.teardown(trainer, None, "fit")
