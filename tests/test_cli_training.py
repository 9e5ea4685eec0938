"""The training CLI through subprocesses: each phase from its YAML, the init_from hand-off, resume,
predict, --print_config, and errors that name what is wrong."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--data.sample_task.train", "96",
        "--data.sample_task.val", "24", "--data.samples_per_epoch", "96", "--data.num_workers", "0",
        "--data.batch_size", "8", "--data.eval_batch_size", "12", "--trainer.log_every_n_steps", "1"]


def arrcoc(*args, cwd=ROOT, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    out = subprocess.run([sys.executable, "-m", "arrcoc.cli", *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=timeout)
    return out


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Phase 1 -> 2 -> 3 on the sample task, a few steps each, each phase starting from the last."""
    tmp = tmp_path_factory.mktemp("chain")
    cache = ["--data.cache_dir", str(tmp / "cache")]
    runs = {}
    for phase in (1, 2, 3):
        extra = [] if phase == 1 else ["--model.init_args.init_from", str(runs[phase - 1] / "checkpoints/last.ckpt")]
        run_dir = tmp / f"phase{phase}"
        out = arrcoc("fit", "--config", f"configs/phase{phase}.yaml", *TINY, *cache,
                     "--trainer.default_root_dir", str(run_dir), *extra)
        assert out.returncode == 0, out.stderr[-3000:]
        runs[phase] = run_dir
        runs[f"log{phase}"] = out.stderr + out.stdout
    runs["cache"] = tmp / "cache"
    return runs


def test_each_phase_trains_what_it_should(chain):
    p1, p2, p3 = (state(chain[i] / "checkpoints/last.ckpt") for i in (1, 2, 3))
    # phase 2 left the projector and LLM exactly as phase 1 handed them over, and trained the scorers
    assert torch.equal(p2["model.projector.0.weight"], p1["model.projector.0.weight"])
    assert torch.equal(p2["model.llm.model.model.layers.0.mlp.up_proj.weight"],
                       p1["model.llm.model.model.layers.0.mlp.up_proj.weight"])
    assert not torch.equal(p2["model.scorers.2.query.weight"], p1["model.scorers.2.query.weight"])
    # phase 2 trained the budget head, which phase 1 (all tokens) left untouched
    assert not torch.equal(p1["model.allocator.head.1.weight"], p2["model.allocator.head.1.weight"])
    # phase 3 trained both the allocation and the projector
    assert not torch.equal(p3["model.projector.0.weight"], p2["model.projector.0.weight"])
    assert not torch.equal(p3["model.allocator.head.1.weight"], p2["model.allocator.head.1.weight"])
    # phase 3 trained the tiny LLM too (a real pretrained one trains there at pretrained_llm_lr)
    assert not torch.equal(p3["model.llm.model.model.layers.0.mlp.up_proj.weight"],
                           p2["model.llm.model.model.layers.0.mlp.up_proj.weight"])
    # the encoder never changed
    assert all(torch.equal(p3[k], p1[k]) for k in p1 if k.startswith("model.encoder."))
    assert "init_from" in chain["log2"] and "projector loaded" in chain["log2"]


def test_phase1_aligns_with_all_tokens_and_leaves_allocation_alone(chain, tmp_path):
    from arrcoc.train.cli import build_cli

    # the same config and seed rebuild phase 1's starting weights
    init = build_cli(["--config", str(ROOT / "configs/phase1.yaml"), "--data.cache_dir", str(tmp_path)],
                     run=False).model.state_dict()
    p1 = state(chain[1] / "checkpoints/last.ckpt")
    for key in ("model.projector.0.weight", "model.positions.row", "model.llm.model.model.layers.0.mlp.up_proj.weight"):
        assert not torch.equal(p1[key], init[key]), f"{key} should have learned in phase 1"
    for prefix in ("model.encoder.", "model.scorers.", "model.balancer.", "model.allocator.", "model.summary."):
        keys = [k for k in init if k.startswith(prefix)]
        assert keys and all(torch.equal(p1[k], init[k]) for k in keys), f"{prefix} should be untouched"
    rows = list(csv.DictReader(open(next((chain[1] / "logs").rglob("metrics.csv")))))
    tokens = {float(r["train/visual_tokens"]) for r in rows if r.get("train/visual_tokens")}
    assert tokens == {576.0}
    assert "trainable parameters at fit start" in chain["log1"]  # every phase config prints the table


