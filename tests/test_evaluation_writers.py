"""What evaluation and training write besides metrics: the budget histogram (arrcoc.phases.evaluation) and
the throughput meter (arrcoc.phases.throughput)."""

import json

import pytest
import torch

from arrcoc.metrics import BudgetHistogram
from arrcoc.phases import throughput
from arrcoc.phases.evaluation import write_budget_histogram
from arrcoc.phases.throughput import Throughput


def test_histogram_appends_one_json_line_per_evaluation_and_logs_it(tmp_path, caplog):
    hist = BudgetHistogram(max_tokens=576, bins=4)  # bins of 144 tokens
    hist.update(torch.tensor([10, 20, 400, 576]), torch.tensor([True, True, True, False]))
    log_dir = tmp_path / "logs" / "version_0"  # created if missing
    with caplog.at_level("INFO", logger="arrcoc"):
        out = write_budget_histogram(log_dir, "val", 12, hist.edges(), hist.compute())
    assert out == log_dir / "val_budget_histogram.jsonl"
    assert "val budget histogram: 0-144: 2, 288-432: 1" in caplog.text  # empty bins left out
    write_budget_histogram(log_dir, "val", 20, hist.edges(), torch.tensor([0, 0, 0, 5]))
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines == [{"step": 12, "edges": [0, 144, 288, 432, 576], "counts": [2, 0, 1, 0]},
                     {"step": 20, "edges": [0, 144, 288, 432, 576], "counts": [0, 0, 0, 5]}]


def test_histogram_files_per_prefix_and_nothing_for_an_empty_one(tmp_path, caplog):
    edges = torch.linspace(0, 576, 3)
    with caplog.at_level("INFO", logger="arrcoc"):
        assert write_budget_histogram(tmp_path, "val", 1, edges, torch.zeros(2, dtype=torch.long)) is None
    assert not list(tmp_path.iterdir()) and "histogram" not in caplog.text
    write_budget_histogram(tmp_path, "test", 3, edges, torch.tensor([1, 0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_budget_histogram.jsonl"]


def test_throughput_counts_all_ranks_from_step_to_step(monkeypatch):
    clock = iter([10.0, 10.5, 11.5, 20.0, 20.25])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    meter = Throughput()
    tokens = torch.tensor([100.0, 50.0, 50.0, 0.0])  # (4,) visual tokens per sample
    assert meter.step(4, tokens, world_size=2) == {}  # no previous step to measure from
    assert meter.step(4, tokens, world_size=2) == {"perf/samples_per_s": 16.0, "perf/visual_tokens_per_s": 800.0}
    assert meter.step(4, tokens, world_size=1) == pytest.approx({"perf/samples_per_s": 4.0,
                                                                 "perf/visual_tokens_per_s": 200.0})
    meter.reset()  # validation or a checkpoint in between: not training time
    assert meter.step(4, tokens, world_size=2) == {}
    assert meter.step(2, tokens[:2], world_size=1) == {"perf/samples_per_s": 8.0, "perf/visual_tokens_per_s": 600.0}
