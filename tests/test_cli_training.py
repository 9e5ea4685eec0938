"""The training CLI through subprocesses, on the phase 1 -> 2 -> 3 chain (``chain`` in conftest.py): what
each phase trains, the init_from hand-off, resume, predict, metrics. Argument checks that need no
training run in-process in test_cli_args.py."""

import csv
import json

import pytest
import torch
import yaml

from conftest import ROOT, TINY, arrcoc, state

pytestmark = pytest.mark.slow  # trains three phases in subprocesses


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


def test_phase1_aligns_with_all_tokens_or_random_subsets_and_leaves_allocation_alone(chain, tmp_path):
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
    # every patch, or (subset_share: 0.5) one random k in [64, 400] for the batch plus the summary token
    assert tokens and all(t == 576.0 or 65.0 <= t <= 401.0 for t in tokens), tokens
    assert "trainable parameters at fit start" in chain["log1"]  # every phase config prints the table


def test_resume_from_another_phase_is_a_clear_error(chain):
    other = chain[2] / "checkpoints/last.ckpt"
    out = arrcoc("fit", "--config", "configs/phase3.yaml", *TINY, "--data.cache_dir", str(chain["cache"]),
                 "--model.init_args.init_from", str(other), "--trainer.default_root_dir", str(chain[3] / "wrong"),
                 "--ckpt_path", str(other))
    assert out.returncode != 0
    assert f"--ckpt_path '{other}' is a checkpoint of arrcoc.phases.relevance.RelevancePhase" in out.stderr
    assert "the config runs arrcoc.phases.finetune.FinetunePhase" in out.stderr and "init_from" in out.stderr


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
