"""A run preempted inside a SLURM job: SIGUSR1 (SLURM's warning before the time limit) saves ``last.ckpt`` at the
current step, requeues the job and exits 138; the requeued job (the same command, ``SLURM_RESTART_COUNT=1``)
resumes from that checkpoint, its CSV metrics continuing in the one version directory of the job."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, TINY

JOB = "4242"


def _slurm_env(tmp_path: Path, restarts: int) -> dict[str, str]:
    """The environment of a one-task SLURM batch job (as srun sets it) whose requeue command is a stub that writes
    its arguments to ``requeued.txt``."""
    stub = tmp_path / "requeue-stub"
    stub.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'requeued.txt'}\n")
    stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update({"SLURM_JOB_ID": JOB, "SLURM_JOB_NAME": "arrcoc", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
                "SLURM_NNODES": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0",
                "SLURM_NODELIST": "localhost", "SLURM_RESTART_COUNT": str(restarts),
                "ARRCOC_REQUEUE_CMD": str(stub)})
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), env.get("PYTHONPATH", "")])
    return env


def _command(tmp_path: Path, max_steps: int) -> list[str]:
    """The job's ``arrcoc fit`` (what the sbatch script's srun line runs): slowed-down steps, a marker once
    training is under way."""
    return [sys.executable, "-m", "arrcoc.cli", "fit", "--config", "configs/phase1.yaml",
            "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", str(max_steps), *TINY[4:],
            "--data.samples_per_epoch", "3200", "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.callbacks+=signal_marker.Marker",
            f"--trainer.callbacks.init_args.path={tmp_path / 'started'}"]


def _metrics_steps(run: Path) -> tuple[list[Path], list[int], set[str]]:
    """The CSV logger's version directories, the steps of its training-loss rows and their epochs."""
    versions = sorted((run / "logs").iterdir())
    rows = [r for r in csv.DictReader(open(versions[-1] / "metrics.csv", encoding="utf-8")) if r.get("train/loss")]
    return versions, [int(r["step"]) for r in rows], {r["epoch"] for r in rows}


@pytest.mark.slow
def test_sigusr1_in_a_slurm_job_checkpoints_requeues_and_the_requeue_resumes(tmp_path):
    run, marker = tmp_path / "run", tmp_path / "started"
    proc = subprocess.Popen(_command(tmp_path, 200), cwd=ROOT, env=_slurm_env(tmp_path, 0), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert marker.exists(), f"training never started: {proc.communicate()[1][-3000:] if proc.poll() else ''}"
    proc.send_signal(signal.SIGUSR1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]

    ckpt = run / "checkpoints" / "last.ckpt"
    stopped = torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]
    assert 2 <= stopped < 200  # where the signal came, not the start and not the end
    assert (tmp_path / "requeued.txt").read_text().split() == [JOB]  # rank 0 requeued this job, after the save
    assert f"stopped by SIGUSR1 at step {stopped}" in out and f"requeued SLURM job {JOB}" in out
    versions, steps, _ = _metrics_steps(run)
    assert [v.name for v in versions] == [f"version_{JOB}"]
    assert steps and max(steps) < stopped  # flushed before the requeue

    # The requeued job: the same command, SLURM_RESTART_COUNT=1, to a few steps past the preemption.
    marker.unlink()
    final = stopped + 6
    again = subprocess.run(_command(tmp_path, final), cwd=ROOT, env=_slurm_env(tmp_path, 1), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {ckpt}" in again.stderr + again.stdout
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"] == final
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt"]  # no last-v1.ckpt beside it
    versions, resumed, epochs = _metrics_steps(run)
    assert [v.name for v in versions] == [f"version_{JOB}"]  # one curve for the job, not one per requeue
    assert resumed[:len(steps)] == steps, (steps, resumed)  # the first run's rows kept
    after = resumed[len(steps):]
    assert after == list(range(max(steps) + 1, final)), (stopped, steps, after)  # continued where it was preempted
    assert epochs == {"0"}  # mid-epoch: the data continues the epoch's order instead of starting a new one
    assert (tmp_path / "requeued.txt").read_text().split() == [JOB]  # a finished requeue does not requeue again
