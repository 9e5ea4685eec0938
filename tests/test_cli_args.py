"""The training CLI's arguments, in-process (no training): help, --print_config, interpolation, errors that
name the problem, nulls in nested components, and how a phase's class path is spelled."""

from pathlib import Path

import pytest
import yaml

from arrcoc.cli import main
from conftest import ROOT

CONFIGS = [["configs/phase1.yaml"], ["configs/phase2.yaml"], ["configs/phase3.yaml"],
           ["configs/phase1.yaml", "configs/presets/eva02-l-qwen2.5-1.5b.yaml"],
           ["configs/phase3.yaml", "configs/ablations/full-tokens.yaml"],
           ["configs/phase3.yaml", "configs/presets/eva02-l-qwen2.5-1.5b.yaml", "configs/presets/deepspeed.yaml"]]


def run(capsys, *args) -> tuple[int, str, str]:
    """``arrcoc ARGS`` in this process -> (exit code, stdout, stderr); an exception counts as exit 1 with its
    message on stderr (a subprocess would print it there)."""
    capsys.readouterr()
    try:
        code, error = main(list(args)), ""
    except SystemExit as stop:
        code, error = int(stop.code or 0), ""
    except Exception as err:  # noqa: BLE001 - the message is what is checked
        code, error = 1, f"{type(err).__name__}: {err}"
    out, err = capsys.readouterr()
    # DeepSpeed prints its accelerator detection to stdout when first imported on a CPU-only machine
    out = "\n".join(line for line in out.splitlines() if not line.startswith("[20"))
    return code, out, err + error


def config(name: str) -> str:
    return str(ROOT / name)


def test_fit_help_lists_the_options(capsys):
    code, out, err = run(capsys, "fit", "--help")
    assert code == 0, err[-2000:]
    for option in ("--config", "--ckpt_path", "--model", "--data.batch_size", "--trainer.max_steps"):
        assert option in out, option
    code, out, _ = run(capsys, "fit", "--model.help", "arrcoc.phases.FinetunePhase")  # a phase's own options
    assert code == 0 and "--model.init_from" in out and "--model.lr" in out


@pytest.mark.parametrize("configs", CONFIGS, ids=lambda c: "+".join(Path(x).stem for x in c))
def test_print_config_round_trips(capsys, configs, tmp_path):
    code, first, err = run(capsys, "fit", *(a for c in configs for a in ("--config", config(c))), "--print_config")
    assert code == 0, err[-3000:]
    (tmp_path / "c.yaml").write_text(first)
    code, second, err = run(capsys, "fit", "--config", str(tmp_path / "c.yaml"), "--print_config")
    assert code == 0, err[-3000:]
    assert yaml.safe_load(second) == yaml.safe_load(first)


def test_the_full_token_layer_trains_phase_3_with_every_patch_in_its_own_directory(capsys):
    code, out, err = run(capsys, "fit", "--config", config("configs/phase3.yaml"), "--config",
                         config("configs/ablations/full-tokens.yaml"), "--print_config")
    assert code == 0, err[-3000:]
    cfg = yaml.safe_load(out)
    assert cfg["model"]["class_path"].endswith("FinetunePhase") and cfg["model"]["init_args"]["full_tokens"] is True
    phase3 = yaml.safe_load((ROOT / "configs/phase3.yaml").read_text())
    assert cfg["trainer"]["max_steps"] == phase3["trainer"]["max_steps"]  # the same steps as the allocated run
    assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "runs/phase3-full/checkpoints"


def test_interpolation_follows_overrides(capsys):
    code, out, err = run(capsys, "fit", "--config", config("configs/phase1.yaml"), "--trainer.default_root_dir", "/x/y",
                         "--print_config")
    assert code == 0, err[-3000:]
    cfg = yaml.safe_load(out)
    assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "/x/y/checkpoints"
    assert [lg["init_args"]["save_dir"] for lg in cfg["trainer"]["logger"]] == ["/x/y", "/x/y"]  # TensorBoard, CSV


