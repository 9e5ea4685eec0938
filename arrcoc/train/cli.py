"""``arrcoc fit|validate|test|predict --config FILE [--config FILE2] [--section.key value ...]``.

A LightningCLI over the phase modules and the VQA DataModule. Configs are merged in order, then the
command line; ``${...}`` interpolation is resolved after everything is merged (omegaconf+), so an
override reaches every key that interpolates it.
"""

from __future__ import annotations

import logging
import os

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from arrcoc.data.datamodule import VQADataModule
from arrcoc.phases import PhaseModule


class ARRCOCCLI(LightningCLI):
    """LightningCLI with arrcoc's defaults: phases by ``class_path``, configs overwritten on requeue."""

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(self.config.subcommand) if self.config.get("subcommand") else self.config
        ckpt = cfg.get("ckpt_path") if cfg is not None else None
        if ckpt and ckpt not in ("last", "best", "hpc", "registry") and not os.path.isfile(ckpt):
            raise FileNotFoundError(f"--ckpt_path {ckpt!r} does not exist")


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
    """Run the CLI on ``argv`` (a list such as ``["fit", "--config", ...]``; ``None``: the command line)."""
    logger = logging.getLogger("arrcoc")
    if not logger.handlers:  # arrcoc's own reports (init_from, parameter table, skips) reach the console
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[arrcoc] %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    build_cli(argv)
    return 0
