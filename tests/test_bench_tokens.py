"""``arrcoc bench tokens``: budgets moved to a mean, the oracle's search, every method at equal tokens on a
constructed batch, the swapped-question and question-blind paths, and the files it writes."""

import json
import math

import pytest
import torch

from arrcoc.bench.budgets import (
    head_budgets,
    shift_for_mean,
    smallest_sufficient_k,
    spearman,
    top_k_mask,
)
from arrcoc.bench.report import summarize, write
from arrcoc.bench.tokens import SAME_COUNT, BenchConfig, TokenBench
from conftest import arrcoc, make_batch


def test_the_head_moves_to_a_target_mean_keeping_each_samples_rank():
    logits = torch.linspace(-3, 3, 101)
    for mean in (64, 128, 198, 300):
        budgets = head_budgets(logits, 64, 400, shift_for_mean(logits, 64, 400, mean))
        assert mean <= float(budgets.float().mean()) < mean + 4
        assert (budgets.diff() >= 0).all()  # the order of the samples is the head's
    assert head_budgets(logits, 64, 400, shift_for_mean(logits, 64, 400, 10)).tolist() == [64] * 101
    assert head_budgets(logits, 64, 400, shift_for_mean(logits, 64, 400, 999)).tolist() == [400] * 101


def test_top_k_mask_breaks_ties_by_raster_order():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 0.5], [3.0, 2.0, 1.0, 0.0, -1.0]])
    assert top_k_mask(scores, torch.tensor([2, 3])).tolist() == [[False, True, True, False, False],
                                                                  [True, True, True, False, False]]


def test_sample_loss_equals_each_samples_own_loss(shared_tiny_model):
    batch = make_batch(shared_tiny_model, n=3)
    with torch.no_grad():
        out = shared_tiny_model(**batch, budget=100, return_logits=False)
        losses = out.sample_loss()
        for i in range(3):
            alone = {k: v[i:i + 1] for k, v in batch.items()}
            assert math.isclose(float(losses[i]), float(shared_tiny_model(**alone, budget=100).lm_loss), rel_tol=1e-4)


def test_the_oracle_takes_the_smallest_k_with_the_all_token_answer_and_loss():
    ks = [16, 64, 128, 576]
    assert smallest_sufficient_k(["no", "yes", "yes", "yes"], [2.0, 0.35, 0.2, 0.3], ks, 0.1) == 64
    assert smallest_sufficient_k(["no", "yes", "yes", "yes"], [2.0, 0.5, 0.2, 0.3], ks, 0.1) == 128  # loss too high
    assert smallest_sufficient_k(["a", "b", "c", "d"], [1.0, 1.0, 1.0, 1.0], ks, 0.1) == 576
    with pytest.raises(ValueError, match="ascending"):
        smallest_sufficient_k(["a", "a"], [0, 0], [64, 16], 0.1)


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([5, 5, 5, 5], [1, 2, 3, 4]) is None  # a constant budget correlates with nothing


OBJECTS = [{"box": [0.0, 0.0, 0.25, 0.25], "named": True}, {"box": [0.5, 0.5, 1.0, 1.0], "named": False}]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    from arrcoc.model import ARRCOCModel

    torch.manual_seed(3)
    model = ARRCOCModel().eval()
    batches = []
    for offset in (0, 3):  # two batches: the target means are fitted over both
        batch = make_batch(model, n=3, offset=offset)
        batch |= {"valid": torch.ones(3, dtype=torch.bool), "answers": [["yes"] * 10] * 3,
                  "question_id": list(range(offset, offset + 3)), "question_type": ["count", "spatial", "x"],
                  "objects": [OBJECTS] * 3}
        batches.append(batch)
    config = BenchConfig(means=(64, 128), oracle=True, oracle_ks=(16, 576), max_new_tokens=2)
    bench = TokenBench(model, config)
    bench.calibrate(batches)
    records = bench.run(batches)
    return model, batches, bench, records


def test_every_method_answers_at_the_adaptive_methods_token_counts(bench_run):
    model, _, bench, records = bench_run
    assert len(records) == 6
    names = {key.rpartition("@")[0] for key in records[0]["methods"]}
    assert names >= {"full", "shuffled", "adaptive", "fixed", *SAME_COUNT} | {f"scorer:{n}" for n in model.scorer_names}
    for rec in records:
        m = rec["methods"]
        assert m["full@576"][0] == m["shuffled@576"][0] == 576
        for target in ("head", "64", "128"):
            tokens = m[f"adaptive@{target}"][0]
            for name in (*SAME_COUNT, *(f"scorer:{n}" for n in model.scorer_names)):
                if name == "pool":  # a near-square grid of at most that many tokens
                    assert tokens - 16 <= m[f"pool@{target}"][0] <= tokens
                else:
                    assert m[f"{name}@{target}"][0] == tokens, (name, target)
        assert m["fixed@64"][0] == 65 and m["fixed@128"][0] == 129  # k kept + the summary token
        assert m["fixed@head"][0] == round(bench.head_mean) + 1  # one k for all: the head's mean over the split
        assert 0.0 <= m["adaptive@head"][1] <= 1.0