def test_errors_name_the_problem(capsys, tmp_path):
    phase1, phase2 = config("configs/phase1.yaml"), config("configs/phase2.yaml")
    where = ["--trainer.default_root_dir", str(tmp_path / "run"), "--data.cache_dir", str(tmp_path / "cache")]
    code, _, err = run(capsys, "fit", "--config", phase1, "--model.init_args.lrr", "3")
    assert code != 0 and "lrr" in err
    code, _, err = run(capsys, "fit", "--config", phase1, "--data.batch_size", "many")
    assert code != 0 and "data.batch_size" in err
    code, _, err = run(capsys, "fit", "--config", phase1, *where, "--ckpt_path", str(tmp_path / "none.ckpt"))
    assert code != 0 and "none.ckpt" in err
    code, _, err = run(capsys, "fit", "--config", phase1, *where, "--ckpt_path", str(tmp_path))
    assert code != 0 and "is a directory but not a DeepSpeed checkpoint" in err
    missing = str(tmp_path / "x.ckpt")
    code, _, err = run(capsys, "fit", "--config", phase2, *where, "--model.init_args.init_from", missing)
    assert code != 0 and "init_from=" in err and "x.ckpt" in err
    code, _, err = run(capsys, "fit", "--config", phase1, *where, "--data.sample_task", "null", "--data.train",
                       str(tmp_path / "missing-shards"), "--trainer.max_steps", "1")
    assert code != 0 and "missing-shards" in err


def test_a_phase_is_the_same_however_its_class_path_is_spelled():
    from jsonargparse import Namespace

    from arrcoc.train.cli import _phase_class

    short, full = (Namespace(model=Namespace(class_path=p)) for p in
                   ("arrcoc.phases.RelevancePhase", "arrcoc.phases.relevance.RelevancePhase"))
    assert _phase_class(short) == _phase_class(full) == "arrcoc.phases.relevance.RelevancePhase"


def test_null_on_the_command_line_reaches_nested_components(tmp_path):
    """jsonargparse turns `null` in a subclass nested in a subclass into the string "None"; the CLI gives
    back None where the parameter admits it, for every component (here both towers start random)."""
    from arrcoc.train.cli import build_cli

    prefix = "--model.init_args.model"
    cli = build_cli(["--config", str(ROOT / "configs/phase1.yaml"), "--data.cache_dir", str(tmp_path),
                     f"{prefix}.llm.init_args.pretrained", "null", f"{prefix}.encoder.init_args.pretrained", "null"],
                    run=False)
    model = cli.model.model
    assert model.llm.pretrained is None and model.encoder.pretrained is None
    parsed = cli.config["model"]["init_args"]["model"]["init_args"]  # what config.yaml of the run records
    assert parsed["llm"]["init_args"]["pretrained"] is None and parsed["encoder"]["init_args"]["pretrained"] is None
    # Without the override both load arrcoc's shipped weights, so the encoder differs from random init.
    shipped = build_cli(["--config", str(ROOT / "configs/phase1.yaml"), "--data.cache_dir", str(tmp_path)],
                        run=False).model.model
    assert shipped.encoder.pretrained == "shapes" and shipped.llm.pretrained == "text"


def test_restore_nulls_only_where_none_is_valid():
    from jsonargparse import Namespace

    from arrcoc.train.cli import restore_nulls

    cfg = Namespace(model=Namespace(class_path="arrcoc.language_model.LanguageModel", init_args=Namespace(
        name="None", pretrained="None", dtype="bfloat16")), other=[Namespace(
            class_path="arrcoc.encoder.VisionEncoder", init_args=Namespace(pretrained="None"))])
    restore_nulls(cfg)
    assert cfg.model.init_args.pretrained is None  # str | None: the null the user meant
    assert cfg.model.init_args.name == "None"  # str only: left for the class to reject, as parsed
    assert cfg.model.init_args.dtype == "bfloat16"
    assert cfg.other[0].init_args.pretrained is None  # nodes inside lists too
