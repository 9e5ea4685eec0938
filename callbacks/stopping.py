"""Stopping on a signal without losing work, and checkpoints that a crash cannot break.

A scheduler stops a job with SIGTERM (and SLURM warns with SIGUSR1 when asked to, ``--signal``): the run
finishes the step it is in, saves ``last.ckpt`` at that step, stops, and the process exits with 128 + the
signal's number (143 for SIGTERM, 138 for SIGUSR1), so ``fit phase1 && fit phase2`` chains and schedulers
do not take it for success. The handler only sets a flag: saving happens in the training loop (saving
inside a signal handler can deadlock on the locks the interrupted code holds).

Inside a SLURM job, SIGUSR1 is SLURM's warning before the time limit (``arrcoc slurm`` asks for it 90 s ahead):
after the save, rank 0 requeues the job (``scontrol requeue``, :func:`arrcoc.slurm.requeue`) and the requeued
job resumes from ``last.ckpt``. Lightning's own SLURM auto-requeue (which saves inside its signal handler) is
switched off for the run; its rank and world-size detection stays. SIGTERM never requeues (``scancel``).
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from arrcoc import slurm
from arrcoc.processing.files import atomic_path

log = logging.getLogger("arrcoc")

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
_stopped: list[int] = []  # signals this process stopped a run for (read by the CLI for its exit code)


def stopped_by_signal() -> int | None:
    """The signal the last run of this process stopped for, or None."""
    return _stopped[-1] if _stopped else None


class GracefulStop(L.Callback):
    """On SIGTERM or SIGUSR1: save ``last.ckpt`` at the current step, stop training, exit 128 + signal.

    Added to every ``arrcoc fit`` run by the CLI. The checkpoint goes where the run's ``ModelCheckpoint``
    saves (``<dirpath>/last.ckpt``; ``<default_root_dir>/checkpoints`` without one), so ``--ckpt_path last``
    resumes it. Under DDP every rank stops at the same step (the ranks agree on the flag each step). Inside a
    SLURM batch job, SIGUSR1 also requeues the job once the checkpoint is saved (see the module's docstring)."""

    def __init__(self, signals: tuple[int, ...] = SIGNALS) -> None:
        self.signals = tuple(signals)
        self.received: int | None = None
        self.saved: Path | None = None
        self.requeued: str | None = None  # the SLURM job this run requeued
        self._previous: dict[int, Any] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.received, self.saved, self.requeued = None, None, None
        _stopped.clear()  # the exit code speaks of this run only
        disable_lightning_requeue(trainer)  # before Lightning installs its signal handlers (after the setup hooks)
        for sig in self.signals:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        first = self.received is None
        self.received = signum
        if first:
            log.info("received %s: stopping after this step, with a checkpoint", signal.Signals(signum).name)
        previous = self._previous.get(signum)
        if callable(previous):  # Lightning's own SIGTERM handler (it forwards the signal to child processes)
            previous(signum, frame)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stop = self.received is not None
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop and self.saved is None:
            self._save_and_stop(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # Under DDP, Lightning stops every rank itself once rank 0 saw SIGTERM (at a step's end): save there.
        if self.received is not None and self.saved is None and isinstance(exception, SystemExit):
            self._save_and_stop(trainer)

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        signum = self.received or signal.SIGTERM
        path = checkpoint_dir(trainer) / "last.ckpt"
        _claim_last(trainer, path)  # before the save: the checkpoint records it as the ModelCheckpoint's last
        trainer.save_checkpoint(path)
        trainer.should_stop = True
        self.saved = path
        _stopped.append(int(signum))
        if not trainer.is_global_zero:
            return
        print(f"[arrcoc] stopped by {signal.Signals(signum).name} at step {trainer.global_step}; checkpoint: "
              f"{path} (resume: the same command with --ckpt_path {path}); exit code {128 + int(signum)}",
              flush=True)
        target = slurm.requeue_target()
        if signum == signal.SIGUSR1 and target is not None:
            self._requeue(trainer, target)

    def _requeue(self, trainer: L.Trainer, target: str) -> None:
        """Requeue SLURM job ``target`` (rank 0, after every rank passed the save): the requeued job runs the same
        command and resumes from ``last.ckpt``. The loggers are flushed first: the requeue may kill this job
        before Lightning's teardown writes them."""
        for logger in trainer.loggers:
            logger.save()
        if slurm.requeue(target):
            self.requeued = target
            print(f"[arrcoc] requeued SLURM job {target}: it restarts with the same command and resumes from "
                  "this checkpoint", flush=True)


def _claim_last(trainer: L.Trainer, path: Path) -> None:
    """Make ``path`` (this step's ``last.ckpt``) the last checkpoint of the ModelCheckpoint that saves there.

    Otherwise that callback, finding a ``last.ckpt`` it did not write, saves another at the end of training
    (``last-v1.ckpt``, its ``on_train_end``) with the epoch marked finished: the newest file, which
    ``--ckpt_path last`` and a requeue would resume, and which restarts the epoch's data instead of continuing
    it. Claimed, later saves overwrite ``last.ckpt``, and none is repeated at this step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.save_last and cb.dirpath and Path(cb.dirpath) == path.parent:
            cb.last_model_path = str(path)
            if hasattr(cb, "_last_checkpoint_saved"):  # Lightning >= 2.5: on_train_end saves unless set
                cb._last_checkpoint_saved = str(path)
            if hasattr(cb, "_last_global_step_saved"):  # no second save at this step (validation, epoch end)
                cb._last_global_step_saved = trainer.global_step


def disable_lightning_requeue(trainer: L.Trainer) -> None:
    """Switch off Lightning's SLURM auto-requeue for this run, keeping its SLURM environment (ranks, world size,
    main address). Lightning's handler saves inside the signal handler (which can deadlock) and would requeue a
    second time; :class:`GracefulStop` does both from the training loop instead. Lightning reads the flag when it
    installs its handlers, after the callbacks' ``setup``."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    # Single-device strategies hold none; the trainer's connector holds it then (where Lightning's own
    # signal connector looks)
    for env in (getattr(trainer.strategy, "cluster_environment", None),
                getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)):
        if isinstance(env, SLURMEnvironment):
            env.auto_requeue = False


def checkpoint_dir(trainer: L.Trainer) -> Path:
    """Where the run's ModelCheckpoint saves; ``<default_root_dir>/checkpoints`` without one."""
    cb = trainer.checkpoint_callback
    if cb is not None and getattr(cb, "dirpath", None):
        return Path(cb.dirpath)
    return Path(trainer.default_root_dir) / "checkpoints"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint writer, but each file is written beside its destination and renamed into
    place (:func:`arrcoc.processing.files.atomic_path`): a kill or a full disk during a save leaves the
    previous checkpoint loadable. Non-local paths (``s3://``, ...) go through Lightning's own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        try:
            with atomic_path(path) as tmp:
                torch.save(checkpoint, tmp)
        except OSError as err:
            raise OSError(err.errno, f"could not write checkpoint {path} ({err.strerror or err}); the previous "
                                     "file there, if any, is unchanged") from err
        return None
