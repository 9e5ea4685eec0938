"""Every shipped YAML parses against the code, so configs never rot."""

from pathlib import Path

import pytest
import yaml

from arrcoc.config import build_model, model_parser
from arrcoc.model import DEFAULT_SCORERS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted((CONFIG_DIR / "model").glob("*.yaml"))
DATA_CONFIGS = sorted((CONFIG_DIR / "data").glob("*.yaml"))


def test_configs_exist():
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "eva02-l-qwen2.5-1.5b.yaml"}
    assert {p.name for p in DATA_CONFIGS} >= {"sample-task.yaml", "vqav2.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses(path):
    cfg = model_parser().parse_object(yaml.safe_load(path.read_text()))
    assert cfg.model.min_tokens <= cfg.model.target_tokens <= cfg.model.max_tokens


def test_real_preset_names_the_real_models():
    text = (CONFIG_DIR / "model" / "eva02-l-qwen2.5-1.5b.yaml").read_text()
    cfg = model_parser().parse_object(yaml.safe_load(text))
    assert cfg.model.encoder.init_args.name == "EVA02-L-14-336"
    assert cfg.model.encoder.init_args.pretrained == "merged2b_s6b_b61k"
    assert cfg.model.llm.init_args.name == "Qwen/Qwen2.5-1.5B-Instruct"
    assert not cfg.model.llm.init_args.trust_remote_code


def test_tiny_config_builds_the_default_model():
    model = build_model(CONFIG_DIR / "model" / "tiny.yaml")
    assert model.encoder.name == "arrcoc-tiny-vit" and model.llm.name == "arrcoc-tiny-lm"
    assert tuple(model.scorer_names) == DEFAULT_SCORERS and model.allocator.bounds.tolist() == [64, 400]


def data_parser():
    from jsonargparse import ArgumentParser

    from arrcoc.data.datamodule import VQADataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(VQADataModule, "data")
    return parser


@pytest.mark.parametrize("path", DATA_CONFIGS, ids=lambda p: p.name)
def test_data_config_parses(path):
    cfg = data_parser().parse_object(yaml.safe_load(path.read_text()))
    assert cfg.data.batch_size >= 1


def test_vqav2_data_config_sources():
    cfg = data_parser().parse_object(yaml.safe_load((CONFIG_DIR / "data" / "vqav2.yaml").read_text()))
    assert cfg.data.train[0].path == "/data/vqav2/train" and cfg.data.train[0].weight == 1.0
    assert cfg.data.val == "/data/vqav2/val"


def test_sample_task_data_config_builds(tmp_path):
    cfg = data_parser().parse_object(yaml.safe_load((CONFIG_DIR / "data" / "sample-task.yaml").read_text()))
    cfg.data.cache_dir = str(tmp_path)
    cfg.data.sample_task.train, cfg.data.sample_task.val = 16, 4
    dm = data_parser().instantiate(cfg).data
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_dataloader()) == 1 and dm.sources["val"][0].total == 4
