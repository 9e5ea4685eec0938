"""``init_from`` (arrcoc.phases.weights): what loads, the report per component, and the files it refuses."""

import pytest
import torch

from arrcoc.model import ARRCOCModel
from arrcoc.phases import FinetunePhase, RelevancePhase
from arrcoc.phases.weights import coverage, load_weights


def test_init_from_takes_weights_but_not_the_budget(tmp_path):
    """Phase 2 may stop mid-annealing (bounds [64, 576], target 575.9); phase 3 starts from its weights at the
    budget its own config sets."""
    torch.manual_seed(0)
    phase2 = RelevancePhase(ARRCOCModel())
    phase2.model.allocator.set_budget(min_tokens=64, max_tokens=576, target_tokens=575.9)
    state = phase2.state_dict()
    assert not {"model.allocator.bounds", "model.allocator.target"} & set(state)  # configuration, not weights
    torch.save({"state_dict": state}, tmp_path / "p2.ckpt")
    phase3 = FinetunePhase(ARRCOCModel(max_tokens=400, target_tokens=196), init_from=str(tmp_path / "p2.ckpt"))
    alloc = phase3.model.allocator
    assert (alloc.min_tokens, alloc.max_tokens, alloc.target_tokens) == (64, 400, 196.0)
    assert torch.equal(alloc.head[1].weight, phase2.model.allocator.head[1].weight)  # the weights did load
    assert phase3.load_report["allocator"] == "loaded"


def test_init_from_reports_and_refuses_what_does_not_fit(tmp_path):
    torch.manual_seed(0)
    source = RelevancePhase(ARRCOCModel()).state_dict()
    part = {k: v for k, v in source.items() if k.startswith(("model.projector.", "model.scorers.0."))}
    torch.save({"state_dict": part}, tmp_path / "part.ckpt")
    report = FinetunePhase(ARRCOCModel(), init_from=str(tmp_path / "part.ckpt")).load_report
    assert report["projector"] == "loaded" and report["balancer"] == "init" and report["llm"] == "init"
    assert report["scorers"].startswith("partial (")

    shape = dict(part, **{"model.projector.0.weight": torch.zeros(3, 3)})
    torch.save(shape, tmp_path / "shape.pt")
    with pytest.raises(ValueError, match=r"does not match this architecture: projector.0.weight: \(3, 3\) in file"):
        FinetunePhase(ARRCOCModel(), init_from=str(tmp_path / "shape.pt"))
    extra = dict(part, **{"model.projector.9.weight": torch.zeros(3)})
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"has weights this model lacks: \['projector.9.weight'\]"):
        FinetunePhase(ARRCOCModel(), init_from=str(tmp_path / "extra.pt"))


def test_a_budget_in_the_file_is_refused_not_dropped(tmp_path, tiny_model):
    """The budget is configuration: a file that holds it is not one this model wrote."""
    state = {**tiny_model.state_dict(), "allocator.bounds": torch.tensor([64, 576]),
             "allocator.target": torch.tensor(575.9)}
    torch.save({"state_dict": state}, tmp_path / "budget.ckpt")
    with pytest.raises(ValueError, match=r"has weights this model lacks: \['allocator.bounds', 'allocator.target'\]"):
        load_weights(tiny_model, str(tmp_path / "budget.ckpt"))


def test_plain_state_dict_and_lightning_checkpoint_load_alike(tmp_path):
    torch.manual_seed(0)
    source = ARRCOCModel()
    torch.save(source.state_dict(), tmp_path / "plain.pt")  # e.g. the consolidated DeepSpeed file
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "global_step": 3},
               tmp_path / "run.ckpt")
    for name in ("plain.pt", "run.ckpt"):
        torch.manual_seed(1)
        target = ARRCOCModel()
        assert not torch.equal(target.projector[0].weight, source.projector[0].weight)
        report = load_weights(target, str(tmp_path / name))
        assert report == dict.fromkeys(source.components(), "loaded")
        assert all(torch.equal(v, source.state_dict()[k]) for k, v in target.state_dict().items())


def test_unreadable_files_are_clear_errors(tmp_path, tiny_model):
    with pytest.raises(FileNotFoundError, match=r"init_from=.*missing.ckpt.* does not exist"):
        load_weights(tiny_model, str(tmp_path / "missing.ckpt"))
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"init_from=.*list.pt.* holds no state dict"):
        load_weights(tiny_model, str(tmp_path / "list.pt"))
    extra = {f"extra.{i}": torch.zeros(1) for i in range(7)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"lacks: \['extra.0', .*'extra.4'\] \(\+2 more\)"):
        load_weights(tiny_model, str(tmp_path / "extra.pt"))


def test_coverage_counts_each_components_entries(tiny_model):
    keys = {k for k in tiny_model.state_dict() if k.startswith("projector.")}
    first = next(k for k in tiny_model.state_dict() if k.startswith("balancer."))
    n_balancer = len(tiny_model.balancer.state_dict())
    report = coverage(tiny_model, keys | {first})
    assert report["projector"] == "loaded" and report["encoder"] == "init"
    assert report["balancer"] == (f"partial (1/{n_balancer})" if n_balancer > 1 else "loaded")
