"""``arrcoc fit|validate|test|predict --config FILE [--config FILE2] [--section.key value ...]``.

A LightningCLI over the phase modules and the VQA DataModule. Configs are merged in order, then the
command line; ``${...}`` interpolation is resolved after everything is merged (omegaconf+), so an
override reaches every key that interpolates it.
"""

from __future__ import annotations

import csv
import importlib
import inspect
import logging
import os
import sys
import typing
import warnings
import zipfile
from typing import Any

import yaml
from jsonargparse import Namespace, set_parsing_settings
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

import arrcoc
import arrcoc.callbacks
import arrcoc.data
from arrcoc import slurm
from arrcoc.callbacks.stopping import AtomicCheckpointIO, GracefulStop, disable_lightning_requeue, stopped_by_signal
from arrcoc.console import console_logging, quiet_libraries
from arrcoc.data.datamodule import VQADataModule
from arrcoc.phases import PhaseModule
from arrcoc.presets import TINY_ENCODER, TINY_LM


class ARRCOCCLI(LightningCLI):
    """LightningCLI with arrcoc's defaults: phases by ``class_path``, configs overwritten on requeue, and the
    data's encoder and LLM names taken from the model (a config names them once; they cannot disagree)."""

    def add_arguments_to_parser(self, parser) -> None:
        # The data path needs the encoder's preprocessing and the LLM's tokenizer, never the models: link
        # the names (apply_on="parse": the data module is built with them, before any model exists).
        for target, compute in (("data.encoder", _encoder_name), ("data.encoder_pretrained", _encoder_pretrained),
                                ("data.llm", _llm_name), ("data.trust_remote_code", _llm_trust_remote_code)):
            parser.link_arguments("model.init_args.model", target, compute_fn=compute, apply_on="parse")

    def instantiate_trainer(self, **kwargs: Any):
        """The configured Trainer, plus what every arrcoc run gets: :class:`GracefulStop` (SIGTERM/SIGUSR1 save a
        checkpoint, then exit 128 + signal) and checkpoints written atomically beside their destination
        (:class:`AtomicCheckpointIO`; DeepSpeed writes its own directories). The CSV and TensorBoard loggers share
        one version (:func:`pin_logger_versions`): inside a SLURM job, one per job, which its requeues continue;
        there Lightning's own auto-requeue is off (GracefulStop requeues from the training loop)."""
        trainer = super().instantiate_trainer(**kwargs)
        disable_lightning_requeue(trainer)  # SIGUSR1 inside SLURM: GracefulStop's (fit) or the default (others)
        pin_logger_versions(trainer)
        if not any(isinstance(cb, GracefulStop) for cb in trainer.callbacks):
            trainer.callbacks.append(GracefulStop())
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        self._configured_phase = _phase_class(self._subcommand_config())

    def _subcommand_config(self):
        return self.config.get(self.config.subcommand) if self.config.get("subcommand") else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._subcommand_config()
        if self.config.get("subcommand") == "fit":
            _check_writable(cfg.trainer.get("default_root_dir") or os.getcwd())
            resume_requeued_job(cfg)
        # LightningCLI re-reads the model's hyperparameters from --ckpt_path, class included: resuming
        # another phase's checkpoint would silently turn this run into that phase.
        resumed = _phase_class(cfg)
        if resumed != self._configured_phase:
            raise ValueError(
                f"--ckpt_path {cfg.get('ckpt_path')!r} is a checkpoint of {resumed}; the config runs "
                f"{self._configured_phase}. --ckpt_path resumes the same phase; to start this phase from another "
                "phase's weights, give it as --model.init_args.init_from")
        restore_nulls(cfg)
        ckpt = cfg.get("ckpt_path") if cfg is not None else None
        # A file, or a DeepSpeed checkpoint (a directory); Lightning's names are resolved by the Trainer.
        if ckpt and ckpt not in ("last", "best", "hpc", "registry"):
            if not os.path.exists(ckpt):
                raise FileNotFoundError(f"--ckpt_path {ckpt!r} does not exist (give a checkpoint file, a DeepSpeed "
                                        "checkpoint directory, or last/best)")
            if os.path.isdir(ckpt) and not os.path.exists(os.path.join(ckpt, "latest")):
                raise FileNotFoundError(f"--ckpt_path {ckpt!r} is a directory but not a DeepSpeed checkpoint (it has "
                                        "no 'latest' file); give a checkpoint file such as .../last.ckpt")
            init_args = cfg.model.get("init_args") if isinstance(cfg.get("model"), Namespace) else None
            if os.path.isfile(ckpt) and init_args is not None and init_args.get("init_from"):
                # A checkpoint file holds every weight, so init_from would be loaded only to be overwritten
                # (and a moved previous-phase directory would stop the resume). A DeepSpeed directory lacks
                # the frozen weights: there init_from still provides them.
                logging.getLogger("arrcoc.train").info(
                    "resuming from %s, which holds every weight: init_from %s is not loaded", ckpt,
                    init_args.init_from)
                init_args.init_from = None


