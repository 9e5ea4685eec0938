"""``arrcoc slurm``: an sbatch script for a multi-node ``arrcoc fit`` that checkpoints and requeues itself.

``arrcoc slurm --config configs/phase1.yaml --nodes 2 --gpus-per-node 4 [--partition P] [--time T] [--account A]
[--job-name J] [--cpus-per-task C] [--output PATH] [--submit] [-- extra fit arguments]`` prints the script
(``--submit`` hands it to ``sbatch``). The job asks SLURM for SIGUSR1 90 s before its time limit
(``--signal=SIGUSR1@90``, to every task; ``B:USR1`` would reach only the batch shell): each rank finishes its
step, ``last.ckpt`` is saved at that step, rank 0 requeues the job (``scontrol requeue``) and the process exits
138. The requeued job runs the same command; as a requeue (``SLURM_RESTART_COUNT`` > 0) it resumes from the
run's ``last.ckpt`` (see ``docs/slurm.md``).

The run-time half (the job's id, whether it is a requeue, the requeue itself) is used by
:class:`arrcoc.callbacks.GracefulStop` and the fit CLI. This module imports nothing heavy: ``arrcoc slurm``
answers at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("arrcoc")

#: seconds before the time limit at which SLURM sends SIGUSR1: a step, a checkpoint save and the requeue must fit
SIGNAL_LEAD_S = 90
#: the command that requeues a job (the job id is appended); ``ARRCOC_REQUEUE_CMD`` replaces it (tests, wrappers)
REQUEUE_CMD = "scontrol requeue"
REQUEUE_ENV = "ARRCOC_REQUEUE_CMD"
#: fit arguments the script sets from the allocation itself; given again after ``--`` they would disagree with it
_ALLOCATION_ARGS = {"--trainer.num_nodes": "--nodes", "--trainer.devices": "--gpus-per-node"}
#: SLURM's --time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


@dataclass
class Allocation:
    """What one ``arrcoc slurm`` call asks SLURM for, and the fit it runs there."""

    configs: list[str]
    nodes: int
    gpus_per_node: int
    cpus_per_task: int = 8
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    job_name: str = "arrcoc"
    output: str | None = None
    extra: list[str] = field(default_factory=list)

    def check(self) -> None:
        """Refuse what SLURM or the fit would refuse later (after a wait in the queue), naming flag and value."""
        if not self.configs:
            raise ValueError("--config is required (a phase config, e.g. --config configs/phase1.yaml; repeat it "
                             "for layers)")
        for path in self.configs:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--config {path!r} does not exist (give a config file, e.g. "
                                        "configs/phase1.yaml, relative to where the job is submitted)")
        for flag, value in (("--nodes", self.nodes), ("--gpus-per-node", self.gpus_per_node),
                            ("--cpus-per-task", self.cpus_per_task)):
            if value < 1:
                raise ValueError(f"{flag} {value}: must be a whole number >= 1")
        for flag, value in (("--partition", self.partition), ("--account", self.account),
                            ("--job-name", self.job_name), ("--output", self.output)):
            if value is not None and (not value or any(c.isspace() for c in value)):
                raise ValueError(f"{flag} {value!r}: must be non-empty, without spaces or line breaks (an #SBATCH "
                                 "line takes one word)")
        if self.time is not None:
            seconds = time_seconds(self.time)
            if seconds <= SIGNAL_LEAD_S:
                raise ValueError(f"--time {self.time!r} is {seconds} s: the job must run longer than the "
                                 f"{SIGNAL_LEAD_S} s warning it gets before its limit (give e.g. 4:00:00)")
        for arg in self.extra:
            name = arg.split("=", 1)[0]
            if name in _ALLOCATION_ARGS:
                raise ValueError(f"extra fit argument {arg!r} would disagree with the allocation: give it as "
                                 f"{_ALLOCATION_ARGS[name]}")


def time_seconds(value: str) -> int:
    """Seconds in a SLURM ``--time`` value (``M``, ``M:S``, ``H:M:S``, ``D-H``, ``D-H:M``, ``D-H:M:S``)."""
    match = _TIME.match(value)
    if match is None:
        raise ValueError(f"--time {value!r}: not a SLURM time; valid: minutes (90), M:S, H:M:S (4:00:00), D-H, "
                         "D-H:M or D-H:M:S (1-12:00:00)")
    days, first, second, third = (int(g) if g is not None else None for g in match.groups())
    if days is not None:  # D-H[:M[:S]]
        return ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
    if third is not None:  # H:M:S
        return (first * 60 + second) * 60 + third
    return first * 60 + (second or 0)  # M or M:S


def render(alloc: Allocation) -> str:
    """The sbatch script for ``alloc``: one task per GPU (``srun`` starts them; Lightning reads ranks from SLURM),
    SIGUSR1 to every task before the limit, requeue allowed, logs appended across requeues."""
    alloc.check()
    lines = ["#!/bin/bash",
             "# Written by `arrcoc slurm` (docs/slurm.md). Submit from the directory the config paths are relative to:",
             "# the job (and every requeue of it) runs there, with the submitting shell's environment (its venv).",
             f"#SBATCH --job-name={alloc.job_name}",
             f"#SBATCH --nodes={alloc.nodes}",
             f"#SBATCH --ntasks-per-node={alloc.gpus_per_node}",
             f"#SBATCH --gres=gpu:{alloc.gpus_per_node}",
             f"#SBATCH --cpus-per-task={alloc.cpus_per_task}",
             f"#SBATCH --signal=SIGUSR1@{SIGNAL_LEAD_S}",
             "#SBATCH --requeue",
             "#SBATCH --open-mode=append"]
    for flag, value in (("partition", alloc.partition), ("time", alloc.time), ("account", alloc.account),
                        ("output", alloc.output)):
        if value is not None:
            lines.append(f"#SBATCH --{flag}={value}")
    lines += ["",
              f"# SIGUSR1 {SIGNAL_LEAD_S} s before the limit reaches every task (not B:USR1, which reaches only this "
              "shell):",
              "# each rank finishes its step, last.ckpt is saved at that step, rank 0 runs `scontrol requeue`, and",
              "# the requeued job runs this same command, resuming from last.ckpt (SLURM_RESTART_COUNT > 0).",
              "srun " + shlex.join(fit_command(alloc))]
    return "\n".join(lines) + "\n"


def fit_command(alloc: Allocation) -> list[str]:
    """``arrcoc fit`` as each task runs it: the configs, the allocation's shape, then the extra arguments."""
    args = ["arrcoc", "fit"]
    for path in alloc.configs:
        args += ["--config", path]
    args += ["--trainer.num_nodes", str(alloc.nodes), "--trainer.devices", str(alloc.gpus_per_node),
             "--trainer.accelerator", "gpu", *alloc.extra]
    return args


