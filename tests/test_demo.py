"""``arrcoc demo``: the comparison table on the trained chain's model, and the phases' arguments it trains with."""

import json
import re
from argparse import Namespace

import pytest

from conftest import ROOT, arrcoc


@pytest.mark.slow  # the chain fixture trains three phases in subprocesses
def test_demo_compares_the_variants_on_a_trained_model(chain, tmp_path):
    out = arrcoc("demo", "--checkpoint", str(chain[3] / "checkpoints/last.ckpt"), "--train", "96", "--val", "24",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(chain["cache"]))
    assert out.returncode == 0, out.stderr[-3000:]
    assert "=== phase" not in out.stdout  # nothing trained again
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    acc = results["accuracy"]
    targets = ("head", "64")
    assert set(acc) == {"full@576", "shuffled@576", "majority"} | {
        f"{m}@{t}" for m in ("adaptive", "fixed", "random", "grid", "question_blind", "swapped_selection", "teacher")
        for t in targets}
    assert all(0.0 <= v <= 1.0 for v in acc.values()) and results["samples"] == 24
    vt = results["visual_tokens"]
    assert 64 <= vt["min"] <= vt["mean"] <= vt["max"] <= 401
    assert results["visual_tokens_per_method"]["fixed@head"] == results["fixed_k"] + 1  # + the summary token
    assert 64 <= results["visual_tokens_per_method"]["adaptive@64"] <= 66
    b = results["budget"]
    assert 64 <= b["p10"] <= b["p50"] <= b["p90"] <= 400
    assert set(results["question_use"]) == {"64", "128", "adaptive"}  # the sample task says where its objects are
    assert set(results["balancer"]) == {"propositional", "perspectival", "participatory"}
    # per question type: the sample task's validation cycles through its four kinds
    assert set(results["accuracy_by_type"]) == {"attribute", "existence", "count", "spatial"}
    assert results["step_time_ms"]["ratio"] > 0
    text = out.stdout
    for row in ("all tokens (baseline)", "all tokens, another image", "adaptive (learned budgets)",
                "fixed k at the adaptive mean", "random, same budgets", "grid, same budgets",
                "own scorers, question withheld", "another question's selection", "fixed k = 64",
                "majority answer", "budgets of the head (kept patches): p10", "asked-about objects' patches kept"):
        assert row in text
    assert re.search(r"training step, full vs adaptive: \d+ ms vs \d+ ms = [\d.]+x", text)
    # arrcoc's own reports reach the console, as under `arrcoc fit`: what the evaluated model loaded
    assert "[arrcoc] init_from" in out.stderr and "projector loaded" in out.stderr
    assert "INFO:arrcoc" not in out.stderr  # once, not again through the root logger


def test_the_demo_trains_each_phase_from_its_config_and_the_previous_phase(tmp_path):
    """What the demo hands ``arrcoc fit`` for each phase parses, with its steps, run directory and hand-off."""
    from arrcoc.demo import _phase_args
    from arrcoc.train.cli import build_cli

    parser = build_cli(["--config", str(ROOT / "configs/phase1.yaml"), "--data.cache_dir", str(tmp_path)],
                       run=False).parser
    args = Namespace(train=96, val=24, cache_dir=str(tmp_path / "cache"))
    prev = None
    for phase, phase_class in ((1, "AlignPhase"), (2, "RelevancePhase"), (3, "FinetunePhase")):
        cfg = parser.parse_args(_phase_args(phase, 7, tmp_path / "run", args, prev))
        assert cfg.model.class_path.endswith(phase_class) and cfg.trainer.max_steps == 7
        assert cfg.trainer.default_root_dir == str(tmp_path / "run" / f"phase{phase}")
        assert cfg.model.init_args.init_from == (None if prev is None else str(prev))
        assert (cfg.data.sample_task.train, cfg.data.sample_task.val, cfg.data.cache_dir) == (96, 24, args.cache_dir)
        prev = tmp_path / "run" / f"phase{phase}" / "checkpoints" / "last.ckpt"
    with pytest.raises(SystemExit):  # a checkpoint that is not there is refused before anything runs
        from arrcoc.demo import main

        main(["--checkpoint", str(tmp_path / "missing.ckpt")])