def test_resume_from_another_phase_is_a_clear_error(chain):
    other = chain[2] / "checkpoints/last.ckpt"
    out = arrcoc("fit", "--config", "configs/phase3.yaml", *TINY, "--data.cache_dir", str(chain["cache"]),
                 "--model.init_args.init_from", str(other), "--trainer.default_root_dir", str(chain[3] / "wrong"),
                 "--ckpt_path", str(other))
    assert out.returncode != 0
    assert f"--ckpt_path '{other}' is a checkpoint of arrcoc.phases.relevance.RelevancePhase" in out.stderr
    assert "the config runs arrcoc.phases.finetune.FinetunePhase" in out.stderr and "init_from" in out.stderr


def test_a_phase_is_the_same_however_its_class_path_is_spelled():
    from jsonargparse import Namespace

    from arrcoc.train.cli import _phase_class

    short, full = (Namespace(model=Namespace(class_path=p)) for p in
                   ("arrcoc.phases.RelevancePhase", "arrcoc.phases.relevance.RelevancePhase"))
    assert _phase_class(short) == _phase_class(full) == "arrcoc.phases.relevance.RelevancePhase"


def test_fit_help_lists_the_options():
    out = arrcoc("fit", "--help")
    assert out.returncode == 0, out.stderr[-2000:]
    for option in ("--config", "--ckpt_path", "--model", "--data.batch_size", "--trainer.max_steps"):
        assert option in out.stdout, option
    phase = arrcoc("fit", "--model.help", "arrcoc.phases.FinetunePhase")  # a phase's own options
    assert phase.returncode == 0 and "--model.init_from" in phase.stdout and "--model.lr" in phase.stdout


def test_init_from_loads_the_previous_phase_exactly(chain, tmp_path):
    from arrcoc.model import ARRCOCModel
    from arrcoc.phases import RelevancePhase

    ckpt = chain[1] / "checkpoints/last.ckpt"
    phase = RelevancePhase(ARRCOCModel(), init_from=str(ckpt))
    p1 = state(ckpt)
    for k, v in phase.state_dict().items():
        if k in p1:
            assert torch.equal(v, p1[k]), k
    assert phase.load_report["projector"] == "loaded"


def test_metrics_are_logged(chain):
    rows = list(csv.DictReader(open(next((chain[2] / "logs").rglob("metrics.csv")))))
    keys = set().union(*(r.keys() for r in rows))
    for key in ("train/loss", "train/lm_loss", "train/budget_loss", "train/distill", "train/visual_tokens",
                "budget/target", "val/acc", "val/exact_match", "val/visual_tokens", "val/acc_full_tokens",
                "perf/samples_per_s", "perf/visual_tokens_per_s"):
        assert key in keys, key
    targets = [float(r["budget/target"]) for r in rows if r.get("budget/target")]
    assert targets[0] == 576 and targets == sorted(targets, reverse=True)  # annealing down from 576
    hist = [json.loads(line) for line in next((chain[2] / "logs").rglob("val_budget_histogram.jsonl")).open()]
    assert hist and hist[-1]["step"] == 4 and len(hist[-1]["edges"]) == len(hist[-1]["counts"]) + 1
    assert sum(hist[-1]["counts"]) == 24  # every validation question, once


