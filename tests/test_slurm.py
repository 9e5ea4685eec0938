"""``arrcoc slurm``: the sbatch script for an allocation (line by line), its errors, ``--submit``; the run-time half
(job id, requeue, resume, logger version); and a simulated 2-node x 2-GPU allocation: SLURM's variables give each
task its rank and world size (Lightning's SLURMEnvironment) and each rank a disjoint slice of the shards."""

import csv
import logging
import os
import shlex
import signal
from pathlib import Path

import lightning as L
import pytest
from jsonargparse import Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.loggers import CSVLogger

from arrcoc import slurm
from arrcoc.cli import COMMANDS
from arrcoc.data.stages import worker_shards
from arrcoc.train.cli import pin_logger_versions, resume_requeued_job
from conftest import ROOT

PHASE1 = "configs/phase1.yaml"


def _directives(script: str) -> dict[str, str]:
    """``#SBATCH --key=value`` lines as {key: value} (``--requeue`` -> ``""``), failing on a repeated key."""
    out: dict[str, str] = {}
    for line in script.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            assert key not in out, f"{key} twice"
            out[key] = value
    return out


def _srun(script: str) -> list[str]:
    """The words of the script's one ``srun`` line, as the shell splits them."""
    (line,) = [ln for ln in script.splitlines() if ln.startswith("srun ")]
    return shlex.split(line)


