"""Bad configuration fails at construction with the field, the value and what is valid."""

import pytest
import torch
from torch import nn

from arrcoc.model import ARRCOCModel
from arrcoc.scorers import RelevanceScorer, ScorerInputs, build_scorer
from conftest import make_batch


@pytest.mark.parametrize("kwargs,pattern", [
    ({"min_tokens": 300, "max_tokens": 200}, r"min_tokens=300 > max_tokens=200"),
    ({"max_tokens": 600}, r"max_tokens=600 exceeds the 576 patches .* valid: 64..576"),
    ({"min_tokens": 0}, r"min_tokens=0 must be >= 1"),
    ({"target_tokens": 500}, r"target_tokens=500.0 is outside \[min_tokens, max_tokens\] = \[64, 400\]"),
    ({"scorers": ["propositional", "telepathic"]}, r"unknown scorer name 'telepathic'; valid names: "
                                                   r"\['participatory', 'perspectival', 'propositional'\]"),
    ({"scorers": []}, r"scorers is empty"),
    ({"summary_grid": -1}, r"summary_grid=-1 must be >= 0"),
    ({"summary_grid": 30}, r"summary_grid=30 must be in 1..24"),
    ({"projector": "mlp9x"}, r"projector='mlp9x' is unknown; valid: \['linear', 'mlp2x_gelu'\]"),
    ({"gate_temperature": 0.0}, r"gate_temperature=0.0 must be > 0"),
    ({"selection_noise": -1.0}, r"selection_noise=-1.0 must be >= 0"),
])
def test_invalid_construction(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        ARRCOCModel(**kwargs)


def test_projector_width_mismatch():
    with pytest.raises(ValueError, match=r"outputs width 99; the LLM needs 128 \(encoder width 64 -> LLM width 128\)"):
        ARRCOCModel(projector=lambda i, o: nn.Linear(i, 99))
    with pytest.raises(ValueError, match=r"does not accept the encoder width 64"):
        ARRCOCModel(projector=lambda i, o: nn.Linear(32, o))


def test_scorer_contract_violations():
    class WrongShape(RelevanceScorer):
        def score(self, inputs: ScorerInputs) -> torch.Tensor:
            return inputs.patches.sum(-1, keepdim=True)  # [B, N, 1] instead of [B, N]

    model = ARRCOCModel(scorers=[WrongShape])
    with pytest.raises(ValueError, match=r"WrongShape.score returned shape \(2, 576, 1\); expected \[B, N\]"):
        model(**make_batch(model, n=2))
    with pytest.raises(ValueError, match="built a Linear, not a RelevanceScorer"):
        build_scorer(lambda d, e: nn.Linear(d, 1), 64, 128)


def test_prompt_without_image_placeholder(tiny_model):
    batch = make_batch(tiny_model, n=2)
    batch["input_ids"][1][batch["input_ids"][1] == tiny_model.llm.image_token_id] = 5
    with pytest.raises(ValueError, match=r"input_ids\[1\] holds 0 image placeholder tokens"):
        tiny_model(**batch)


def test_missing_vision_input(tiny_model):
    batch = make_batch(tiny_model, n=1)
    del batch["pixel_values"]
    with pytest.raises(ValueError, match="needs pixel_values"):
        tiny_model(**batch)


def test_init_from_with_pickled_objects_is_a_clear_error(tmp_path, shared_tiny_model):
    from arrcoc.data.sample_task import SampleTaskConfig
    from arrcoc.phases.weights import load_weights

    path = tmp_path / "objects.ckpt"
    torch.save({"state_dict": shared_tiny_model.state_dict(), "hparams": SampleTaskConfig()}, path)
    with pytest.raises(ValueError, match=r"init_from=.*objects.ckpt.* holds Python objects besides tensors"):
        load_weights(shared_tiny_model, str(path))


def test_datamodule_checkpoints_hold_plain_hyperparameters(tmp_path, shared_tiny_model):
    """A checkpoint of a run whose DataModule was built in Python (a SampleTaskConfig object) must still
    load with weights_only=True, which is what init_from does."""
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig
    from arrcoc.phases.weights import load_weights

    dm = VQADataModule(sample_task=SampleTaskConfig(train=8, val=4), cache_dir=str(tmp_path / "c"))
    assert dm.hparams["sample_task"] == {"train": 8, "val": 4, "seed": 0, "image_size": 128,
                                        "samples_per_shard": 1000, "list_objects": 0.25}
    assert dm.sample_task == SampleTaskConfig(train=8, val=4)
    again = VQADataModule(sample_task=dm.hparams["sample_task"], cache_dir=str(tmp_path / "c"))
    assert again.sample_task == dm.sample_task  # what load_from_checkpoint passes back
    path = tmp_path / "run.ckpt"
    torch.save({"state_dict": shared_tiny_model.state_dict(), "datamodule_hyper_parameters": dict(dm.hparams)}, path)
    report = load_weights(shared_tiny_model, str(path))
    assert set(report.values()) == {"loaded"}