def test_a_chosen_set_of_methods_runs_only_those(bench_run):
    model, batches, _, _ = bench_run
    bench = TokenBench(model, BenchConfig(means=(64,), methods=("full", "fixed", "swapped_selection"),
                                          max_new_tokens=2))
    bench.calibrate(batches)
    names = {key.rpartition("@")[0] for key in bench.run(batches[:1])[0]["methods"]}
    assert names == {"full", "adaptive", "fixed", "swapped_selection"}  # adaptive: what the others are matched to


def test_the_targets_move_the_mean_budget(bench_run):
    _, _, bench, records = bench_run
    for target in ("64", "128"):
        mean = sum(r["methods"][f"adaptive@{target}"][0] - 1 for r in records) / len(records)
        assert float(target) <= mean < float(target) + 4
    assert bench.shifts["head"] == 0.0


def test_swapped_and_question_blind_selections_on_a_constructed_batch(bench_run):
    model, batches, bench, _ = bench_run
    batch = batches[0]
    inputs, pixels = bench._seen(batch)
    own, blind, swapped = (bench._relevance(inputs, pixels, q) for q in ("own", "blind", "swapped"))
    rolled = model.relevance(inputs["patch_features"], inputs["cls_features"], pixels,
                             batch["question_ids"].roll(1, 0), batch["question_mask"].roll(1, 0))
    assert torch.equal(swapped.relevance, rolled.relevance)  # the next sample's question on this image
    assert not torch.equal(swapped.context, own.context)  # the questions differ, the images do not
    assert torch.equal(swapped.context[:, -model.encoder.width:], own.context[:, -model.encoder.width:])
    assert not torch.equal(blind.context, own.context)


def test_question_use_counts_the_named_and_other_objects_patches(bench_run):
    _, _, _, records = bench_run
    rec = records[0]["recall"]
    assert rec["objects"] == 2
    named, kept_named, other, kept_other, kept_swapped = rec["64"]
    assert named == 36 and other == 144  # a 6x6 and a 12x12 block of the 24x24 grid
    assert 0 <= kept_named <= named and 0 <= kept_other <= other and 0 <= kept_swapped <= named
    assert set(rec["methods"]) >= {"adaptive", "random", "grid", "diversity", "question_blind", "teacher"}
    for named_kept, other_kept in rec["methods"].values():  # each ranking at the head's budget
        assert 0 <= named_kept <= named and 0 <= other_kept <= other
    assert rec["methods"]["adaptive"] == [rec["adaptive"][1], rec["adaptive"][3]]


def test_the_report_is_well_formed(bench_run, tmp_path):
    model, _, bench, records = bench_run
    summary = summarize(records, list(model.scorer_names), "arrcoc bench tokens --test", 0.1, bench.config.notes)
    write(summary, tmp_path)
    data = json.loads((tmp_path / "tokens.json").read_text())  # strict JSON: no NaN
    assert set(data) >= {"methods", "budget", "recall", "recall_other", "balancer", "question_use", "samples",
                         "command", "oracle"}
    assert set(data["recall"]) == set(data["recall_other"]) >= {"adaptive", "teacher"}
    for rows in data["methods"].values():
        for row in rows:
            assert set(row) >= {"mean_tokens", "accuracy", "stderr", "by_type"}
    assert set(data["budget"]) >= {"p10", "p50", "p90", "spearman_oracle"} and data["samples"] == 6
    assert set(data["question_use"]) == {"64", "128", "adaptive"}
    assert set(data["question_use"]["64"]) == {"recall_named", "recall_other", "recall_swapped"}
    assert set(data["balancer"]) == {"all", "count", "spatial", "x"}
    assert data["oracle"]["ks"] == [16, 576] and len(data["oracle"]["curve"]) == 2
    md = (tmp_path / "tokens.md").read_text()
    assert "| adaptive | head |" in md and "Oracle" in md and "Question use" in md
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # the chain fixture trains three phases in subprocesses
def test_bench_tokens_on_the_trained_chain(chain, tmp_path):
    ckpt = str(chain[3] / "checkpoints/last.ckpt")
    out = arrcoc("bench", "tokens", "--config", "configs/phase3.yaml", "--ckpt", ckpt,
                 "--out", str(tmp_path), "--oracle", "--limit", "12", "--data.cache_dir", str(chain["cache"]),
                 "--data.sample_task.train", "96", "--data.sample_task.val", "24", "--data.eval_batch_size", "12",
                 "--data.num_workers", "0")
    assert out.returncode == 0, out.stderr[-3000:]
    data = json.loads((tmp_path / "tokens.json").read_text())
    assert data["samples"] == 12 and "adaptive" in data["methods"] and data["oracle"] is not None
    assert data["command"].startswith("arrcoc bench tokens --config configs/phase3.yaml")
    assert "| adaptive |" in out.stdout


def test_bench_command_errors_name_the_problem(tmp_path, capsys):
    from arrcoc.bench.cli import main

    assert main(["speedy"]) == 2 and "unknown benchmark 'speedy'; valid: tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokens", "--config", "configs/phase3.yaml", "--ckpt", str(tmp_path / "none.ckpt"), "--out", "x"])
    err = capsys.readouterr().err
    assert "--ckpt" in err and "none.ckpt does not exist" in err
