"""The shipped DeepSpeed layers (configs/deepspeed/*.yaml, configs/presets/deepspeed.yaml) build the strategy they
say, through the training CLI on top of phase 3, and the phase they run keeps the frozen encoder out of the
optimizer. Construction only: a real ZeRO run needs CUDA (the GPU test at the end)."""

from pathlib import Path

import pytest
import yaml

from arrcoc.callbacks import DeepSpeedSharding
from arrcoc.phases import FinetunePhase
from conftest import ROOT

pytest.importorskip("deepspeed", reason="needs the deepspeed package (the dev extra installs it)")

LAYERS = {  # layer -> (ZeRO stage, optimizer state offloaded, weights offloaded)
    "configs/deepspeed/zero2.yaml": (2, False, False),
    "configs/deepspeed/zero3.yaml": (3, False, False),
    "configs/deepspeed/zero3_offload.yaml": (3, True, True),
    "configs/presets/deepspeed.yaml": (2, False, False),  # kept for existing commands: the same as zero2.yaml
}


def test_every_shipped_deepspeed_layer_is_tested():
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "deepspeed").glob("*.yaml")}
    assert shipped | {"configs/presets/deepspeed.yaml"} == set(LAYERS)


def build(layer: str, tmp_path: Path, *extra: str):
    """The CLI's phase and trainer for phase 3 + ``layer`` (the accelerator set to CPU: this machine has no GPU,
    and the strategy is only constructed, never run)."""
    from arrcoc.train.cli import build_cli

    return build_cli(["--config", str(ROOT / "configs/phase3.yaml"), "--config", str(ROOT / layer),
                      "--data.cache_dir", str(tmp_path / "cache"), "--trainer.default_root_dir", str(tmp_path),
                      "--model.init_args.init_from", "null", "--trainer.accelerator", "cpu", *extra], run=False)


@pytest.mark.parametrize("layer", sorted(LAYERS), ids=lambda p: Path(p).stem)
def test_a_strategy_is_built_from_each_layer(layer, tmp_path):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    stage, offload_optimizer, offload_params = LAYERS[layer]
    shipped = yaml.safe_load((ROOT / layer).read_text())["trainer"]
    assert shipped["accelerator"] == "gpu" and shipped["precision"] == "bf16-mixed"
    cli = build(layer, tmp_path, "--data.batch_size", "12")
    strategy = cli.trainer.strategy
    assert isinstance(strategy, DeepSpeedStrategy) and isinstance(cli.model, FinetunePhase)
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == stage and strategy.zero_stage_3 == (stage == 3)
    assert (zero.get("offload_optimizer", {}).get("device") == "cpu") == offload_optimizer
    assert (zero.get("offload_param", {}).get("device") == "cpu") == offload_params
    assert strategy.exclude_frozen_parameters  # frozen weights stay out of every ZeRO checkpoint
    assert strategy.config["train_micro_batch_size_per_gpu"] == 12  # follows data.batch_size
    # ZeRO-3 layers defer the LLM to configure_model (built there split across the GPUs); ZeRO-2 builds it whole
    assert cli.model.model.built == (stage != 3)
    cli.model.configure_model()
    assert cli.model.model.built and cli.model.model.llm.hidden_size == 128
    # DeepSpeedSharding (phase3.yaml) lets DeepSpeed step the phases' torch AdamW where the optimizer is offloaded
    cb = next(c for c in cli.trainer.callbacks if isinstance(c, DeepSpeedSharding))
    cb.setup(cli.trainer, cli.model, "fit")
    assert strategy.config.get("zero_force_ds_cpu_optimizer", True) == (not offload_optimizer)


@pytest.mark.parametrize("layer", ["configs/deepspeed/zero2.yaml", "configs/deepspeed/zero3_offload.yaml"],
                         ids=lambda p: Path(p).stem)
def test_the_frozen_encoder_stays_out_of_the_optimizer(layer, tmp_path):
    phase = build(layer, tmp_path).model
    phase.configure_model()  # as Lightning does before configure_optimizers (ZeRO-3 layers build the LLM there)
    optimizer = phase.configure_optimizers()
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    encoder = list(phase.model.encoder.parameters())
    assert encoder and not any(id(p) in in_optimizer for p in encoder)
    assert all(p.requires_grad for g in optimizer.param_groups for p in g["params"])
    assert {g["name"] for g in optimizer.param_groups} == set(phase.trainable_components())


def test_offload_keeps_an_explicit_choice():
    from arrcoc.callbacks.deepspeed import allow_torch_optimizer_offload, deepspeed_strategy

    assert not allow_torch_optimizer_offload(deepspeed_strategy(stage=2))
    strategy = deepspeed_strategy(stage=3, offload_optimizer=True)
    strategy.config["zero_force_ds_cpu_optimizer"] = True  # someone wants DeepSpeed's check: left alone
    assert allow_torch_optimizer_offload(strategy) and strategy.config["zero_force_ds_cpu_optimizer"] is True


@pytest.mark.parametrize("layer", sorted(LAYERS), ids=lambda p: Path(p).stem)
def test_print_config_round_trips_with_each_layer(layer, tmp_path, capsys):
    from arrcoc.cli import main

    def printed(*configs: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as stop:
            main(["fit", *(a for c in configs for a in ("--config", c)), "--print_config"])
        assert stop.value.code in (0, None)
        out = capsys.readouterr().out
        return "\n".join(line for line in out.splitlines() if not line.startswith("[20"))  # DeepSpeed's banner

    first = printed(str(ROOT / "configs/phase3.yaml"), str(ROOT / layer))
    (tmp_path / "c.yaml").write_text(first)
    assert yaml.safe_load(printed(str(tmp_path / "c.yaml"))) == yaml.safe_load(first)