def submit(script: str) -> int:
    """Hand ``script`` to ``sbatch`` on its standard input; sbatch's exit status."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise FileNotFoundError("--submit: `sbatch` is not on PATH (not a SLURM login node?); run without --submit "
                                "to print the script, then submit it where sbatch is: arrcoc slurm ... > job.sbatch "
                                "&& sbatch job.sbatch")
    return subprocess.run([sbatch], input=script, text=True, check=False).returncode


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arrcoc slurm", description=__doc__.splitlines()[0],
                                epilog="Arguments after `--` go to `arrcoc fit` unchanged.")
    p.add_argument("--config", action="append", default=[], help="a phase config (repeat for layers)")
    p.add_argument("--nodes", type=int, required=True, help="nodes (#SBATCH --nodes, --trainer.num_nodes)")
    p.add_argument("--gpus-per-node", type=int, required=True,
                   help="GPUs per node, one task each (--ntasks-per-node, --gres=gpu:G, --trainer.devices)")
    p.add_argument("--cpus-per-task", type=int, default=8, help="CPU cores per task, for loader workers (default 8)")
    p.add_argument("--partition", help="#SBATCH --partition")
    p.add_argument("--time", help="#SBATCH --time, e.g. 4:00:00 (the job requeues itself when it runs out)")
    p.add_argument("--account", help="#SBATCH --account")
    p.add_argument("--job-name", default="arrcoc", help="#SBATCH --job-name (default arrcoc)")
    p.add_argument("--output", help="#SBATCH --output, the job's log (appended to across requeues)")
    p.add_argument("--submit", action="store_true", help="submit the script with sbatch instead of printing it")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Print (or ``--submit``) the sbatch script; a mistake is one line on stderr and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, extra = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = _parser().parse_args(own)
    alloc = Allocation(configs=args.config, nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                       cpus_per_task=args.cpus_per_task, partition=args.partition, time=args.time,
                       account=args.account, job_name=args.job_name, output=args.output, extra=extra)
    try:
        script = render(alloc)
        if args.submit:
            return submit(script)
    except (ValueError, FileNotFoundError) as err:
        print(f"arrcoc slurm: error: {err}", file=sys.stderr)
        return 2
    sys.stdout.write(script)
    return 0


# -- inside a job -------------------------------------------------------------------------------------------


def _interactive(env: Mapping[str, str]) -> bool:
    """An interactive allocation (``srun --pty bash``, job name bash/interactive), as Lightning tells it: several
    runs share its job id, so nothing is pinned to it or requeued."""
    return env.get("SLURM_JOB_NAME") in ("bash", "interactive")


def job_id(env: Mapping[str, str] | None = None) -> str | None:
    """This batch job's id (``SLURM_JOB_ID``, unique per array task too), or None outside one."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    return None if not job or _interactive(env) else job


def requeue_target(env: Mapping[str, str] | None = None) -> str | None:
    """The id ``scontrol requeue`` takes for this job: ``<array job>_<task>`` for an array task, else the job id."""
    env = os.environ if env is None else env
    if job_id(env) is None:
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else env["SLURM_JOB_ID"]


def restart_count(env: Mapping[str, str] | None = None) -> int:
    """How many times SLURM has restarted this job (``SLURM_RESTART_COUNT``; 0 for a first run or outside one)."""
    env = os.environ if env is None else env
    value = env.get("SLURM_RESTART_COUNT", "0") if job_id(env) is not None else "0"
    return int(value) if value.isdigit() else 0


def requeue(target: str, env: Mapping[str, str] | None = None) -> bool:
    """Requeue job ``target`` (``scontrol requeue TARGET``; ``ARRCOC_REQUEUE_CMD`` replaces the command). True when
    the command succeeded. Where it cannot run (no ``scontrol`` in a container), one line says so and the job
    simply stops with its checkpoint."""
    env = os.environ if env is None else env
    command = [*shlex.split(env.get(REQUEUE_ENV) or REQUEUE_CMD), target]
    if shutil.which(command[0]) is None:
        log.warning("SLURM job %s cannot requeue itself: %r is not on PATH (inside a container?); it stops with its "
                    "checkpoint: resubmit it with --ckpt_path to resume", target, command[0])
        return False
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("requeueing SLURM job %s failed (%s: %s); it stops with its checkpoint", target,
                    shlex.join(command), err)
        return False
    if done.returncode != 0:
        log.warning("requeueing SLURM job %s failed (%s exited %d: %s); it stops with its checkpoint", target,
                    shlex.join(command), done.returncode, (done.stderr or done.stdout).strip()[:500])
        return False
    return True


if __name__ == "__main__":
    raise SystemExit(main())