def resume_requeued_job(cfg: Namespace) -> None:
    """A requeued SLURM job (``SLURM_RESTART_COUNT`` > 0) given no ``--ckpt_path`` resumes from the run's last
    checkpoint (``ckpt_path="last"``: the newest ``last*.ckpt`` of its ModelCheckpoint; none yet: from the start).

    A requeue reruns the batch script's command unchanged, so it cannot name the checkpoint itself: the one that
    :class:`GracefulStop` saved at SIGUSR1 before requeueing, that it saved at SIGTERM when SLURM preempted and
    requeued the job, or the last periodic one after a node failure. A first run (count 0) and a hand resubmission
    never resume on their own: they give ``--ckpt_path``."""
    if cfg.get("ckpt_path") is not None or slurm.restart_count() == 0:
        return
    cfg.ckpt_path = "last"
    logging.getLogger("arrcoc.train").info("SLURM job %s, restart %d: resuming from the run's last checkpoint",
                                           slurm.job_id(), slurm.restart_count())


def pin_logger_versions(trainer: Any) -> None:
    """Give the CSV and TensorBoard loggers without a configured version one version between them, so that they
    write into one ``version_<N>`` directory (the phase configs have both; each would otherwise count the
    directories on its own, and the second would find the first's and take the next number). Inside a SLURM batch
    job that version is ``<job id>``, which every requeue of the job shares (a new version per requeue would cut the
    curves), and a requeue's CSV logger appends to the job's ``metrics.csv`` (Lightning's writer deletes an existing
    one). Elsewhere it is the first logger's next free number.

    Sets the loggers' ``_version``, which Lightning reads when the run first asks for the version (after this)."""
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [lg for lg in trainer.loggers
               if isinstance(lg, CSVLogger | TensorBoardLogger) and getattr(lg, "_version", None) is None]
    if not loggers:
        return
    job = slurm.job_id()
    if job is not None:
        version: int | str = int(job) if job.isdigit() else job
    elif len(loggers) > 1 and len({os.path.abspath(lg.root_dir) for lg in loggers}) == 1:
        version = loggers[0].version  # counted once, before either logger has made its directory
    else:
        return
    for logger in loggers:
        logger._version = version
        if job is not None and isinstance(logger, CSVLogger) and trainer.is_global_zero:
            _keep_csv_metrics(logger)


def _keep_csv_metrics(logger: Any) -> None:
    """Let ``logger`` append to the ``metrics.csv`` already in its directory: the writer is created with the file
    set aside (Lightning's writer deletes an existing one), then the file goes back and its columns are known."""
    path = os.path.join(logger.log_dir, "metrics.csv")
    if not os.path.isfile(path):
        return
    aside = f"{path}.requeued"
    os.replace(path, aside)
    try:
        with warnings.catch_warnings():  # "previous log files ... will be deleted": not this one
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            writer = logger.experiment
    finally:
        os.replace(aside, path)
    with open(path, encoding="utf-8", newline="") as f:
        writer.metrics_keys = next(csv.reader(f), [])  # in the file's order: rows are appended under this header


