"""Phase modules: the frozen encoder runs once per batch, in phase 2's distillation and in evaluation,
and reusing its features changes no result."""

import json

import lightning as L
import torch
import torch.nn.functional as F

from arrcoc.data.collate import model_inputs
from arrcoc.model import ARRCOCModel
from arrcoc.phases import FinetunePhase, RelevancePhase
from conftest import make_batch


def count_encoder_calls(model: ARRCOCModel) -> list[int]:
    calls = [0]
    model.encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_distillation_teacher_reuses_the_students_encoder_features():
    torch.manual_seed(0)
    phase = RelevancePhase(ARRCOCModel(), distill_weight=1.0, distill_temperature=2.0, relevance_weight=0.0,
                           balance_weight=0.0, need_weight=0.0)
    model = phase.model.eval()
    inputs = model_inputs(make_batch(model, n=4))
    calls = count_encoder_calls(model)
    out = model(**inputs, return_logits=False)
    losses = phase.compute_losses(inputs, out)
    assert calls[0] == 1  # student and teacher share one encoder pass

    with torch.no_grad():  # the teacher as it was computed before: from the pixels again
        full = model(**inputs, full_tokens=True, return_logits=False)
    t = 2.0
    expected = F.kl_div((out.answer_logits / t).log_softmax(-1), (full.answer_logits / t).log_softmax(-1),
                        log_target=True, reduction="batchmean") * t * t
    assert calls[0] == 2
    assert float(losses["distill"].detach()) > 0
    torch.testing.assert_close(losses["distill"], expected)
    torch.testing.assert_close(losses["loss"], out.loss + expected)


def test_generate_from_forward_features_answers_as_from_pixels():
    torch.manual_seed(0)
    model = ARRCOCModel().eval()
    inputs = model_inputs(make_batch(model, n=5))
    out = model(**inputs, return_logits=False)
    assert out.patch_features.shape == (5, model.encoder.num_patches, model.encoder.width)
    reused = model.generate(**inputs, patch_features=out.patch_features, cls_features=out.cls_features)
    again = model.generate(**inputs)
    assert torch.equal(reused.tokens, again.tokens)
    assert torch.equal(reused.allocation.keep_mask, again.allocation.keep_mask)


def test_validation_encodes_each_batch_once(tmp_path):
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    dm = VQADataModule(sample_task=SampleTaskConfig(train=16, val=12), cache_dir=str(tmp_path / "c"),
                       batch_size=4, eval_batch_size=4, samples_per_epoch=16, num_workers=0)
    torch.manual_seed(0)
    phase = RelevancePhase(ARRCOCModel(), eval_full_tokens=True)  # adaptive answers and full-token ones
    calls = count_encoder_calls(phase.model)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path))
    metrics = trainer.validate(phase, datamodule=dm, verbose=False)[0]
    assert {"val/acc", "val/acc_full_tokens", "val/loss"} <= set(metrics)
    # 3 batches: loss, adaptive answers and full-token answers all from one encoder pass per batch.
    assert calls[0] == 3
    hist = [json.loads(line) for line in (tmp_path / "val_budget_histogram.jsonl").open()]
    assert len(hist) == 1 and sum(hist[0]["counts"]) == 12  # written where the run's logs go, every question


def test_resuming_another_phases_checkpoint_is_refused_by_name():
    """The Python path (Trainer.fit(ckpt_path=...)); the CLI refuses it earlier, see test_cli_training."""
    import pytest

    phase2, phase3 = RelevancePhase(ARRCOCModel()), FinetunePhase(ARRCOCModel())
    checkpoint = {"state_dict": {}}
    phase2.on_save_checkpoint(checkpoint)
    phase2.on_load_checkpoint(dict(checkpoint))  # the same phase resumes
    with pytest.raises(ValueError, match=r"a checkpoint of RelevancePhase training \['scorers'.*this run is "
                                         r"FinetunePhase.*init_from"):
        phase3.on_load_checkpoint(checkpoint)


def test_predict_without_a_writer_says_nothing_is_written(tmp_path, caplog):
    from arrcoc.data.datamodule import VQADataModule
    from arrcoc.data.sample_task import SampleTaskConfig

    dm = VQADataModule(sample_task=SampleTaskConfig(train=16, val=4), cache_dir=str(tmp_path / "c"),
                       batch_size=4, eval_batch_size=4, samples_per_epoch=16, num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_checkpointing=False,
                        default_root_dir=str(tmp_path))
    with caplog.at_level("WARNING", logger="arrcoc"):
        rows = trainer.predict(RelevancePhase(ARRCOCModel()), datamodule=dm)
    assert sum(len(r) for r in rows) == 4  # returned to the caller ...
    assert "no prediction writer" in caplog.text  # ... and the user is told none went to disk
