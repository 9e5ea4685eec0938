"""``arrcoc bench speed``: the adaptive spread, the stage split of a training step, the files one small run writes,
and the refusals. A benchmark, not a timed test: only that times are there, positive and ordered where the token
counts differ by far more than noise."""

import json

import pytest
import torch

from arrcoc.bench.cli import main
from arrcoc.bench.speed import STAGES, SpeedBench, SpeedConfig, adaptive_spread, batch_budgets, spread_stats

VARIANTS = ("full", "fixed@198", "fixed@64", "adaptive@198")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, more threads than free cores slow every op many times."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_adaptive_spread_is_wide_and_centred_on_198():
    spread = spread_stats(adaptive_spread(198, 64, 400))
    assert abs(spread["mean"] - 198) < 1
    assert spread["p90"] - spread["p10"] >= 100
    assert 64 <= spread["min"] and spread["max"] <= 400
    for b in (1, 2, 4, 8, 16):
        ks = batch_budgets(adaptive_spread(198, 64, 400), b, 198)
        assert len(ks) == b and all(64 <= k <= 400 for k in ks)
        assert abs(sum(ks) / b - 198) <= 1
    assert len(set(batch_budgets(adaptive_spread(198, 64, 400), 4, 198))) == 4  # budgets differ within a batch


def test_a_training_step_splits_into_stages_that_add_up(tiny_model):
    torch.manual_seed(0)
    bench = SpeedBench(tiny_model, SpeedConfig(batch_size=2, repeats=1, warmup=0), torch.device("cpu"))
    by_name = {v.name: v for v in bench.variants}
    assert set(by_name) == set(VARIANTS)
    assert bench.visual["full"] == (576.0, 576 + 63)  # all patches, no summary token; 63 text tokens
    assert bench.visual["fixed@64"][0] == 65  # 64 kept + 1 summary token
    cell = bench.cell(by_name["adaptive@198"], "pixels")
    stages = cell["train_stages"]
    assert set(stages) == set(STAGES) and all(v > 0 for v in stages.values())  # marks in the expected order
    assert sum(stages.values()) == pytest.approx(cell["train_ms"], rel=1e-6)  # a partition of the step
    full = bench.cell(by_name["full"], "features")
    assert full["train_stages"]["encoder"] == 0 and full["train_stages"]["allocation"] == 0
    assert full["decode_tokens"] >= 1 and full["ttft_ms"] > 0

    # With a checkpoint, adaptive is the budget head's own choice (here untrained, near its target of 198).
    head = SpeedBench(tiny_model, SpeedConfig(batch_size=2, repeats=1, warmup=0, head_budgets=True),
                      torch.device("cpu"))
    assert [v.name for v in head.variants][-1] == "adaptive@head" and head.adaptive is None
    assert 64 + 1 <= head.visual["adaptive@head"][0] <= 400 + 1
    assert head.cell(head.variants[-1], "features")["train_stages"]["allocation"] > 0


@pytest.fixture(scope="module")
def speed_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    torch.manual_seed(0)
    assert main(["speed", "--shapes", "tiny", "--device", "cpu", "--batch-size", "2", "--repeats", "2",
                 "--warmup", "1", "--out", str(out)]) == 0
    return json.loads((out / "speed.json").read_text()), (out / "speed.md").read_text(), out


def test_speed_writes_every_variant_with_positive_times(speed_run):
    summary, _, out = speed_run
    assert sorted(p.name for p in out.iterdir()) == ["speed.json", "speed.md"]  # no temporary files left
    assert summary["shapes"] == "tiny" and summary["batch_size"] == 2 and summary["repeats"] == 2
    assert summary["machine"]["device"] == "cpu" and set(summary["machine"]["versions"]) >= {
        "torch", "transformers", "open_clip"}
    assert summary["command"].startswith("arrcoc bench speed --shapes tiny")
    assert tuple(summary["variants"]) == VARIANTS
    for name, entry in summary["variants"].items():
        for source in ("pixels", "features"):
            cell = entry[source]
            for key in ("train_ms", "prefill_ms", "ttft_ms", "decode_tok_s"):
                assert cell[key] > 0, (name, source, key)
            assert set(cell["breakdown_ms"]) == set(STAGES)
            assert 0 <= cell["allocation_share"] < 1
            assert set(cell["speedup_vs_full"]) >= {"train", "prefill", "ttft"}
            assert set(cell["share_of_ideal"]) == {"train", "prefill"}
        assert entry["pixels"]["breakdown_ms"]["encoder"] > 0 and entry["features"]["breakdown_ms"]["encoder"] == 0
    assert summary["variants"]["full"]["pixels"]["allocation_share"] == 0


def test_fewer_tokens_have_an_ideal_speedup_and_adaptive_has_the_stated_spread(speed_run):
    summary, _, _ = speed_run
    variants = summary["variants"]
    assert variants["full"]["ideal_ratio"] == {"train": 1.0, "prefill": 1.0}
    for name in ("fixed@198", "fixed@64", "adaptive@198"):
        assert variants[name]["visual_tokens_mean"] < 576
        assert variants[name]["ideal_ratio"]["train"] > 1 and variants[name]["ideal_ratio"]["prefill"] > 1, name
    adaptive = summary["adaptive"]
    assert adaptive["source"] == "synthetic"
    assert adaptive["spread"]["p90"] - adaptive["spread"]["p10"] >= 100
    assert abs(adaptive["spread"]["mean"] - 198) < 3
    assert abs(sum(adaptive["batch_budgets"]) / 2 - 198) <= 1
    assert abs(variants["adaptive@198"]["visual_tokens_mean"] - 199) <= 1  # + the summary token
    assert variants["adaptive@198"]["padded_length"] > variants["fixed@198"]["padded_length"]  # padded to the max


def test_the_markdown_names_every_variant_the_command_and_the_machine(speed_run):
    summary, md, _ = speed_run
    for name in VARIANTS:
        assert f"| {name} |" in md
    assert summary["command"] in md and summary["machine"]["name"] in md
    assert "From pixels" in md and "From features" in md and "allocation share" in md


def test_real_scale_shapes_are_refused_on_a_cpu(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        main(["speed", "--shapes", "7b", "--device", "cpu", "--out", str(tmp_path)])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert "--shapes 7b" in message and "--device cuda" in message and "tiny" in message
    assert not (tmp_path / "speed.json").exists()


def test_flag_errors_name_the_flag(tmp_path, capsys):
    for argv, expect in ((["--ckpt", str(tmp_path / "x.ckpt")], "--ckpt needs --config"),
                         (["--batch-size", "0"], "--batch-size 0"),
                         (["--model.init_args.min_tokens", "8"], "need --config")):
        with pytest.raises(SystemExit):
            main(["speed", "--device", "cpu", "--out", str(tmp_path), *argv])
        assert expect in capsys.readouterr().err


def test_unknown_benchmarks_list_speed(capsys):
    assert main(["sped"]) == 2
    assert "valid: tokens, speed" in capsys.readouterr().err
