"""Build an :class:`~arrcoc.model.ARRCOCModel` from YAML, resolved against its typed signature.

The same jsonargparse machinery the training CLI uses: built-in scorers by name, user classes by
``class_path``/``init_args``, unknown keys and wrong types rejected with the key named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser

from arrcoc.model import ARRCOCModel


def model_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="arrcoc-model", exit_on_error=False)
    parser.add_class_arguments(ARRCOCModel, "model", instantiate=True)
    return parser


def build_model(config: str | Path | dict[str, Any]) -> ARRCOCModel:
    """``config``: a YAML file path or a dict, either with a top-level ``model:`` section."""
    if isinstance(config, (str, Path)):
        config = yaml.safe_load(Path(config).read_text()) or {}
    if "model" not in config:
        raise ValueError(f"config has no 'model' section; top-level keys: {sorted(config)}")
    parser = model_parser()
    cfg = parser.parse_object({"model": config["model"]})
    return parser.instantiate(cfg).model