@pytest.fixture
def no_slurm(monkeypatch):
    """Outside any SLURM job, whatever the test machine is in."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv(slurm.REQUEUE_ENV, raising=False)


@pytest.fixture
def in_job(monkeypatch, no_slurm):
    """Inside a one-task SLURM batch job (srun's variables)."""
    for key, value in {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "arrcoc", "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
                       "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NTASKS_PER_NODE": "1"}.items():
        monkeypatch.setenv(key, value)


# -- the script ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nodes, gpus", [(1, 1), (2, 4), (16, 8)])
def test_the_script_asks_one_task_per_gpu_and_runs_fit_on_that_shape(nodes, gpus):
    script = slurm.render(slurm.Allocation([PHASE1], nodes=nodes, gpus_per_node=gpus))
    assert script.startswith("#!/bin/bash\n")
    assert _directives(script) == {"--job-name": "arrcoc", "--nodes": str(nodes), "--ntasks-per-node": str(gpus),
                                   "--gres": f"gpu:{gpus}", "--cpus-per-task": "8", "--signal": "SIGUSR1@90",
                                   "--requeue": "", "--open-mode": "append"}
    assert _srun(script) == ["srun", "arrcoc", "fit", "--config", PHASE1, "--trainer.num_nodes", str(nodes),
                             "--trainer.devices", str(gpus), "--trainer.accelerator", "gpu"]
    assert "B:USR1" not in "\n".join(ln for ln in script.splitlines() if ln.startswith("#SBATCH"))


def test_the_optional_directives_configs_in_order_and_extra_args_quoted(tmp_path):
    layer = tmp_path / "my preset.yaml"
    layer.write_text("{}\n")
    alloc = slurm.Allocation([PHASE1, str(layer)], nodes=2, gpus_per_node=8, cpus_per_task=12, partition="gpu",
                             time="1-12:00:00", account="proj42", job_name="phase1", output="logs/%x-%j.out",
                             extra=["--trainer.max_steps", "5000", "--model.init_args.note", "a b; rm -rf /"])
    script = slurm.render(alloc)
    got = _directives(script)
    assert got["--partition"] == "gpu" and got["--time"] == "1-12:00:00" and got["--account"] == "proj42"
    assert got["--job-name"] == "phase1" and got["--output"] == "logs/%x-%j.out" and got["--cpus-per-task"] == "12"
    assert _srun(script) == ["srun", "arrcoc", "fit", "--config", PHASE1, "--config", str(layer),
                             "--trainer.num_nodes", "2", "--trainer.devices", "8", "--trainer.accelerator", "gpu",
                             "--trainer.max_steps", "5000", "--model.init_args.note", "a b; rm -rf /"]


def test_the_command_prints_the_script_and_passes_what_follows_the_double_dash(capsys, no_slurm):
    assert "slurm" in COMMANDS
    rc = slurm.main(["--config", PHASE1, "--nodes", "2", "--gpus-per-node", "4", "--time", "240", "--",
                     "--trainer.max_steps", "10"])
    out = capsys.readouterr().out
    assert rc == 0 and _directives(out)["--time"] == "240"
    assert _srun(out)[-2:] == ["--trainer.max_steps", "10"]


def test_the_shipped_template_is_the_rendered_script_for_its_allocation():
    template = (ROOT / "scripts/slurm/arrcoc.sbatch").read_text()
    rendered = slurm.render(slurm.Allocation([PHASE1], nodes=2, gpus_per_node=8, time="24:00:00",
                                             output="slurm-%x-%j.out"))
    assert _directives(template) == _directives(rendered)
    assert _srun(template) == _srun(rendered)


@pytest.mark.parametrize("args, message", [
    (["--nodes", "0", "--gpus-per-node", "4"], "--nodes 0: must be a whole number >= 1"),
    (["--nodes", "1", "--gpus-per-node", "-2"], "--gpus-per-node -2: must be a whole number >= 1"),
    (["--nodes", "1", "--gpus-per-node", "1", "--cpus-per-task", "0"], "--cpus-per-task 0: must be"),
    (["--nodes", "1", "--gpus-per-node", "1", "--time", "4h"], "--time '4h': not a SLURM time; valid: "),
    (["--nodes", "1", "--gpus-per-node", "1", "--time", "1:00"], "must run longer than the 90 s warning"),
    (["--nodes", "1", "--gpus-per-node", "1", "--partition", "a b"], "--partition 'a b': must be non-empty"),
    (["--nodes", "1", "--gpus-per-node", "1", "--", "--trainer.devices", "2"],
     "'--trainer.devices' would disagree with the allocation: give it as --gpus-per-node"),
])
def test_a_bad_flag_is_named_with_its_value_and_what_is_valid(capsys, args, message):
    assert slurm.main(["--config", PHASE1, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("arrcoc slurm: error: ") and message in err


def test_a_missing_or_absent_config_is_named(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    assert slurm.main(["--config", str(missing), "--nodes", "1", "--gpus-per-node", "1"]) == 2
    assert f"--config '{missing}' does not exist" in capsys.readouterr().err
    assert slurm.main(["--nodes", "1", "--gpus-per-node", "1"]) == 2
    assert "--config is required" in capsys.readouterr().err


@pytest.mark.parametrize("value, seconds", [("90", 5400), ("2:30", 150), ("4:00:00", 14400), ("1-0", 86400),
                                            ("1-2:30", 95400), ("0-0:10:05", 605)])
def test_slurm_time_formats(value, seconds):
    assert slurm.time_seconds(value) == seconds


def test_submit_without_sbatch_says_so(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert slurm.main(["--config", PHASE1, "--nodes", "1", "--gpus-per-node", "1", "--submit"]) == 2
    err = capsys.readouterr().err
    assert "--submit: `sbatch` is not on PATH" in err and "run without --submit" in err


def test_submit_pipes_the_script_to_sbatch(capsys, monkeypatch, tmp_path):
    received = tmp_path / "received.sbatch"
    fake = tmp_path / "sbatch"
    fake.write_text(f"#!/bin/sh\ncat > {received}\necho 'Submitted batch job 99'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert slurm.main(["--config", PHASE1, "--nodes", "2", "--gpus-per-node", "4", "--submit"]) == 0
    assert received.read_text() == slurm.render(slurm.Allocation([PHASE1], nodes=2, gpus_per_node=4))


# -- inside a job --------------------------------------------------------------------------------------------


def test_job_ids_restarts_and_interactive_allocations(no_slurm, monkeypatch):
    assert slurm.job_id() is None and slurm.requeue_target() is None and slurm.restart_count() == 0
    env = {"SLURM_JOB_ID": "120", "SLURM_JOB_NAME": "arrcoc", "SLURM_RESTART_COUNT": "2"}
    assert slurm.job_id(env) == "120" and slurm.requeue_target(env) == "120" and slurm.restart_count(env) == 2
    array = {**env, "SLURM_ARRAY_JOB_ID": "100", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm.job_id(array) == "120" and slurm.requeue_target(array) == "100_3"  # scontrol's name for the task
    interactive = {**env, "SLURM_JOB_NAME": "bash"}  # srun --pty bash: several runs share the job
    assert slurm.job_id(interactive) is None and slurm.restart_count(interactive) == 0


def test_requeue_runs_the_command_with_the_job_and_says_when_it_cannot(tmp_path, caplog):
    log = tmp_path / "args"
    stub = tmp_path / "requeue"
    stub.write_text(f"#!/bin/sh\necho \"$@\" > {log}\n")
    stub.chmod(0o755)
    assert slurm.requeue("77", {slurm.REQUEUE_ENV: f"{stub} --extra"})
    assert log.read_text().split() == ["--extra", "77"]
    with caplog.at_level(logging.WARNING, logger="arrcoc"):
        assert not slurm.requeue("77", {slurm.REQUEUE_ENV: str(tmp_path / "scontrol-missing")})
    (record,) = caplog.records
    assert "SLURM job 77 cannot requeue itself" in record.message and "not on PATH" in record.message
    failing = tmp_path / "fails"
    failing.write_text("#!/bin/sh\necho 'Invalid job id' >&2\nexit 1\n")
    failing.chmod(0o755)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="arrcoc"):
        assert not slurm.requeue("77", {slurm.REQUEUE_ENV: str(failing)})
    assert "exited 1: Invalid job id" in caplog.records[0].message


def test_a_requeued_job_resumes_from_last_unless_told_otherwise(monkeypatch, in_job):
    first = Namespace(ckpt_path=None)
    resume_requeued_job(first)
    assert first.ckpt_path is None  # a first run starts from scratch
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    requeued, given = Namespace(ckpt_path=None), Namespace(ckpt_path="runs/x/checkpoints/step100.ckpt")
    resume_requeued_job(requeued)
    resume_requeued_job(given)
    assert requeued.ckpt_path == "last" and given.ckpt_path == "runs/x/checkpoints/step100.ckpt"


def test_under_slurm_the_csv_logger_keeps_one_version_and_appends(tmp_path, in_job):
    def trainer(version=None):
        logger = CSVLogger(tmp_path, name="logs", version=version)
        t = L.Trainer(logger=logger, enable_progress_bar=False, enable_model_summary=False, devices=1,
                      default_root_dir=tmp_path)
        pin_logger_versions(t)
        return t, logger

    _, first = trainer()
    assert first.version == 4242
    first.log_metrics({"loss": 1.0}, step=0)
    first.save()
    _, requeued = trainer()  # the same job, requeued
    requeued.log_metrics({"loss": 0.5}, step=1)
    requeued.save()
    path = tmp_path / "logs" / "version_4242" / "metrics.csv"
    assert [(r["step"], r["loss"]) for r in csv.DictReader(path.open())] == [("0", "1.0"), ("1", "0.5")]
    _, configured = trainer(version="mine")
    assert configured.version == "mine"  # a configured version is left alone


def test_outside_slurm_the_logger_version_is_lightnings(tmp_path, no_slurm):
    logger = CSVLogger(tmp_path, name="logs")
    pin_logger_versions(L.Trainer(logger=logger, enable_progress_bar=False, devices=1, default_root_dir=tmp_path))
    assert logger.version == 0


# -- a simulated allocation ----------------------------------------------------------------------------------


def _task_env(monkeypatch, procid: int, nodes: int = 2, per_node: int = 2) -> None:
    """srun's variables for task ``procid`` of a ``nodes`` x ``per_node`` allocation."""
    monkeypatch.setenv("MASTER_ADDR", "unset")
    monkeypatch.delenv("MASTER_ADDR")  # SLURMEnvironment sets it from the node list: gone after the test
    for key, value in {"SLURM_JOB_ID": "5150", "SLURM_JOB_NAME": "arrcoc", "SLURM_NTASKS": str(nodes * per_node),
                       "SLURM_NNODES": str(nodes), "SLURM_NTASKS_PER_NODE": str(per_node),
                       "SLURM_NODELIST": "gpu[01-02]", "SLURM_PROCID": str(procid),
                       "SLURM_LOCALID": str(procid % per_node), "SLURM_NODEID": str(procid // per_node)}.items():
        monkeypatch.setenv(key, value)


def test_a_simulated_allocation_gives_each_task_its_rank_and_a_disjoint_slice_of_shards(monkeypatch, no_slurm):
    urls = [f"shards/train-{i:04d}.tar" for i in range(10)]
    slices = []
    for procid in range(4):
        _task_env(monkeypatch, procid)
        assert SLURMEnvironment.detect()
        env = SLURMEnvironment()
        assert (env.global_rank(), env.world_size()) == (procid, 4)
        assert (env.local_rank(), env.node_rank()) == (procid % 2, procid // 2)
        assert env.main_address == "gpu01"
        # What the data module reads its rank from: the Trainer the CLI builds for the script's shape
        trainer = L.Trainer(accelerator="cpu", devices=2, num_nodes=2, logger=False, enable_progress_bar=False,
                            enable_model_summary=False)
        assert isinstance(trainer.strategy.cluster_environment, SLURMEnvironment)
        assert (trainer.global_rank, trainer.world_size) == (procid, 4)
        slices.append(worker_shards(urls, trainer.global_rank, trainer.world_size, 0, 1))
    assert sorted(u for s in slices for u in s) == urls  # every shard, each on one rank
    assert all(slices) and sum(map(len, slices)) == len(urls)


def test_graceful_stop_in_a_slurm_job_requeues_after_the_save(monkeypatch, tmp_path, in_job):
    """The order inside a stop (the subprocess test runs it for real): checkpoint, flush the loggers, requeue."""
    from arrcoc.callbacks.stopping import GracefulStop

    events = []
    monkeypatch.setattr(slurm, "requeue", lambda target: events.append(("requeue", target)) or True)

    class Trainer:
        is_global_zero, global_step, world_size, should_stop = True, 12, 1, False
        checkpoint_callback, checkpoint_callbacks, default_root_dir = None, [], str(tmp_path)
        loggers = [type("Logger", (), {"save": lambda self: events.append(("flush",))})()]

        def save_checkpoint(self, path):
            events.append(("save", Path(path).name))

    stop = GracefulStop()
    stop.received = signal.SIGUSR1
    stop.on_train_batch_end(Trainer(), None)
    assert events == [("save", "last.ckpt"), ("flush",), ("requeue", "4242")] and stop.requeued == "4242"
    events.clear()
    stop = GracefulStop()
    stop.received = signal.SIGTERM  # scancel, or a preemption SLURM requeues itself: never requeued by arrcoc
    stop.on_train_batch_end(Trainer(), None)
    assert events == [("save", "last.ckpt")] and stop.requeued is None