def _component(model: Any, name: str) -> tuple[str | None, Any]:
    """(name given as a string, init_args given as a class) of ``ARRCOCModel``'s ``encoder``/``llm`` argument."""
    init_args = model.get("init_args") if isinstance(model, Namespace) else None
    value = init_args.get(name) if isinstance(init_args, Namespace) else None
    if isinstance(value, str):
        return value, Namespace()
    args = value.get("init_args") if isinstance(value, Namespace) else None
    return None, args if isinstance(args, Namespace) else Namespace()


def _encoder_name(model: Any) -> str:
    given, args = _component(model, "encoder")
    return given or args.get("name") or TINY_ENCODER


def _encoder_pretrained(model: Any) -> str | None:
    tag = _component(model, "encoder")[1].get("pretrained")
    return None if tag == "None" else tag  # a command-line null, before restore_nulls gives it back


def _llm_name(model: Any) -> str:
    given, args = _component(model, "llm")
    return given or args.get("name") or TINY_LM


def _llm_trust_remote_code(model: Any) -> bool:
    return bool(_component(model, "llm")[1].get("trust_remote_code", False))


def _phase_class(cfg: Any) -> str | None:
    """The model's class as ``module.Name`` of where it is defined (``arrcoc.phases.RelevancePhase`` and
    ``arrcoc.phases.relevance.RelevancePhase`` are one phase)."""
    model = cfg.get("model") if cfg is not None else None
    path = model.get("class_path") if isinstance(model, Namespace | dict) else None
    if not isinstance(path, str):
        return None
    cls = _import(path)
    return path if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def restore_nulls(node: Any) -> None:
    """Give back ``None`` where the parser turned a ``null`` into the string ``"None"``.

    jsonargparse (4.53) parses ``--model.init_args.model.llm.init_args.pretrained null`` (a subclass
    nested in a subclass) to the string ``"None"``. Walks the config in place and, in each
    ``class_path``/``init_args`` node, resets a ``"None"`` to ``None`` where that parameter admits
    ``None`` (an ``Optional`` annotation or a ``None`` default); everything else is left as parsed.
    """
    if isinstance(node, list):
        for item in node:
            restore_nulls(item)
        return
    if not isinstance(node, Namespace | dict):
        return
    fields = vars(node) if isinstance(node, Namespace) else node
    init_args = fields.get("init_args")
    if isinstance(fields.get("class_path"), str) and isinstance(init_args, Namespace | dict):
        params = _parameters(fields["class_path"])
        args = vars(init_args) if isinstance(init_args, Namespace) else init_args
        for key, value in args.items():
            if value == "None" and key in params and _admits_none(params[key]):
                args[key] = None
    for value in fields.values():
        restore_nulls(value)