def test_resume_continues_step_optimizer_and_budget_schedule(chain, tmp_path):
    cache = ["--data.cache_dir", str(chain["cache"])]
    phase1 = tmp_path / "phase1.ckpt"  # a copy, to move away before the resume
    phase1.write_bytes((chain[1] / "checkpoints/last.ckpt").read_bytes())
    init = ["--model.init_args.init_from", str(phase1)]
    every = ["--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
             "--trainer.callbacks.dirpath", str(tmp_path / "every"), "--trainer.callbacks.every_n_train_steps", "1",
             "--trainer.callbacks.save_top_k", "-1", "--trainer.callbacks.filename", "{step}"]
    base = ["fit", "--config", "configs/phase2.yaml", *TINY, *cache, *init]
    full = arrcoc(*base, "--trainer.default_root_dir", str(tmp_path / "full"), *every)
    assert full.returncode == 0, full.stderr[-3000:]
    phase1.unlink()  # the previous phase's file is gone: the checkpoint holds every weight, resume needs nothing else
    resumed = arrcoc(*base, "--trainer.default_root_dir", str(tmp_path / "resumed"),
                     "--ckpt_path", str(tmp_path / "every" / "step=2.ckpt"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "holds every weight: init_from" in resumed.stderr and "is not loaded" in resumed.stderr
    ck = torch.load(tmp_path / "resumed/checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ck["global_step"] == 4
    annealing = [v for k, v in ck["callbacks"].items() if k.startswith("BudgetAnnealing")][0]
    assert annealing["step"] == 3
    rows = list(csv.DictReader(open(next((tmp_path / "resumed" / "logs").rglob("metrics.csv")))))
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps and steps[0] >= 2, "the resumed run continues the step count"
    assert ck["optimizer_states"][0]["state"][0]["step"] == 4  # the optimizer continued, not restarted
    # same data order, same optimizer state, same schedule: the weights match the uninterrupted run
    ref = state(tmp_path / "every" / "step=4.ckpt")
    res = state(tmp_path / "resumed/checkpoints/last.ckpt")
    for key in ("model.scorers.2.query.weight", "model.allocator.head.1.weight", "model.balancer.net.1.weight"):
        assert torch.allclose(res[key], ref[key], atol=1e-6), key


def test_predict_writes_predictions_and_vqa_results(chain, tmp_path):
    out = arrcoc("predict", "--config", "configs/phase3.yaml", *TINY, "--data.cache_dir", str(chain["cache"]),
                 "--model.init_args.init_from", str(chain[3] / "checkpoints/last.ckpt"),
                 "--trainer.default_root_dir", str(tmp_path))
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [yaml.safe_load(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 24 and {"question_id", "question", "prediction", "budget", "visual_tokens"} <= set(rows[0])
    assert all(64 <= r["budget"] <= 400 for r in rows)
    results = yaml.safe_load((tmp_path / "vqa_results.json").read_text())
    assert [r["question_id"] for r in results] == [r["question_id"] for r in rows]
    assert set(results[0]) == {"question_id", "answer"}


@pytest.mark.parametrize("configs", [["configs/phase1.yaml"], ["configs/phase2.yaml"], ["configs/phase3.yaml"],
                                     ["configs/phase1.yaml", "configs/presets/eva02-l-qwen2.5-1.5b.yaml"],
                                     ["configs/phase3.yaml", "configs/presets/eva02-l-qwen2.5-1.5b.yaml",
                                      "configs/presets/deepspeed.yaml"]],
                         ids=lambda c: "+".join(Path(x).stem for x in c))
def test_print_config_round_trips(configs, tmp_path):
    args = [a for c in configs for a in ("--config", c)]
    first = arrcoc("fit", *args, "--print_config")
    assert first.returncode == 0, first.stderr[-3000:]
    # DeepSpeed prints its accelerator detection to stdout when imported on a CPU-only machine
    printed = "\n".join(line for line in first.stdout.splitlines() if not line.startswith("[20"))
    (tmp_path / "c.yaml").write_text(printed)
    second = arrcoc("fit", "--config", str(tmp_path / "c.yaml"), "--print_config")
    assert second.returncode == 0, second.stderr[-3000:]
    again = "\n".join(line for line in second.stdout.splitlines() if not line.startswith("[20"))
    assert yaml.safe_load(again) == yaml.safe_load(printed)


def test_interpolation_follows_overrides():
    out = arrcoc("fit", "--config", "configs/phase1.yaml", "--trainer.default_root_dir", "/x/y", "--print_config")
    cfg = yaml.safe_load(out.stdout)
    assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == "/x/y/checkpoints"
    assert cfg["trainer"]["logger"]["init_args"]["save_dir"] == "/x/y"


def test_errors_name_the_problem(tmp_path):
    bad_key = arrcoc("fit", "--config", "configs/phase1.yaml", "--model.init_args.lrr", "3")
    assert bad_key.returncode != 0 and "lrr" in bad_key.stderr
    bad_type = arrcoc("fit", "--config", "configs/phase1.yaml", "--data.batch_size", "many")
    assert bad_type.returncode != 0 and "data.batch_size" in bad_type.stderr
    no_ckpt = arrcoc("fit", "--config", "configs/phase1.yaml", "--ckpt_path", str(tmp_path / "none.ckpt"))
    assert no_ckpt.returncode != 0 and "none.ckpt" in no_ckpt.stderr
    a_dir = arrcoc("fit", "--config", "configs/phase1.yaml", "--ckpt_path", str(tmp_path))
    assert a_dir.returncode != 0 and "is a directory but not a DeepSpeed checkpoint" in a_dir.stderr
    no_init = arrcoc("fit", "--config", "configs/phase2.yaml", "--model.init_args.init_from", str(tmp_path / "x.ckpt"))
    assert no_init.returncode != 0 and "init_from=" in no_init.stderr and "x.ckpt" in no_init.stderr
    no_data = arrcoc("fit", "--config", "configs/phase1.yaml", "--data.sample_task", "null", "--data.train",
                     str(tmp_path / "missing-shards"), "--trainer.max_steps", "1")
    assert no_data.returncode != 0 and "missing-shards" in no_data.stderr


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
