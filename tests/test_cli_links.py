"""A config names the encoder and the LLM once, under the model; the data module takes them from there."""

from pathlib import Path

import pytest
from jsonargparse import Namespace

from arrcoc.train.cli import _encoder_name, _encoder_pretrained, _llm_name, _llm_trust_remote_code, build_cli

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    return build_cli(["--config", str(ROOT / "configs/phase1.yaml"),
                      "--data.cache_dir", str(tmp_path_factory.mktemp("cache"))], run=False)


def test_data_takes_the_models_encoder_and_llm(cli):
    model, data = cli.model.model, cli.datamodule.hparams
    assert (data.encoder, data.encoder_pretrained) == (model.encoder.name, model.encoder.pretrained) == \
        ("arrcoc-tiny-vit", "shapes")
    assert data.llm == model.llm.name == "arrcoc-tiny-lm" and data.trust_remote_code is False


def test_a_preset_layer_moves_model_and_data_together(cli):
    cfg = cli.parser.parse_args(["--config", str(ROOT / "configs/phase3.yaml"),
                                 "--config", str(ROOT / "configs/presets/eva02-l-qwen2.5-1.5b.yaml")])
    assert cfg.data.encoder == "EVA02-L-14-336" and cfg.data.encoder_pretrained == "merged2b_s6b_b61k"
    assert cfg.data.llm == "Qwen/Qwen2.5-1.5B-Instruct"
    # phase3.yaml sets the tiny LLM's `pretrained: text`; the layer resets it, or the hub LLM would be refused
    llm = cfg.model.init_args.model.init_args.llm.init_args
    assert llm.name == "Qwen/Qwen2.5-1.5B-Instruct" and llm.pretrained is None


def test_the_data_names_cannot_be_set_apart_from_the_model(cli):
    with pytest.raises(SystemExit):
        cli.parser.parse_args(["--config", str(ROOT / "configs/phase1.yaml"), "--data.encoder", "ViT-L-14-336"])


def test_names_given_as_strings_or_defaults():
    as_strings = Namespace(class_path="arrcoc.model.ARRCOCModel",
                           init_args=Namespace(encoder="ViT-L-14-336", llm="Qwen/Qwen2.5-0.5B"))
    assert _encoder_name(as_strings) == "ViT-L-14-336" and _encoder_pretrained(as_strings) is None
    assert _llm_name(as_strings) == "Qwen/Qwen2.5-0.5B" and _llm_trust_remote_code(as_strings) is False
    nested = Namespace(init_args=Namespace(
        encoder=Namespace(class_path="arrcoc.encoder.VisionEncoder", init_args=Namespace(pretrained="None")),
        llm=Namespace(class_path="arrcoc.language_model.LanguageModel",
                      init_args=Namespace(name="my/llm", trust_remote_code=True))))
    assert _encoder_name(nested) == "arrcoc-tiny-vit" and _encoder_pretrained(nested) is None  # a command-line null
    assert _llm_name(nested) == "my/llm" and _llm_trust_remote_code(nested) is True