def _import(class_path: str) -> Any | None:
    """The object a dotted ``class_path`` names, or None where it cannot be imported."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _parameters(class_path: str) -> dict[str, inspect.Parameter]:
    cls = _import(class_path)
    try:
        return {} if cls is None else dict(inspect.signature(cls).parameters)
    except (ValueError, TypeError):  # no signature to read
        return {}


def _admits_none(param: inspect.Parameter) -> bool:
    hint = param.annotation
    if isinstance(hint, str):  # postponed annotation, e.g. "str | None"
        return param.default is None or "None" in hint or "Optional" in hint
    return param.default is None or hint is None or type(None) in typing.get_args(hint)


def build_cli(argv: list[str], run: bool = True) -> ARRCOCCLI:
    """The CLI object; with ``run=False`` it only parses and instantiates (``cli.model``, ``cli.datamodule``)."""
    set_parsing_settings(omegaconf_absolute_to_relative_paths=True)
    return ARRCOCCLI(
        model_class=PhaseModule,
        subclass_mode_model=True,
        datamodule_class=VQADataModule,
        parser_kwargs={"parser_mode": "omegaconf+"},
        save_config_kwargs={"overwrite": True},  # a SLURM requeue re-runs in the same log dir
        seed_everything_default=0,
        args=argv,
        run=run,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (a list such as ``["fit", "--config", ...]``; ``None``: the command line).

    A mistake in what the user gave (a bad value, a missing or broken file) is printed as its one sentence, with
    the configs it came from, and exits 2; ``--verbose`` shows the traceback too."""
    console_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    quiet_libraries(verbose)
    argv = [a for a in argv if a != "--verbose"]
    command = argv[0] if argv else "fit"
    try:
        for path in _config_paths(argv):
            _check_yaml(path)
        _check_ckpt_arg(argv)  # LightningCLI reads --ckpt_path's hyperparameters while parsing: check it first
        build_cli(argv)
    except SIGTERMException:  # Lightning's own stop after SIGTERM; GracefulStop saved the checkpoint before it
        if stopped_by_signal() is None:
            raise
    except Exception as err:  # noqa: BLE001 - a user's mistake gets its sentence; anything else its traceback
        cause = user_error(err)
        if cause is None or verbose:
            raise
        configs = _config_paths(argv)
        where = f" (configs: {', '.join(configs)})" if configs else ""
        print(f"arrcoc {command}: error: {cause}{where}\n(--verbose shows the traceback)", file=sys.stderr)
        return 2
    signum = stopped_by_signal()
    return 0 if signum is None else 128 + signum


#: what arrcoc raises for a user's mistake (a bad value, a missing, unwritable or broken file, data with nothing
#: usable); raised by arrcoc's own code, these carry a sentence written for the user
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError,
               RuntimeError)
_OWN_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                  for m in (arrcoc, arrcoc.data, arrcoc.callbacks))


def user_error(err: BaseException) -> BaseException | None:
    """The first exception in ``err``'s chain (from the root cause out) that arrcoc's own code raised for a
    user's mistake (:data:`USER_ERRORS`); None for anything else (a bug, or a library's own failure).
    jsonargparse wraps a class's ``ValueError`` in its own, with the whole configuration dumped after it."""
    chain: list[BaseException] = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for exc in reversed(chain):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if isinstance(exc, USER_ERRORS) and tb is not None and tb.tb_frame.f_code.co_filename.startswith(_OWN_DIRS):
            return exc
    return None


def _config_paths(argv: list[str]) -> list[str]:
    """The ``--config``/``-c`` files on a command line."""
    out = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif arg.startswith("--config="):
            out.append(arg.split("=", 1)[1])
    return out


def _check_yaml(path: str) -> None:
    """A config that is not valid YAML is named, with where it breaks (jsonargparse says only that a config
    failed to parse)."""
    if not os.path.isfile(path):
        return  # LightningCLI says it does not exist
    try:
        with open(path, encoding="utf-8") as f:
            yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"--config {path} is not valid YAML{at}: {problem}") from None


def _check_ckpt_arg(argv: list[str]) -> None:
    """A ``--ckpt_path`` file that is empty or not a torch.save archive, named (torch says ``EOFError`` or a zip
    error and not which file)."""
    for i, arg in enumerate(argv):
        ckpt = argv[i + 1] if arg == "--ckpt_path" and i + 1 < len(argv) else (
            arg.split("=", 1)[1] if arg.startswith("--ckpt_path=") else None)
        if ckpt and os.path.isfile(ckpt) and not zipfile.is_zipfile(ckpt):  # torch.save writes a zip archive
            raise ValueError(f"--ckpt_path {ckpt!r} is not a readable checkpoint ({os.path.getsize(ckpt)} bytes, not a "
                             "torch.save archive: a save that was cut off, or another file); give a complete one, "
                             "such as the run's checkpoints/last.ckpt")


def _check_writable(directory: str) -> None:
    """The run directory can take files (checked before any work, so a read-only place fails in one line)."""
    path = os.path.abspath(directory)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".arrcoc-write-test-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise PermissionError(f"trainer.default_root_dir={directory!r} is not writable ({err.strerror or err}); "
                              "give a directory this run can write checkpoints and logs to") from None
